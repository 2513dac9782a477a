"""Reference fixtures for mood's trainer (tests/fixtures/train/).

What it checks against, and how each part is made:

  * draws: the random numbers of a training step as kohya's get_noise_noisy_latents_and_timesteps
    draws them on the CPU generator (randn_like, noise offset randn(B, C, 1, 1), randint (over
    [min, max) with --min_timestep / --max_timestep), then input perturbation randn_like when
    ip_noise_gamma is set), the
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
  * steps/: a whole run of mood_train_run on the tiny SD1 model of tests/fixtures/pipeline
    (tiny-sd) re-implemented in torch: a board of three 64x64 images, the latent cache
    (AutoencoderKL latent_dist.sample on the run's generator, unflipped then flipped), the
    captions through transformers' CLIPTextModel, diffusers' UNet2DConditionModel with kohya
    LoRAModule-style hooks on the attn+ff Linear layers (kaiming down, zero up, alpha / rank) and
    the same loop as the fake model (train_loop); per-step losses (and those with the LoRA frozen)
    and the final LoRA factors, which tests/unit/test_train_steps.c compares with mood's.
  * full/: mood_train_run with full = 1 on the same model and board (full_run): every parameter
    of transformers' CLIPTextModel (te/ run; unet/ run: frozen, its outputs cached) and diffusers'
    UNet2DConditionModel in one AdamW (the text encoder's group at te_lr), no init draws, caption
    dropout (torch.rand(B) after the timesteps; the empty caption tokenised as kohya does: start,
    end, padding), the same loop; per-step losses, statistics of every weight's change, a few
    weights whole and the token-embedding rows the captions use, for tests/unit/test_train_full.c.

Run from the repository root (kohya sd-scripts checkout as for tools/tiny_models.py):
    tools/.venv/bin/python tools/make_fixtures_train.py [--sd-scripts DIR] [--only ref|steps|full]
    (--dump-full FILE also writes every final weight of the full/ runs, to study tolerances)
Made with torch 2.15.0, diffusers 0.42.1, transformers 5.24.0, Pillow 13.0.0, numpy 2.4.6,
safetensors 0.8.0, kohya sd-scripts 48d368fa (CPU, x86-64).
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


def regroup(order, sizes):
    """mood's rule: the epoch's order regrouped by latent size, sizes by first appearance."""
    seq, used = [], [False] * len(order)
    for i in range(len(order)):
        if used[i]:
            continue
        for j in range(i, len(order)):
            if not used[j] and sizes[order[j]] == sizes[order[i]]:
                used[j] = True
                seq.append(order[j])
    return seq


def batches(g, sizes, batch, flip):
    """The micro-batches of mood's trainer as [(item, flipped)] lists, endlessly. An epoch's draws
    (randperm, then rand with flips) happen when its first batch is asked for, i.e. just before
    that batch's noise, as in the trainer."""
    n = len(sizes)
    while True:
        order = torch.randperm(n, generator=g).tolist()
        flips = (torch.rand(n, generator=g) < 0.5).tolist() if flip else [False] * n
        seq, cursor = regroup(order, sizes), 0
        while cursor < n:
            k = 1
            while k < batch and cursor + k < n and sizes[seq[cursor + k]] == sizes[seq[cursor]]:
                k += 1
            yield [(i, flips[i]) for i in seq[cursor:cursor + k]]
            cursor += k


