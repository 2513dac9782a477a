"""Reference fixtures for mood's trainer (tests/fixtures/train/).

What it checks against, and how each part is made:

  * draws: the random numbers of a training step as kohya's get_noise_noisy_latents_and_timesteps
    draws them on the CPU generator (randn_like, noise offset randn(B, C, 1, 1), randint), the
    epoch draws (randperm, rand), diffusers' DDPMScheduler.add_noise / get_velocity and kohya's
    apply_snr_weight (library/custom_train_functions.py, imported from the sd-scripts checkout).
  * init: torch.nn.init.kaiming_uniform_(a=sqrt(5)) on a generator, as kohya's LoRAModule.
  * adamw: torch.optim.AdamW over 6 steps with a diffusers cosine schedule (get_scheduler),
    clip: torch.nn.utils.clip_grad_norm_.
  * lr: diffusers get_scheduler multipliers for several (name, warmup, total).
  * fake: a whole training loop in torch on a two-layer "fake model" with two LoRA modules (the
    documented order of draws in include/mood/train.h), whose losses and final LoRA weights the
    C trainer must reproduce.
  * images: a small mood board (PNG with alpha, lossless WebP, BMP, larger PNG), each prepared as
    Pillow would: ImageOps.exif_transpose, alpha composited on white, resized with BILINEAR to the
    size kohya's BucketManager.select_bucket picks, centre-cropped as kohya's
    trim_and_resize_if_required; with and without buckets. JPEG/PNG/WebP files carrying EXIF
    orientations 1..8 and Pillow's upright decode of each. A folder with two unreadable files.
  * buckets.json: kohya's make_bucket_resolutions and select_bucket for a few configurations.

Run from the repository root (kohya sd-scripts checkout as for tools/tiny_models.py):
    tools/.venv/bin/python tools/make_fixtures_train.py [--sd-scripts /tmp/sd-scripts]
Made with torch 2.15.0, diffusers 0.42.1, Pillow 13.0.0, numpy 2.4.6, safetensors 0.8.0,
kohya sd-scripts 48d368fa (CPU, x86-64).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from PIL import Image, ImageOps
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_models as tm  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "train")

SD_SCHED = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear")


def kohya_ctf():
    k = tm.kohya()
    import library.custom_train_functions as ctf  # noqa: E402  (path set by tm.kohya)
    return k, ctf


# ----------------------------------------------------------------------------------------------
# draws, schedule, min-SNR
# ----------------------------------------------------------------------------------------------

def draws(out, ctf):
    sched = DDPMScheduler(**SD_SCHED)
    ctf.prepare_scheduler_for_custom_training(sched, "cpu")
    out["sched/ac"] = sched.alphas_cumprod.clone()
    out["sched/snr"] = sched.all_snr.clone()
    cases = [("a", 1234, 2, 5, 6, 0.05), ("b", 7, 1, 8, 8, 0.0), ("c", 2**40 + 5, 5, 3, 2, 0.1)]
    meta = []
    for name, seed, B, h, w, offset in cases:
        x0 = torch.randn((B, 4, h, w), generator=torch.Generator().manual_seed(99))
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(7, generator=g)
        u = torch.rand(7, generator=g)
        noise = torch.randn((B, 4, h, w), generator=g)
        if offset:
            noise = noise + offset * torch.randn((B, 4, 1, 1), generator=g)
        t = torch.randint(0, 1000, (B,), generator=g)
        tail = torch.randn(3, generator=g)  # the generator's state after the step
        out[f"draw/{name}/x0"] = x0
        out[f"draw/{name}/perm"] = perm
        out[f"draw/{name}/rand"] = u
        out[f"draw/{name}/noise"] = noise
        out[f"draw/{name}/t"] = t
        out[f"draw/{name}/tail"] = tail
        out[f"draw/{name}/noisy"] = sched.add_noise(x0, noise, t)
        out[f"draw/{name}/v"] = sched.get_velocity(x0, noise, t)
        ones = torch.ones(B)
        out[f"draw/{name}/w_eps"] = ctf.apply_snr_weight(ones, t, sched, 5.0, v_prediction=False)
        out[f"draw/{name}/w_v"] = ctf.apply_snr_weight(ones, t, sched, 5.0, v_prediction=True)
        meta.append(dict(name=name, seed=seed, B=B, h=h, w=w, offset=offset))
    return meta


def init(out):
    g = torch.Generator().manual_seed(99)
    d0 = torch.empty(4, 10)
    d1 = torch.empty(4, 3, 3, 3)
    torch.nn.init.kaiming_uniform_(d0, a=math.sqrt(5), generator=g)
    torch.nn.init.kaiming_uniform_(d1, a=math.sqrt(5), generator=g)
    out["init/down0"] = d0
    out["init/down1"] = d1


# ----------------------------------------------------------------------------------------------
# optimizer, clipping, schedules
# ----------------------------------------------------------------------------------------------

def adamw(out):
    g = torch.Generator().manual_seed(5)
    n, steps = 1000, 6
    p = torch.nn.Parameter(torch.randn(n, generator=g) * 0.1)
    out["adam/p0"] = p.detach().clone()
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=1e-2)
    sch = get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=steps)
    gs, ps, lrs = [], [], []
    for k in range(steps):
        scale = 10.0 ** (k % 3 - 4)  # gradients of very different sizes
        grad = torch.randn(n, generator=g) * scale
        grad[::97] = 0.0
        p.grad = grad.clone()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
        gs.append(grad)
        ps.append(p.detach().clone())
    out["adam/g"] = torch.stack(gs)
    out["adam/p"] = torch.stack(ps)
    out["adam/lr"] = torch.tensor(lrs, dtype=torch.float64)
    st = opt.state[p]
    out["adam/m"] = st["exp_avg"].clone()
    out["adam/v"] = st["exp_avg_sq"].clone()


def clip(out):
    g = torch.Generator().manual_seed(11)
    a = torch.nn.Parameter(torch.zeros(37))
    b = torch.nn.Parameter(torch.zeros(5, 9))
    a.grad = torch.randn(37, generator=g)
    b.grad = torch.randn(5, 9, generator=g) * 3
    out["clip/g0"] = a.grad.clone()
    out["clip/g1"] = b.grad.clone()
    norm = torch.nn.utils.clip_grad_norm_([a, b], 1.0)
    out["clip/out0"] = a.grad.clone()
    out["clip/out1"] = b.grad.clone()
    out["clip/norm"] = norm.reshape(1).clone()


def schedules(out):
    cases = [("constant", 0, 10), ("constant_with_warmup", 3, 10), ("cosine", 0, 12),
             ("cosine", 4, 12), ("linear", 2, 9), ("cosine", 1, 1)]
    meta = []
    for name, warm, total in cases:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        sch = get_scheduler(name, opt, num_warmup_steps=warm, num_training_steps=total)
        f = []
        for _ in range(total + 2):
            f.append(opt.param_groups[0]["lr"])
            opt.step()
            sch.step()
        key = f"lr/{name}_{warm}_{total}"
        out[key] = torch.tensor(f, dtype=torch.float64)
        meta.append(dict(key=key, name=name, warmup=warm, total=total))
    return meta


# ----------------------------------------------------------------------------------------------
# the fake model's training loop
# ----------------------------------------------------------------------------------------------

C = 4
SIZES = [(4, 4), (4, 4), (4, 6), (4, 4)]  # latent (h, w) of the four items
MODS = [(2, 1.0), (3, 3.0)]  # (rank, alpha) of module 0 (first layer) and 1 (second layer)


def fake_model_tensors(out):
    g = torch.Generator().manual_seed(2024)
    out["fake/W0"] = torch.randn(C, C, generator=g) * 0.5
    out["fake/W1"] = torch.randn(C, C, generator=g) * 0.5
    out["fake/beta"] = torch.randn(C, generator=g)
    for i, (h, w) in enumerate(SIZES):
        lat = torch.randn(C, h, w, generator=g)
        out[f"fake/lat{i}"] = lat
        out[f"fake/latf{i}"] = torch.flip(lat, dims=[2])


def regroup(order):
    """mood's rule: the epoch's order regrouped by latent size, sizes by first appearance."""
    seq, used = [], [False] * len(order)
    for i in range(len(order)):
        if used[i]:
            continue
        for j in range(i, len(order)):
            if not used[j] and SIZES[order[j]] == SIZES[order[i]]:
                used[j] = True
                seq.append(order[j])
    return seq


def fake_run(out, ctf, case):
    sched = DDPMScheduler(**SD_SCHED, prediction_type="v_prediction" if case["v"] else "epsilon")
    ctf.prepare_scheduler_for_custom_training(sched, "cpu")
    W0, W1, beta = out["fake/W0"], out["fake/W1"], out["fake/beta"]
    g = torch.Generator().manual_seed(case["seed"])
    downs, ups = [], []
    for rank, _ in MODS:  # module order: kaiming for each down, no draws for up
        d = torch.empty(rank, C)
        torch.nn.init.kaiming_uniform_(d, a=math.sqrt(5), generator=g)
        downs.append(torch.nn.Parameter(d))
        ups.append(torch.nn.Parameter(torch.zeros(C, rank)))
    params = [downs[0], ups[0], downs[1], ups[1]]
    opt = torch.optim.AdamW(params, lr=case["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=case["wd"])
    lr_s = get_scheduler(case["schedule"], opt, num_warmup_steps=case["warmup"],
                         num_training_steps=case["steps"])
    n = len(SIZES)
    seq, flips, cursor = None, None, n
    losses = []
    for _step in range(case["steps"]):
        opt.zero_grad()
        total = 0.0
        for _a in range(case["accum"]):
            if cursor >= n:
                order = torch.randperm(n, generator=g).tolist()
                if case["flip"]:
                    flips = (torch.rand(n, generator=g) < 0.5).tolist()
                else:
                    flips = [False] * n
                seq, cursor = regroup(order), 0
            first, k = cursor, 1
            while k < case["batch"] and first + k < n and SIZES[seq[first + k]] == SIZES[seq[first]]:
                k += 1
            items = seq[first:first + k]
            cursor += k
            x0 = torch.stack([out[f"fake/latf{i}" if flips[i] else f"fake/lat{i}"] for i in items])
            noise = torch.randn(x0.shape, generator=g)
            if case["offset"]:
                noise = noise + case["offset"] * torch.randn((k, C, 1, 1), generator=g)
            t = torch.randint(0, 1000, (k,), generator=g)
            noisy = sched.add_noise(x0, noise, t)
            target = sched.get_velocity(x0, noise, t) if case["v"] else noise
            A = W0 + (MODS[0][1] / MODS[0][0]) * (ups[0] @ downs[0])
            Bm = W1 + (MODS[1][1] / MODS[1][0]) * (ups[1] @ downs[1])
            h = torch.einsum("oc,bchw->bohw", A, noisy)
            pred = torch.einsum("oc,bchw->bohw", Bm, h) + (t.float() / 1000.0).view(k, 1, 1, 1) * beta.view(1, C, 1, 1)
            loss = torch.nn.functional.mse_loss(pred, target, reduction="none").mean([1, 2, 3])
            if case["gamma"]:
                loss = ctf.apply_snr_weight(loss, t, sched, case["gamma"], v_prediction=case["v"])
            loss = loss.mean()
            (loss / case["accum"]).backward()
            total += loss.item()
        if case["max_norm"]:
            torch.nn.utils.clip_grad_norm_(params, case["max_norm"])
        opt.step()
        lr_s.step()
        losses.append(total / case["accum"])
    key = "fake/" + case["name"]
    out[key + "/loss"] = torch.tensor(losses, dtype=torch.float64)
    for i in range(2):
        out[f"{key}/down{i}"] = downs[i].detach().clone()
        out[f"{key}/up{i}"] = ups[i].detach().clone()


FAKE_CASES = [
    dict(name="eps", seed=31, steps=7, batch=2, accum=2, lr=2e-2, wd=1e-2, schedule="cosine",
         warmup=2, max_norm=1.0, gamma=5.0, offset=0.05, v=False, flip=True),
    dict(name="v", seed=5, steps=6, batch=1, accum=1, lr=5e-2, wd=0.0, schedule="constant",
         warmup=0, max_norm=0.1, gamma=0.0, offset=0.0, v=True, flip=False),
]


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------

def pattern(w, h, alpha=False):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / 5.0)
    gch = 128 + 100 * np.cos(y / 4.0)
    b = ((x + y) * 7) % 256
    px = [r, gch, b]
    if alpha:
        px.append(np.where(x < 15, x * 17, 255))
    arr = np.stack(px, axis=-1).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGBA" if alpha else "RGB")


def blocks(w, h, cell):
    """Solid cells of distinct colours (decoders agree on flat areas)."""
    colors = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (200, 40, 210),
              (40, 210, 210), (250, 250, 250), (10, 10, 10), (128, 64, 0)]
    arr = np.zeros((h, w, 3), np.uint8)
    for cy in range(h // cell):
        for cx in range(w // cell):
            arr[cy * cell:(cy + 1) * cell, cx * cell:(cx + 1) * cell] = colors[(cy * (w // cell) + cx) % 9]
    return Image.fromarray(arr, "RGB")


def prepared(img, res, buckets, train_util):
    """Pillow's version of mood's preparation, with kohya's bucket choice."""
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGBA":
        img = img.convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    img = Image.alpha_composite(white, img).convert("RGB")
    if buckets:
        bm = train_util.BucketManager(False, (res, res), buckets[0], buckets[1], buckets[2])
        bm.make_buckets()
    else:
        bm = train_util.BucketManager(False, (res, res), None, None, None)
        bm.set_predefined_resos([(res, res)])
    reso, resized, _ = bm.select_bucket(img.width, img.height)
    if tuple(resized) != img.size:
        img = img.resize(resized, Image.BILINEAR)
    x0 = (img.width - reso[0]) // 2
    y0 = (img.height - reso[1]) // 2
    return img.crop((x0, y0, x0 + reso[0], y0 + reso[1])), reso, resized


