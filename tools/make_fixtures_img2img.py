"""Reference fixtures for mood's img2img (tests/fixtures/img2img/), computed by diffusers' own
StableDiffusionImg2ImgPipeline on the tiny SD1.x pipeline of tests/fixtures/pipeline/tiny-sd
(made by make_fixtures_pipeline.py; read here, not changed).

The init image: init.png, a 64 x 64 RGB picture drawn here (gradients, a disc, a bar; no
randomness), stored as 8-bit PNG so that diffusers (PIL) and mood read the same pixels. It is
the generation size, so no resize is involved: diffusers' VaeImageProcessor.preprocess only
normalises it (x / 255 * 2 - 1).

References (float32, CPU, diffusers 0.42, the pipeline loaded from tiny-sd/ in float32 with the
tokenizer made offline by make_fixtures_tokenizer.make_tokenizer; generator =
torch.Generator("cpu").manual_seed(seed) passed to the pipeline, which draws, in this order, the
VAE's latent_dist.sample() of the init image (once, repeated for a batch), the noise that
scheduler.add_noise mixes in at the first step kept, and every ancestral step's noise):
  * <run>.latents: the final latents (output_type="latent") of each run in manifest "runs"
    (B x 4 x 8 x 8), with the run's scheduler (as make_fixtures_pipeline.py's), steps, strength
    and guidance scale;
  * <run>.image for runs with "image": output_type="np" (B x 64 x 64 x 3, in [0, 1]);
  * inpaint_<run>.latents (and .image): StableDiffusionInpaintPipeline on the same model with
    mask.png (white: redrawn), the manifest's "inpaint_runs";
  * inpaint9_<run>.latents (and .image): the same pipeline with an inpainting model,
    tiny-sd-inpaint/ (tiny-sd with a 9-channel conv_in, made here; its other parts are links to
    tiny-sd's), the manifest's "inpaint9_runs";
  * sdxl_<run>.latents: StableDiffusionXLImg2ImgPipeline on tests/fixtures/sdxl/tiny-sdxl (made by
    make_fixtures_sdxl.py; tokenizer_2 pads with "!"), the manifest's "sdxl_runs".

Run from the repository root:
  tools/.venv/bin/python tools/make_fixtures_img2img.py
Made with torch 2.15.0, diffusers 0.42.1, transformers 5.24.0 (recorded in manifest.json).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)

from make_fixtures_pipeline import MOOD_SAMPLER, SCHEDULERS  # noqa: E402  (the same runs' names)
from make_fixtures_tokenizer import make_tokenizer  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,  # noqa: E402
                       StableDiffusionXLImg2ImgPipeline)
from transformers import CLIPTokenizer  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

MODEL = os.path.join(ROOT, "tests", "fixtures", "pipeline", "tiny-sd")
SDXL = os.path.join(ROOT, "tests", "fixtures", "sdxl", "tiny-sdxl")
OUT = os.path.join(ROOT, "tests", "fixtures", "img2img")
SIZE, STEPS, CFG = 64, 10, 7.5
PROMPT = "a lighthouse at dusk, oil painting"

RUNS = [
    dict(name="euler_s06", scheduler="euler", strength=0.6, seed=42, image=True),
    dict(name="euler_a_s075_batch2", scheduler="euler_a", strength=0.75, seed=43, batch=2),
    dict(name="dpmpp_2m_karras_s05", scheduler="dpmpp_2m_karras", strength=0.5, seed=44),
    dict(name="ddim_s08", scheduler="ddim", strength=0.8, seed=45),
    dict(name="euler_s1", scheduler="euler", strength=1.0, seed=46),
    dict(name="euler_a_s035", scheduler="euler_a", strength=0.35, seed=47),
]
# StableDiffusionInpaintPipeline (the same 4-channel UNet: after each step the kept area is put
# back, the picture's latents noised to the next step's level) with mask.png; its default
# strength 1 starts from pure noise
INPAINT_RUNS = [
    dict(name="inpaint_euler_s1", scheduler="euler", strength=1.0, seed=60, image=True),
    dict(name="inpaint_euler_a_s075_batch2", scheduler="euler_a", strength=0.75, seed=61,
         batch=2),
    dict(name="inpaint_dpmpp_2m_karras_s06", scheduler="dpmpp_2m_karras", strength=0.6, seed=62),
    dict(name="inpaint_ddim_s09", scheduler="ddim", strength=0.9, seed=63),
]
# StableDiffusionInpaintPipeline with an inpainting model: tiny-sd's UNet with a 9-channel conv_in
# (latents, the mask, the masked picture's latents), stored as tiny-sd-inpaint/ (its unet/; the
# other parts are links to tiny-sd's). No blending after the steps: the UNet sees the mask.
INPAINT9_RUNS = [
    dict(name="inpaint9_euler_a_s1", scheduler="euler_a", strength=1.0, seed=70, image=True),
    dict(name="inpaint9_dpmpp_2m_karras_s07_batch2", scheduler="dpmpp_2m_karras", strength=0.7,
         seed=71, batch=2),
]
INPAINT9 = os.path.join(OUT, "tiny-sd-inpaint")


def make_inpaint_model() -> None:
    """tiny-sd with its UNet's conv_in widened to 9 input channels: the first 4 tiny-sd's, the
    other 5 seeded random values, rounded to float16 as stored."""
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet"), torch_dtype=torch.float32)
    cfg = dict(unet.config)
    cfg["in_channels"] = 9
    wide = UNet2DConditionModel.from_config(cfg)
    state = unet.state_dict()
    w = state["conv_in.weight"]
    g = torch.Generator().manual_seed(9)
    extra = torch.randn(w.shape[0], 5, *w.shape[2:], generator=g) / (9 * 9) ** 0.5
    state["conv_in.weight"] = torch.cat([w, extra], dim=1).half().float()
    wide.load_state_dict(state)
    if os.path.exists(INPAINT9):
        shutil.rmtree(INPAINT9)
    os.makedirs(INPAINT9)
    wide.half().save_pretrained(os.path.join(INPAINT9, "unet"))
    cfg_path = os.path.join(INPAINT9, "unet", "config.json")
    with open(cfg_path) as f:  # without the path of the machine it was made on
        cfg = json.load(f)
    cfg.pop("_name_or_path", None)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    for part in ("text_encoder", "vae", "scheduler", "model_index.json"):
        os.symlink(os.path.join("..", "..", "pipeline", "tiny-sd", part), os.path.join(INPAINT9, part))


# StableDiffusionXLImg2ImgPipeline on tests/fixtures/sdxl/tiny-sdxl (make_fixtures_sdxl.py's;
# tokenizer_2 pads with "!"), guidance 5 as that script's runs
SDXL_RUNS = [
    dict(name="sdxl_euler_s06", scheduler="euler", strength=0.6, seed=52, cfg=5.0),
    dict(name="sdxl_dpmpp_2m_karras_s08", scheduler="dpmpp_2m_karras", strength=0.8, seed=53,
         cfg=5.0, batch=2),
]


def init_image() -> np.ndarray:
    """A deterministic 64 x 64 RGB picture: a sky gradient, a sun disc, a dark bar."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    img = np.zeros((SIZE, SIZE, 3))
    img[..., 0] = 40 + 180 * y / SIZE
    img[..., 1] = 90 + 100 * x / SIZE
    img[..., 2] = 220 - 150 * y / SIZE
    disc = (x - 44) ** 2 + (y - 20) ** 2 < 11 ** 2
    img[disc] = (250, 200, 60)
    img[46:54, 6:58] = (30, 30, 45)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def mask_image() -> np.ndarray:
    """White (redrawn) where the sun and the sky right of it are, black (kept) elsewhere."""
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[4:36, 24:60] = 255
    return m