def train_loop(g, case, ctf, sched, params, sizes, latent, predict, norms=None):
    """mood's training loop (include/mood/train.h) in torch: per optimizer step `accum`
    micro-batches of kohya's draws (noise, noise offset, timesteps, input perturbation
    randn(x0.shape) when case["ip"], then with caption dropout rand(k): sample b's caption
    dropped when its value < the rate), add_noise / v target (of the unperturbed noise), MSE per
    sample, min-SNR-γ, backward of loss / accum; clip_grad_norm_, AdamW, get_scheduler.
    params: tensors, or AdamW parameter groups (dicts with their own "lr").
    latent(i, flipped) -> C x h x w; predict(noisy, t, items, dropped) -> the model's output.
    Returns the losses (mean of each step's micro-batch losses)."""
    opt = torch.optim.AdamW(params, lr=case["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=case["wd"])
    if params and isinstance(params[0], dict):
        params = [p for group in params for p in group["params"]]
    lr_s = get_scheduler(case["schedule"], opt, num_warmup_steps=case["warmup"],
                         num_training_steps=case["steps"])
    it = batches(g, sizes, case["batch"], case["flip"])
    losses = []
    for _step in range(case["steps"]):
        opt.zero_grad()
        total = 0.0
        for _a in range(case["accum"]):
            items = next(it)
            k = len(items)
            x0 = torch.stack([latent(i, f) for i, f in items])
            noise = torch.randn(x0.shape, generator=g)
            if case["offset"]:
                noise = noise + case["offset"] * torch.randn((k, x0.shape[1], 1, 1), generator=g)
            # kohya's --min_timestep / --max_timestep (get_timesteps: randint(min, max))
            t = torch.randint(case.get("tmin", 0), case.get("tmax", 1000), (k,), generator=g)
            noise_in = noise  # kohya's ip_noise_gamma: the input's noise only, drawn after t
            if case.get("ip"):
                noise_in = noise + case["ip"] * torch.randn(x0.shape, generator=g)
            dropped = [False] * k
            if case.get("dropout"):
                dropped = (torch.rand(k, generator=g) < case["dropout"]).tolist()
            noisy = sched.add_noise(x0, noise_in, t)
            target = sched.get_velocity(x0, noise, t) if case["v"] else noise
            pred = predict(noisy, t, [i for i, _ in items], dropped)
            loss = torch.nn.functional.mse_loss(pred, target, reduction="none").mean([1, 2, 3])
            if case["gamma"]:
                loss = ctf.apply_snr_weight(loss, t, sched, case["gamma"], v_prediction=case["v"])
            loss = loss.mean()
            (loss / case["accum"]).backward()
            total += loss.item()
        if case["max_norm"]:
            norm = torch.nn.utils.clip_grad_norm_(params, case["max_norm"])
            if norms is not None:
                norms.append(norm.item())
        opt.step()
        lr_s.step()
        losses.append(total / case["accum"])
    return losses


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

    def latent(i, flipped):
        return out[f"fake/latf{i}" if flipped else f"fake/lat{i}"]

    def predict(noisy, t, items, _dropped):
        k = len(items)
        A = W0 + (MODS[0][1] / MODS[0][0]) * (ups[0] @ downs[0])
        Bm = W1 + (MODS[1][1] / MODS[1][0]) * (ups[1] @ downs[1])
        h = torch.einsum("oc,bchw->bohw", A, noisy)
        return (torch.einsum("oc,bchw->bohw", Bm, h) +
                (t.float() / 1000.0).view(k, 1, 1, 1) * beta.view(1, C, 1, 1))

    losses = train_loop(g, case, ctf, sched, params, SIZES, latent, predict)
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
    dict(name="ip", seed=12, steps=5, batch=2, accum=1, lr=2e-2, wd=1e-2, schedule="linear",
         warmup=1, max_norm=1.0, gamma=5.0, offset=0.05, v=False, flip=True, ip=0.1),
    dict(name="trange", seed=3, steps=5, batch=2, accum=1, lr=2e-2, wd=1e-2, schedule="constant",
         warmup=0, max_norm=1.0, gamma=5.0, offset=0.0, v=True, flip=True, tmin=700, tmax=950),
]


# ----------------------------------------------------------------------------------------------
# a whole run on the tiny SD1 model (steps/)
# ----------------------------------------------------------------------------------------------

TINY_SD = os.path.join(ROOT, "tests", "fixtures", "pipeline", "tiny-sd")
STEPS_CASE = dict(name="unet", seed=77, steps=10, batch=2, accum=2, lr=2e-2, wd=1e-2,
                  schedule="cosine", warmup=2, max_norm=1.0, gamma=5.0, offset=0.05, v=False,
                  flip=True, rank=4, alpha=2.0, resolution=64, targets="attn+ff", trigger="sks",
                  captions={"b.png": "red fox, sks style"})
STEPS_IMAGES = ("a.png", "b.png", "c.png")


def steps_image(k):
    """A smooth 64x64 RGB pattern, different for each k."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    r = 128 + 110 * np.sin(x / (4.0 + k) + k)
    gch = 128 + 110 * np.cos((x + 2 * y) / (9.0 - 2 * k))
    b = 128 + 110 * np.sin(y / (3.0 + 2 * k) - x / 11.0)
    return Image.fromarray(np.stack([r, gch, b], -1).round().clip(0, 255).astype(np.uint8), "RGB")


def steps_targets(unet):
    """The Linear layers mood trains with targets attn+ff, in mood's module order: the UNet's
    weights as mood builds them (down blocks, mid block, up blocks; in a transformer block attn1
    to_q, to_k, to_v, to_out.0, attn2 likewise, ff.net.0.proj, ff.net.2). diffusers registers
    up_blocks before mid_block, hence the stable sort."""
    subs = [f"attn{a}.{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")]
    subs += ["ff.net.0.proj", "ff.net.2"]
    mods = [(n, m) for n, m in unet.named_modules()
            if ".attentions." in n and isinstance(m, torch.nn.Linear)
            and any(n.endswith("." + s) for s in subs)]
    group = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(mods, key=lambda nm: group[nm[0].split(".")[0]])


class LoRASide:
    """kohya's LoRAModule on a Linear: y = W x + up(down(x)) * (alpha / rank); down
    kaiming_uniform_(a = sqrt(5)) on the run's generator, up zero."""

    def __init__(self, name, module, rank, alpha, g):
        self.kohya = "lora_unet_" + name.replace(".", "_")
        d = torch.empty(rank, module.in_features)
        torch.nn.init.kaiming_uniform_(d, a=math.sqrt(5), generator=g)
        self.down = torch.nn.Parameter(d)
        self.up = torch.nn.Parameter(torch.zeros(module.out_features, rank))
        self.scale = alpha / rank
        module.register_forward_hook(lambda mod, args, y: y + self(args[0]))

    def __call__(self, x):
        F = torch.nn.functional
        return F.linear(F.linear(x, self.down), self.up) * self.scale


def tiny_sd(ctf):
    """tests/fixtures/pipeline/tiny-sd in float32 (every weight frozen), its training schedule
    (kohya's all_snr added) and the CLIP tokenizer mood's fixtures use."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from make_fixtures_tokenizer import make_tokenizer
    from transformers import CLIPTextModel
    import tempfile

    torch.manual_seed(0)  # the draws use g; should anything use the global generator, it is fixed
    unet = UNet2DConditionModel.from_pretrained(os.path.join(TINY_SD, "unet"),
                                                torch_dtype=torch.float32).train(False)
    vae = AutoencoderKL.from_pretrained(os.path.join(TINY_SD, "vae"), torch_dtype=torch.float32)
    te = CLIPTextModel.from_pretrained(os.path.join(TINY_SD, "text_encoder"),
                                       torch_dtype=torch.float32)
    for p in list(unet.parameters()) + list(vae.parameters()) + list(te.parameters()):
        p.requires_grad_(False)
    sched = DDPMScheduler(**SD_SCHED)  # tiny-sd's betas (asserted)
    with open(os.path.join(TINY_SD, "scheduler", "scheduler_config.json")) as f:
        cfg = json.load(f)
    assert (cfg["beta_start"], cfg["beta_end"], cfg["beta_schedule"],
            cfg["num_train_timesteps"]) == (0.00085, 0.012, "scaled_linear", 1000)
    ctf.prepare_scheduler_for_custom_training(sched, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(tmp)
    return unet, vae, te, sched, tok


def board_latents(vae, g, board):
    """mood's latent cache: image by image, unflipped then flipped, latent_dist.sample() * sf
    on the run's generator."""
    lats = []
    with torch.no_grad():
        for name in STEPS_IMAGES:
            img = np.asarray(Image.open(os.path.join(board, name)).convert("RGB"))
            x = (torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
            pair = []
            for flipped in (False, True):
                xi = torch.flip(x, dims=[2]) if flipped else x
                dist = vae.encode(xi[None]).latent_dist
                pair.append(dist.sample(generator=g)[0] * vae.config.scaling_factor)
            lats.append(pair)
    return lats


def caption_ids(tok, case, name):
    """kohya's tokenizer(caption, padding="max_length", truncation=True, max_length=77) of an
    image's caption (its sidecar, else "{trigger}, a picture"); name None: the empty caption
    caption dropout gives (start, end, then padding)."""
    caption = "" if name is None else case["captions"].get(name, case["trigger"] + ", a picture")
    return tok(caption, padding="max_length", truncation=True, max_length=77,
               return_tensors="pt").input_ids[0]


def steps_run(case, ctf, out_dir, lr=None):
    """The run mood_train_run does for `case` on tests/fixtures/pipeline/tiny-sd and the board in
    out_dir/board: its losses, the final LoRA factors (kohya names) and the cached latents."""
    unet, vae, te, sched, tok = tiny_sd(ctf)
    g = torch.Generator().manual_seed(case["seed"])
    # 1. LoRA init, module by module
    sides = [LoRASide(n, m, case["rank"], case["alpha"], g) for n, m in steps_targets(unet)]
    params = [p for s in sides for p in (s.down, s.up)]
    # 2. the latent cache: image by image, unflipped then flipped; latent_dist.sample() * sf
    lats = board_latents(vae, g, os.path.join(out_dir, "board"))
    with torch.no_grad():
        ctx = [te(caption_ids(tok, case, name)[None]).last_hidden_state[0]
               for name in STEPS_IMAGES]
    sizes = [tuple(p[0].shape[1:]) for p in lats]
    # 3. + 4. the training loop
    c = dict(case, lr=case["lr"] if lr is None else lr)

    def predict(noisy, t, items, _dropped):
        return unet(noisy, t, encoder_hidden_states=torch.stack([ctx[i] for i in items])).sample

    losses = train_loop(g, c, ctf, sched, params, sizes, lambda i, f: lats[i][int(f)], predict)
    final = {}
    for s in sides:
        final[s.kohya + ".lora_down.weight"] = s.down.detach().clone()
        final[s.kohya + ".lora_up.weight"] = s.up.detach().clone()
    latents = torch.stack([torch.stack(p) for p in lats])
    return losses, final, latents


def steps(ctf):
    """steps/: a board of three 64x64 images (one with a sidecar caption), and torch's run of
    STEPS_CASE on it: the losses, the losses of the same draws with the LoRA frozen (lr 0: how far
    training moved them), the final LoRA factors and the cached latents."""
    out_dir = os.path.join(OUT, "steps")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(os.path.join(out_dir, "board"))
    for k, name in enumerate(STEPS_IMAGES):
        steps_image(k).save(os.path.join(out_dir, "board", name))
    for name, caption in STEPS_CASE["captions"].items():
        with open(os.path.join(out_dir, "board", os.path.splitext(name)[0] + ".txt"), "w") as f:
            f.write(caption + "\n")
    losses, final, latents = steps_run(STEPS_CASE, ctf, out_dir)
    frozen, _, _ = steps_run(STEPS_CASE, ctf, out_dir, lr=0.0)
    ref = {"loss": torch.tensor(losses, dtype=torch.float64),
           "loss_frozen": torch.tensor(frozen, dtype=torch.float64), "latents": latents}
    ref.update(final)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out_dir, "ref.safetensors"))
    import diffusers
    import transformers
    meta = dict(STEPS_CASE, model="../../pipeline/tiny-sd", board="board", images=STEPS_IMAGES,
                modules=len(final) // 2,
                versions=dict(torch=torch.__version__, diffusers=diffusers.__version__,
                              transformers=transformers.__version__))
    with open(os.path.join(out_dir, "case.json"), "w") as f:
        json.dump(meta, f, indent=1)


