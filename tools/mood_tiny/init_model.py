"""Writes the untrained mood-tiny model folder (the starting point of tools/mood_tiny/train.sh).

mood-tiny is a text-to-image model of the SD family small enough to ship (under 20 MB) and to
train on a laptop CPU: SD1's pipeline layout with
  * text_encoder: a CLIP text encoder (CLIPTextModel, SD1's tokenizer and 77 positions, quick_gelu)
    of 4 layers, 64 wide, 4 heads;
  * unet: UNet2DConditionModel on 16 x 16 x 48 "latents", channels (64, 128, 128), one resnet per
    level, cross-attention at the lowest level (4 x 4) and in the mid block, 64-wide context;
  * vae: none: mood's MoodPixelShuffle, the 64 x 64 image cut into 4 x 4 patches stacked as 48
    channels (engine/vae_pixel.c), so nothing has to be learnt there;
  * scheduler: DDPM's linear betas (1e-4 .. 0.02), which take pixels (not SD latents) to noise,
    with x0-prediction (prediction_type "sample"): the UNet outputs the clean image. Each of the
    16 x 16 positions holds 48 pixel values, and the first level is only 64 channels wide: a
    model that must output the noise (epsilon, or v which is mostly noise at low noise levels)
    has to carry 48 channels of white noise through that width, and cannot; clean emoji are
    smooth and low-dimensional, so predicting them fits (Li & He 2025, "Back to Basics: Let
    Denoising Generative Models Denoise", find the same for pixel-space transformers with large
    patches). Measured: epsilon (1,600 steps) still sampled pure noise, since its small errors
    are amplified by up to 1/sqrt(alphas_cumprod) ~ 150 in the x0 estimate; v (2,000 steps, loss
    still falling) removed only a third of the noise variance at t = 20 and sampled recognisable
    shapes under a layer of pixel grain; x0 removes the grain.
Weights: diffusers' / transformers' own initialisation with torch.manual_seed(SEED), written in
float32 (the trainer's master weights).

usage: tools/.venv/bin/python tools/mood_tiny/init_model.py OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

UNET = dict(
    sample_size=16,
    in_channels=48,
    out_channels=48,
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=4,  # diffusers' legacy name: 4 heads (32 wide at 128 channels)
    norm_num_groups=32,
)

TEXT = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    projection_dim=64,
)

SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "sample",
    "clip_sample": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

VAE = {"_class_name": "MoodPixelShuffle", "patch_size": 4, "in_channels": 3,
       "scaling_factor": 1.0, "sample_size": 64}

INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["mood", "MoodPixelShuffle"],
}


def write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    unet = UNet2DConditionModel(**UNET)
    te = CLIPTextModel(CLIPTextConfig(**TEXT))
    os.makedirs(f"{a.out}/unet", exist_ok=True)
    os.makedirs(f"{a.out}/text_encoder", exist_ok=True)
    write_json(f"{a.out}/unet/config.json", dict(unet.config))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
              f"{a.out}/unet/diffusion_pytorch_model.safetensors")
    te.config.save_pretrained(f"{a.out}/text_encoder")
    sd = {k: v.contiguous() for k, v in te.state_dict().items() if "position_ids" not in k}
    save_file(sd, f"{a.out}/text_encoder/model.safetensors")
    write_json(f"{a.out}/scheduler/scheduler_config.json", SCHEDULER)
    write_json(f"{a.out}/vae/config.json", VAE)
    write_json(f"{a.out}/model_index.json", INDEX)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_te = sum(p.numel() for p in te.parameters())
    print(f"unet {n_unet / 1e6:.2f}M parameters, text encoder {n_te / 1e6:.2f}M")


if __name__ == "__main__":
    main()