def run(pipe, base, r: dict, image, ref: dict, **extra_args) -> None:
    cls, extra = SCHEDULERS[r["scheduler"]]
    for output_type in ["latent"] + (["np"] if r.get("image") else []):
        pipe.scheduler = cls.from_config(base, **extra)
        out = pipe(PROMPT, image=image, **extra_args, strength=r["strength"],
                   num_inference_steps=STEPS,
                   guidance_scale=r.get("cfg", CFG), num_images_per_prompt=r.get("batch", 1),
                   generator=torch.Generator("cpu").manual_seed(r["seed"]),
                   output_type=output_type).images
        key = "latents" if output_type == "latent" else "image"
        out = out if torch.is_tensor(out) else torch.from_numpy(out)
        ref[f"{r['name']}.{key}"] = out.float().contiguous()


def manifest_runs(runs: list) -> list:
    out = []
    for r in runs:
        sampler, schedule = MOOD_SAMPLER[r["scheduler"]]
        out.append(dict(r, sampler=sampler, schedule=schedule, steps=STEPS, cfg=r.get("cfg", CFG),
                        prompt=PROMPT, batch=r.get("batch", 1), latents=f"{r['name']}.latents",
                        image=f"{r['name']}.image" if r.get("image") else None))
    return out


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    Image.fromarray(init_image(), "RGB").save(os.path.join(OUT, "init.png"))
    Image.fromarray(mask_image(), "L").save(os.path.join(OUT, "mask.png"))
    make_inpaint_model()
    mask = Image.open(os.path.join(OUT, "mask.png"))
    image = Image.open(os.path.join(OUT, "init.png")).convert("RGB")
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(tmp)
        tok.model_max_length = 77
        tok2 = CLIPTokenizer.from_pretrained(tmp, pad_token="!")
        tok2.model_max_length = 77
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            MODEL, tokenizer=tok, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, torch_dtype=torch.float32)
        xl = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            SDXL, tokenizer=tok, tokenizer_2=tok2, torch_dtype=torch.float32)
        inpaint = StableDiffusionInpaintPipeline.from_pretrained(
            MODEL, tokenizer=tok, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, torch_dtype=torch.float32)
        inpaint9 = StableDiffusionInpaintPipeline.from_pretrained(
            INPAINT9, tokenizer=tok, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, torch_dtype=torch.float32)
    assert inpaint9.unet.config.in_channels == 9
    ref = {}
    for p, runs, kw in ((pipe, RUNS, {}), (xl, SDXL_RUNS, {}),
                        (inpaint, INPAINT_RUNS, {"mask_image": mask}),
                        (inpaint9, INPAINT9_RUNS, {"mask_image": mask})):
        p.set_progress_bar_config(disable=True)
        base = p.scheduler.config
        for r in runs:
            run(p, base, r, image, ref, **kw)
    save_file(ref, os.path.join(OUT, "ref.safetensors"))
    manifest = {
        "generator": "tools/make_fixtures_img2img.py",
        "versions": {"torch": torch.__version__.split("+")[0], "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "model": "../pipeline/tiny-sd",
        "init_image": "init.png",
        "size": SIZE,
        "references": "ref.safetensors",
        "runs": manifest_runs(RUNS),
        "sdxl_model": "../sdxl/tiny-sdxl",
        "sdxl_runs": manifest_runs(SDXL_RUNS),
        "mask": "mask.png",
        "inpaint_runs": manifest_runs(INPAINT_RUNS),
        "inpaint9_model": "tiny-sd-inpaint",
        "inpaint9_runs": manifest_runs(INPAINT9_RUNS),
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for k, v in ref.items():
        print(f"{k}: {tuple(v.shape)} mean {v.mean():.5f} std {v.std():.5f}")


if __name__ == "__main__":
    main()