# ----------------------------------------------------------------------------------------------
# full-parameter training on the tiny SD1 model (full/)
# ----------------------------------------------------------------------------------------------

FULL_CASE = dict(name="full", seed=123, steps=6, batch=2, accum=2, lr=2e-3, te_lr=1e-3, wd=0.1,
                 schedule="cosine", warmup=2, max_norm=1.0, gamma=5.0, offset=0.05, v=False,
                 flip=True, dropout=0.3, resolution=64, trigger="sks",
                 captions={"b.png": "red fox, sks style"})
# Weights stored whole (final values, F32): one of each kind of layer; the rest are checked
# through their statistics (full_stats).
FULL_WHOLE_UNET = ["conv_in.weight", "time_embedding.linear_1.weight",
                   "down_blocks.0.resnets.0.norm1.weight", "down_blocks.0.resnets.1.conv2.weight",
                   "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                   "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
                   "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.bias",
                   "up_blocks.1.attentions.2.proj_out.weight", "up_blocks.0.upsamplers.0.conv.bias",
                   "conv_norm_out.bias", "conv_out.weight"]
FULL_WHOLE_TE = ["text_model.embeddings.position_embedding.weight",
                 "text_model.encoder.layers.0.self_attn.q_proj.weight",
                 "text_model.encoder.layers.1.mlp.fc1.bias",
                 "text_model.encoder.layers.1.layer_norm2.weight",
                 "text_model.final_layer_norm.bias"]