def exif_bytes(orientation):
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


def images(k):
    board = os.path.join(OUT, "board")
    os.makedirs(board)
    pattern(61, 37, alpha=True).save(os.path.join(board, "a.png"))
    with open(os.path.join(board, "a.txt"), "w", encoding="utf-8") as f:
        f.write("\ufeff\n  red fox, sks style  \nsecond line\n")
    pattern(30, 20, alpha=True).save(os.path.join(board, "c.webp"), lossless=True)
    pattern(16, 16).save(os.path.join(board, "d.bmp"))
    pattern(150, 90).save(os.path.join(board, "e.png"))
    with open(os.path.join(board, "notes.md"), "w") as f:  # not an image: ignored
        f.write("ignored\n")
    refs = []
    for name in ("a.png", "c.webp", "d.bmp", "e.png"):
        for res, buckets in ((64, None), (128, (64, 256, 32))):
            img = Image.open(os.path.join(board, name))
            out_img, reso, resized = prepared(img, res, buckets, k.train_util)
            tag = f"{os.path.splitext(name)[0]}_{res}{'b' if buckets else ''}"
            out_img.save(os.path.join(OUT, "ref", tag + ".png"))
            refs.append(dict(file=name, res=res, buckets=buckets, ref=f"ref/{tag}.png",
                             bucket=list(reso), resized=list(resized)))
    # decoded pixels of the WebP (lossless: exact) and the EXIF orientations
    Image.open(os.path.join(board, "c.webp")).save(os.path.join(OUT, "ref", "c_rgba.png"))
    ex = os.path.join(OUT, "exif")
    os.makedirs(ex)
    base = blocks(24, 16, 8)
    for o in range(1, 9):
        base.save(os.path.join(ex, f"o{o}.jpg"), quality=95, subsampling=0, exif=exif_bytes(o))
        ImageOps.exif_transpose(Image.open(os.path.join(ex, f"o{o}.jpg"))).save(
            os.path.join(ex, f"o{o}_upright.png"))
    base.save(os.path.join(ex, "o6.png"), exif=exif_bytes(6))
    ImageOps.exif_transpose(Image.open(os.path.join(ex, "o6.png"))).save(os.path.join(ex, "o6png_upright.png"))
    base.save(os.path.join(ex, "o8.webp"), lossless=True, exif=exif_bytes(8))
    ImageOps.exif_transpose(Image.open(os.path.join(ex, "o8.webp"))).convert("RGB").save(
        os.path.join(ex, "o8webp_upright.png"))
    # a board with two unreadable files
    bad = os.path.join(OUT, "bad")
    os.makedirs(bad)
    pattern(20, 20).save(os.path.join(bad, "good1.png"))
    pattern(21, 20).save(os.path.join(bad, "good2.jpg"), quality=90)
    buf = io.BytesIO()
    pattern(20, 20).save(buf, "PNG")
    with open(os.path.join(bad, "broken.png"), "wb") as f:
        f.write(buf.getvalue()[:60])
    with open(os.path.join(bad, "text.jpg"), "w") as f:
        f.write("this is not a JPEG\n")
    return refs


