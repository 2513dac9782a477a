#!/usr/bin/env python3
"""
make_fixtures_train_sdxl.py: the reference for LoRA training on an SDXL base
(tests/fixtures/train_sdxl/, checked by tests/unit/test_train_sdxl.c): mood_train_run on the tiny
SDXL folder of tests/fixtures/sdxl (tiny-sdxl) re-implemented in torch, as kohya's
sdxl_train_network.py trains it with cached latents:

  * the board: two 64x64 images (one with a sidecar caption) and a 64x96 (w x h) one, which the
    64x64 training size crops (rows 16..79, no resize, so Pillow and mood agree to the byte);
  * the latent cache as tools/make_fixtures_train.py's (AutoencoderKL latent_dist.sample on the
    run's generator, unflipped then flipped, times the scaling factor);
  * the conditioning as kohya's get_hidden_states_sdxl: hidden_states[-2] of text encoder 1 and of
    text encoder 2 (no final layer norm) concatenated, and text encoder 2's text_embeds (pooled
    end token through the projection); text encoder 2's ids padded with 0 (tokenizer_2's "!");
  * the size ids from kohya's own BucketManager.get_crop_ltrb and BaseDataset.__getitem__ rule
    (original size = the source image's, crop top / left, the left mirrored as
    target - crop_right when flipped, target size = the training size; kohya takes the target
    from the latent size times 8, which is the image size for a real SDXL VAE — the tiny VAE
    scales by another factor, so the image size is used, as mood does);
  * diffusers' UNet2DConditionModel with kohya-style LoRA hooks on the attn+ff Linear layers and
    make_fixtures_train.train_loop (draws, min-SNR, clipping, AdamW, schedule).

Writes ref.safetensors (loss, loss_frozen: the same draws with lr 0, time_ids: per image the
unflipped and flipped ids, the final LoRA factors under kohya's SDXL (SGM path) names) and
case.json. Run from the repository root, kohya sd-scripts at 48d368fa as for
tools/make_fixtures_train.py:
    tools/.venv/bin/python tools/make_fixtures_train_sdxl.py [--sd-scripts DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures_train as mft  # noqa: E402
import tiny_models as tm  # noqa: E402

TINY_SDXL = os.path.join(mft.ROOT, "tests", "fixtures", "sdxl", "tiny-sdxl")
OUT_DIR = os.path.join(mft.ROOT, "tests", "fixtures", "train_sdxl")
CASE = dict(name="sdxl", seed=11, steps=5, batch=2, accum=1, lr=2e-2, wd=1e-2,
            schedule="constant", warmup=0, max_norm=1.0, gamma=5.0, offset=0.05, v=False,
            flip=True, rank=4, alpha=2.0, resolution=64, targets="attn+ff", trigger="sks",
            captions={"b.png": "red fox, sks style"})
IMAGES = ("a.png", "b.png", "t.png")


def tall_image():
    """64 wide, 96 high: the training crop keeps rows 16..79."""
    y, x = np.mgrid[0:96, 0:64].astype(np.float64)
    r = 128 + 100 * np.sin(x / 6.0 + y / 9.0)
    g = 128 + 100 * np.cos(y / 5.0)
    b = 128 + 90 * np.sin((x - y) / 7.0)
    return Image.fromarray(np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8), "RGB")


def load(ctf):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from make_fixtures_tokenizer import make_tokenizer
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(TINY_SDXL, "unet"),
                                                torch_dtype=torch.float32).train(False)
    vae = AutoencoderKL.from_pretrained(os.path.join(TINY_SDXL, "vae"), torch_dtype=torch.float32)
    te1 = CLIPTextModel.from_pretrained(os.path.join(TINY_SDXL, "text_encoder"),
                                        torch_dtype=torch.float32)
    te2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(TINY_SDXL, "text_encoder_2"),
                                                      torch_dtype=torch.float32)
    for p in [*unet.parameters(), *vae.parameters(), *te1.parameters(), *te2.parameters()]:
        p.requires_grad_(False)
    with open(os.path.join(TINY_SDXL, "scheduler", "scheduler_config.json")) as f:
        cfg = json.load(f)
    assert (cfg["beta_start"], cfg["beta_end"], cfg["beta_schedule"],
            cfg["num_train_timesteps"]) == (0.00085, 0.012, "scaled_linear", 1000)
    assert cfg.get("prediction_type", "epsilon") == "epsilon"
    sched = DDPMScheduler(**mft.SD_SCHED)
    ctf.prepare_scheduler_for_custom_training(sched, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(tmp)
    return unet, vae, te1, te2, sched, tok


def training_crop(img, res):
    """mood's (and kohya's) no-bucket preparation of an image that needs no resize: the centre
    crop of res x res."""
    assert min(img.size) == res
    x0, y0 = (img.width - res) // 2, (img.height - res) // 2
    return img.crop((x0, y0, x0 + res, y0 + res))


def time_ids(train_util, src_w, src_h, res):
    """kohya's size ids (h, w, top, left, h, w) of an image, unflipped and flipped."""
    left, top, right, _ = train_util.BucketManager.get_crop_ltrb((res, res), (src_w, src_h))
    out = []
    for flipped in (False, True):
        lt = (res - right, top) if flipped else (left, top)
        out.append([src_h, src_w, int(lt[1]), int(lt[0]), res, res])
    return torch.tensor(out, dtype=torch.float32)