def full_patterns(n):
    """The two fixed patterns the statistics project each weight's change on (as
    tests/unit/test_train_full.c computes them): p1[i] = (i * 2654435761 mod 2^32) / 2^32 - 0.5,
    p2[i] = ((i * 40503 + 12345) mod 65521) / 65521 - 0.5."""
    i = np.arange(n, dtype=np.uint64)
    p1 = ((i * np.uint64(2654435761)) % np.uint64(2**32)).astype(np.float64) / 2.0**32 - 0.5
    p2 = ((i * np.uint64(40503) + np.uint64(12345)) % np.uint64(65521)).astype(np.float64)
    return p1, p2 / 65521.0 - 0.5


def full_stats(final, initial):
    """Per weight, of its change d = final - initial (float64): [||d||, d . p1, d . p2, max |d|]."""
    rows = []
    for name in final:
        d = final[name].double().flatten().numpy() - initial[name].double().flatten().numpy()
        p1, p2 = full_patterns(d.size)
        rows.append([np.sqrt((d * d).sum()), (d * p1).sum(), (d * p2).sum(), np.abs(d).max()])
    return torch.tensor(rows, dtype=torch.float64)


def full_run(case, ctf, board, train_te, lr_scale=1.0, norms=None, drops=None):
    """mood_train_run with full = 1 (and train_te) in torch: every UNet (and text-encoder)
    parameter trained by one AdamW (the text encoder's group at te_lr), no init draws, the latent
    cache, then train_loop with caption dropout (the empty caption's ids; with the text encoder
    trained the captions are encoded at every step, else their outputs are cached first).
    Returns the losses and the initial and final weights {name: tensor}, text encoder first;
    drops (a list) gets each micro-batch's dropped flags."""
    unet, vae, te, sched, tok = tiny_sd(ctf)
    g = torch.Generator().manual_seed(case["seed"])
    lats = board_latents(vae, g, board)
    ids = [caption_ids(tok, case, name) for name in STEPS_IMAGES]
    empty = caption_ids(tok, case, None)
    with torch.no_grad():
        ctx = [te(x[None]).last_hidden_state[0] for x in ids]
        empty_ctx = te(empty[None]).last_hidden_state[0]
    # mood's names (Hugging Face's with "text_model."; transformers 5 leaves the prefix out)
    named = [("text_model." + n.removeprefix("text_model."), p)
             for n, p in te.named_parameters()] if train_te else []
    n_te = len(named)
    named += list(unet.named_parameters())
    for _, p in named:
        p.requires_grad_(True)
    initial = {n: p.detach().clone() for n, p in named}
    groups = [{"params": [p for _, p in named[n_te:]], "lr": case["lr"] * lr_scale}]
    if train_te:
        groups.insert(0, {"params": [p for _, p in named[:n_te]], "lr": case["te_lr"] * lr_scale})
    sizes = [tuple(p[0].shape[1:]) for p in lats]

    def predict(noisy, t, items, dropped):
        if drops is not None:
            drops.append(dropped)
        if train_te:
            batch = torch.stack([empty if d else ids[i] for i, d in zip(items, dropped)])
            context = te(batch).last_hidden_state
        else:
            context = torch.stack([empty_ctx if d else ctx[i] for i, d in zip(items, dropped)])
        return unet(noisy, t, encoder_hidden_states=context).sample

    c = dict(case, lr=case["lr"] * lr_scale)
    losses = train_loop(g, c, ctf, sched, groups, sizes, lambda i, f: lats[i][int(f)], predict,
                        norms)
    final = {n: p.detach().clone() for n, p in named}
    return losses, initial, final