def bucket_cases(k):
    cfgs = [(512, 256, 1024, 64), (128, 64, 256, 32), (768, 256, 1024, 64)]
    sizes = [(61, 37), (37, 61), (100, 100), (1000, 10), (512, 512), (640, 480), (333, 777),
             (448, 576), (30, 20)]
    res = []
    for r, lo, hi, st in cfgs:
        bm = k.train_util.BucketManager(False, (r, r), lo, hi, st)
        bm.make_buckets()
        sel = []
        for w, h in sizes:
            reso, resized, _ = bm.select_bucket(w, h)
            sel.append(dict(w=w, h=h, bucket=list(reso), resized=list(resized)))
        res.append(dict(resolution=r, min=lo, max=hi, step=st,
                        resos=[list(x) for x in k.model_util.make_bucket_resolutions((r, r), lo, hi, st)],
                        select=sel))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd-scripts", default=None)
    args = ap.parse_args()
    if args.sd_scripts:
        tm.set_sd_scripts(args.sd_scripts)
    k, ctf = kohya_ctf()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "ref"))
    out = {}
    meta = {"draws": draws(out, ctf)}
    init(out)
    adamw(out)
    clip(out)
    meta["lr"] = schedules(out)
    fake_model_tensors(out)
    for case in FAKE_CASES:
        fake_run(out, ctf, case)
    meta["fake"] = FAKE_CASES
    meta["fake_sizes"] = SIZES
    meta["fake_mods"] = MODS
    meta["images"] = images(k)
    meta["buckets"] = bucket_cases(k)
    meta["versions"] = dict(torch=torch.__version__, numpy=np.__version__,
                            pillow=Image.__version__, sd_scripts=tm.SD_SCRIPTS_COMMIT)
    out = {key: v.contiguous() for key, v in out.items()}
    save_file(out, os.path.join(OUT, "ref.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