def run(case, ctf, train_util, board, lr=None):
    unet, vae, te1, te2, sched, tok = load(ctf)
    g = torch.Generator().manual_seed(case["seed"])
    sides = [mft.LoRASide(n, m, case["rank"], case["alpha"], g)
             for n, m in mft.steps_targets(unet)]
    params = [p for s in sides for p in (s.down, s.up)]
    res, lats, ctx, pooled, tids = case["resolution"], [], [], [], []
    with torch.no_grad():
        for name in IMAGES:
            src = Image.open(os.path.join(board, name)).convert("RGB")
            img = np.asarray(training_crop(src, res))
            x = (torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
            pair = []
            for flipped in (False, True):
                xi = torch.flip(x, dims=[2]) if flipped else x
                dist = vae.encode(xi[None]).latent_dist
                pair.append(dist.sample(generator=g)[0] * vae.config.scaling_factor)
            lats.append(pair)
            ids1 = mft.caption_ids(tok, case, name)
            eos = int((ids1 == tok.eos_token_id).nonzero()[0, 0])
            ids2 = ids1.clone()
            ids2[eos + 1:] = 0  # tokenizer_2 pads with "!"
            h1 = te1(ids1[None], output_hidden_states=True).hidden_states[-2][0]
            o2 = te2(ids2[None], output_hidden_states=True)
            ctx.append(torch.cat([h1, o2.hidden_states[-2][0]], dim=-1))
            pooled.append(o2.text_embeds[0])
            tids.append(time_ids(train_util, src.width, src.height, res))
    sizes = [tuple(p[0].shape[1:]) for p in lats]
    flips = {}

    def latent(i, flipped):
        flips.setdefault("last", []).append((i, flipped))
        return lats[i][int(flipped)]

    def predict(noisy, t, items, _dropped):
        used = flips["last"][-len(items):]
        flips["last"] = []
        tid = torch.stack([tids[i][int(f)] for i, f in used])
        cond = {"text_embeds": torch.stack([pooled[i] for i in items]), "time_ids": tid}
        return unet(noisy, t, encoder_hidden_states=torch.stack([ctx[i] for i in items]),
                    added_cond_kwargs=cond).sample

    c = dict(case, lr=case["lr"] if lr is None else lr)
    losses = mft.train_loop(g, c, ctf, sched, params, sizes, latent, predict)
    final = {}
    for s, name in zip(sides, sgm_names(unet)):
        final[name + ".lora_down.weight"] = s.down.detach().clone()
        final[name + ".lora_up.weight"] = s.up.detach().clone()
    return losses, final, torch.stack(tids)


def sgm_names(unet):
    """kohya's SDXL module names of the trained layers (mft.steps_targets' order): lora_unet_ +
    the SGM path (sdxl_model_util's conversion map) with '.' -> '_'."""
    from library import sdxl_model_util

    names = [n for n, _ in mft.steps_targets(unet)]
    sgm = sdxl_model_util.convert_diffusers_unet_state_dict_to_sdxl(
        {n + ".weight": i for i, n in enumerate(names)})
    by_index = {i: k[:-len(".weight")] for k, i in sgm.items()}
    return ["lora_unet_" + by_index[i].replace(".", "_") for i in range(len(names))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd-scripts", default=None)
    args = ap.parse_args()
    if args.sd_scripts:
        tm.set_sd_scripts(args.sd_scripts)
    torch.set_num_threads(1)
    _, ctf = mft.kohya_ctf()
    import library.train_util as train_util  # noqa: E402  (path set by tm.kohya)

    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    board = os.path.join(OUT_DIR, "board")
    os.makedirs(board)
    mft.steps_image(0).save(os.path.join(board, "a.png"))
    mft.steps_image(1).save(os.path.join(board, "b.png"))
    tall_image().save(os.path.join(board, "t.png"))
    for name, caption in CASE["captions"].items():
        with open(os.path.join(board, os.path.splitext(name)[0] + ".txt"), "w") as f:
            f.write(caption + "\n")
    losses, final, tids = run(CASE, ctf, train_util, board)
    frozen, _, _ = run(CASE, ctf, train_util, board, lr=0.0)
    ref = {"loss": torch.tensor(losses, dtype=torch.float64),
           "loss_frozen": torch.tensor(frozen, dtype=torch.float64), "time_ids": tids}
    ref.update(final)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT_DIR, "ref.safetensors"))
    import diffusers
    import transformers
    meta = dict(CASE, model="../sdxl/tiny-sdxl", board="board", images=IMAGES,
                modules=len(final) // 2,
                versions=dict(torch=torch.__version__, diffusers=diffusers.__version__,
                              transformers=transformers.__version__,
                              sd_scripts=tm.SD_SCRIPTS_COMMIT))
    with open(os.path.join(OUT_DIR, "case.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", OUT_DIR, "losses", losses, "frozen", frozen)


if __name__ == "__main__":
    main()