def full(ctf, dump=None):
    """full/: torch's full-parameter runs of FULL_CASE on the steps/ board, with the text encoder
    (te/) and without (unet/): losses, the losses of the same draws frozen (lr 0), per-weight
    statistics of the change of every weight, a few weights whole, and the token-embedding rows
    the captions use."""
    out_dir = os.path.join(OUT, "full")
    board = os.path.join(OUT, "steps", "board")
    if not os.path.isdir(board):
        raise SystemExit(board + " missing: make steps/ first")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    ref, meta, dumped = {}, dict(FULL_CASE), {}
    for key, train_te in (("te", True), ("unet", False)):
        norms, drops = [], []
        losses, initial, final = full_run(FULL_CASE, ctf, board, train_te, norms=norms,
                                          drops=drops)
        print(f"full/{key}: losses", ["%.6f" % x for x in losses],
              "grad norms", ["%.3f" % x for x in norms])
        meta["dropped"] = drops  # the same draws in both runs
        ref[key + "/loss"] = torch.tensor(losses, dtype=torch.float64)
        ref[key + "/stats"] = full_stats(final, initial)
        meta[key + "_weights"] = list(final)
        for name in FULL_WHOLE_UNET + (FULL_WHOLE_TE if train_te else []):
            ref[f"{key}/w/{name}"] = final[name]
        dumped.update({f"{key}/{n}": v for n, v in final.items()})
        if train_te:
            te_final = final
    frozen, _, _ = full_run(FULL_CASE, ctf, board, True, lr_scale=0.0)
    ref["loss_frozen"] = torch.tensor(frozen, dtype=torch.float64)
    # the token-embedding rows the captions use (the other rows only decay)
    tok = tiny_sd(ctf)[4]
    rows = sorted({int(x) for name in list(STEPS_IMAGES) + [None]
                   for x in caption_ids(tok, FULL_CASE, name)})
    ref["te/rows/ids"] = torch.tensor(rows, dtype=torch.int64)
    ref["te/rows/values"] = te_final["text_model.embeddings.token_embedding.weight"][rows]
    meta.update(model="../../pipeline/tiny-sd", board="../steps/board", images=STEPS_IMAGES,
                whole_unet=FULL_WHOLE_UNET, whole_te=FULL_WHOLE_TE,
                stats="per weight of <run>_weights, of d = final - initial (float64): ||d||, "
                      "d . p1, d . p2, max |d| (p1, p2: full_patterns)")
    import diffusers
    import transformers
    meta["versions"] = dict(torch=torch.__version__, diffusers=diffusers.__version__,
                            transformers=transformers.__version__)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out_dir, "ref.safetensors"))
    with open(os.path.join(out_dir, "case.json"), "w") as f:
        json.dump(meta, f, indent=1)
    if dump:  # every final weight, to study the tolerances (not part of the fixture)
        save_file({k: v.contiguous() for k, v in dumped.items()}, dump)


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
    ap.add_argument("--only", choices=["ref", "steps", "full"], default=None,
                    help="rewrite only this part (ref: ref.safetensors, cases.json and the "
                         "images; steps/: the LoRA run on the tiny SD1 model; full/: the "
                         "full-parameter runs, on steps/'s board)")
    ap.add_argument("--dump-full", default=None,
                    help="also write every final weight of the full/ runs to this file")
    args = ap.parse_args()
    if args.sd_scripts:
        tm.set_sd_scripts(args.sd_scripts)
    torch.set_num_threads(1)
    k, ctf = kohya_ctf()
    if args.only in ("steps", "full"):
        (steps if args.only == "steps" else lambda c: full(c, args.dump_full))(ctf)
        print("wrote", os.path.join(OUT, args.only))
        return
    if os.path.isdir(OUT):  # all of it, but steps/ and full/ under --only ref
        for entry in os.listdir(OUT):
            if not (args.only and entry in ("steps", "full")):
                path = os.path.join(OUT, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
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
    if not args.only:
        steps(ctf)
        full(ctf, args.dump_full)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
