"""Reference fixtures for mood's UNet (tests/fixtures/unet/), checked by tests/unit/test_unet.c.

Three tiny random diffusers UNet2DConditionModel with the real block structure but few channels,
saved with save_pretrained as diffusers folders, and for each the float32 output of diffusers'
forward pass on fixed inputs:

  * sd1/   SD1-like: block_out_channels (16, 24), CrossAttnDownBlock2D + DownBlock2D (up: UpBlock2D
           + CrossAttnUpBlock2D), layers_per_block 2, attention_head_dim 4 (= 4 heads), 1x1 Conv2d
           proj_in/proj_out, cross_attention_dim 24, 8 norm groups; float16 weights
           (diffusion_pytorch_model.safetensors). Inputs 2 x 4 x 8 x 8, 7 context tokens.
  * sd2/   SD2-like: 3 blocks (8, 16, 24), 2 x CrossAttnDownBlock2D + DownBlock2D, layers_per_block 1,
           attention_head_dim [2, 2, 4] (per-block heads), Linear proj_in/proj_out,
           upcast_attention, 4 norm groups, norm_eps 1e-6, and the other timestep embedding
           (flip_sin_to_cos false, freq_shift 1); bfloat16 weights. Inputs 2 x 4 x 12 x 10, an
           odd latent size: 10 -> 5 -> 3 wide, so the upsamplers resize to the skip's size
           (3 -> 5) as diffusers does when the size does not divide.
  * sdxl/  SDXL-like, as a pipeline root (sdxl/unet/): DownBlock2D + CrossAttnDownBlock2D,
           transformer_layers_per_block [1, 2] (mid block 2), layers_per_block 1, heads [2, 3],
           Linear projections, cross_attention_dim 32, addition_embed_type "text_time" with
           addition_time_embed_dim 8 and projection_class_embeddings_input_dim 64 (16 text_embeds +
           6 x 8); float16 weights saved as the "fp16" variant
           (diffusion_pytorch_model.fp16.safetensors). Inputs 2 x 4 x 8 x 8 with text_embeds and
           time_ids (1024, 1024, 0, 0, 1024, 1024) / (768, 1344, 16, 32, 1024, 1024).

Every parameter is re-randomised (seed crc32("<name>/<parameter>")): Linear/Conv weights
randn / sqrt(fan_in), norm weights 1 + 0.1 randn, biases and norm biases 0.1 randn, so that
conv_out / proj_out are not zero and attention is not uniform. Weights are rounded to the
stored dtype before the reference runs, so the float32 reference sees what mood reads.
Timesteps are 999 and 1.5.

ref_<name>.safetensors: x, t, context (and text_embeds, time_ids) and out, all F32.

The tiny single-file checkpoints of ../bases/ (tools/tiny_models.py; their diffusers UNets are
rebuilt bit for bit by tiny_models.make_models, which needs no kohya checkout) get references
too, in ref_bases.safetensors: for sd1, sd1_fp16 (the sd1 UNet with weights rounded through
float16, as sd1_base_fp16 stores them), sd2 and sdxl: <base>.x, .t, .context, (.text_embeds,
.time_ids), .out. These UNets have 1 head per block and 2 norm groups, which a single file does
not record (the test passes them as a hint).

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_unet.py
Made with torch 2.15.0, diffusers 0.42.1, safetensors 0.8.0.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zlib

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

OUT = "tests/fixtures/unet"

CONFIGS = {
    "sd1": dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 24), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8),
    "sd2": dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 24), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=(2, 2, 4), norm_num_groups=4, norm_eps=1e-6,
        use_linear_projection=True, upcast_attention=True, flip_sin_to_cos=False, freq_shift=1),
    "sdxl": dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 24), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), cross_attention_dim=32, attention_head_dim=(2, 3),
        norm_num_groups=8, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8),
}
# name: (storage dtype, variant, folder below OUT, latent H, W, context tokens)
LAYOUT = {
    "sd1": (torch.float16, None, "sd1", 8, 8, 7),
    "sd2": (torch.bfloat16, None, "sd2", 12, 10, 5),
    "sdxl": (torch.float16, "fp16", "sdxl/unet", 8, 8, 6),
}
TIMESTEPS = torch.tensor([999.0, 1.5])
TIME_IDS = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [768.0, 1344, 16, 32, 1024, 1024]])


def gen(tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(tag.encode()))


@torch.no_grad()
def randomise(unet: torch.nn.Module, tag: str) -> None:
    for name, p in unet.named_parameters():
        v = torch.randn(p.shape, generator=gen(f"{tag}/{name}"))
        if p.ndim >= 2:
            v = v / (p[0].numel() ** 0.5)  # fan-in of a Linear row or a conv filter
        elif name.endswith("weight"):  # GroupNorm / LayerNorm scale
            v = 1.0 + 0.1 * v
        else:
            v = 0.1 * v
        p.copy_(v)


@torch.no_grad()
def round_to(unet: torch.nn.Module, dtype: torch.dtype) -> None:
    for p in unet.parameters():
        p.copy_(p.to(dtype).float())


def inputs(tag: str, unet: UNet2DConditionModel, H: int, W: int, L: int) -> dict:
    c = unet.config
    g = gen(f"{tag}/inputs")
    d = {
        "x": torch.randn(2, c.in_channels, H, W, generator=g),
        "t": TIMESTEPS.clone(),
        "context": torch.randn(2, L, c.cross_attention_dim, generator=g),
    }
    if c.addition_embed_type == "text_time":
        te = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        d["text_embeds"] = torch.randn(2, te, generator=g)
        d["time_ids"] = TIME_IDS.clone()
    return d


@torch.no_grad()
def reference(unet: UNet2DConditionModel, d: dict) -> torch.Tensor:
    added = None
    if "text_embeds" in d:
        added = {"text_embeds": d["text_embeds"], "time_ids": d["time_ids"]}
    out = unet(d["x"], d["t"], encoder_hidden_states=d["context"], added_cond_kwargs=added).sample
    return out.contiguous()


def make_folder(name: str) -> None:
    dtype, variant, folder, H, W, L = LAYOUT[name]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**CONFIGS[name]).eval()
    randomise(unet, name)
    path = os.path.join(OUT, folder)
    shutil.rmtree(os.path.join(OUT, folder.split("/")[0]), ignore_errors=True)
    unet.to(dtype).save_pretrained(path, variant=variant)
    unet.float()
    round_to(unet, dtype)  # no-op after the round trip; keeps the intent explicit
    d = inputs(name, unet, H, W, L)
    d["out"] = reference(unet, d)
    save_file({k: v.contiguous() for k, v in d.items()}, os.path.join(OUT, f"ref_{name}.safetensors"))
    print(f"{name}: {sum(p.numel() for p in unet.parameters())} parameters, "
          f"out max {d['out'].abs().max():.3f}, std {d['out'].std():.3f}")


def make_bases() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tiny_models as tm

    refs = {}
    for fam, key in (("sd1", "sd1"), ("sd1", "sd1_fp16"), ("sd2", "sd2"), ("sdxl", "sdxl")):
        unet = tm.make_models(fam)["unet"].float()
        base = load_file(os.path.join("tests/fixtures/bases", f"{fam}_base.safetensors"))
        # the stored base holds exactly these weights (spot checks of the LDM names)
        assert torch.equal(base["model.diffusion_model.input_blocks.0.0.weight"], unet.conv_in.weight)
        assert torch.equal(base["model.diffusion_model.out.2.weight"], unet.conv_out.weight)
        assert torch.equal(base["model.diffusion_model.time_embed.0.weight"],
                           unet.time_embedding.linear_1.weight)
        if key.endswith("fp16"):
            round_to(unet, torch.float16)
        d = inputs(f"bases/{key}", unet, 8, 8, 5)
        d["out"] = reference(unet, d)
        for k, v in d.items():
            refs[f"{key}.{k}"] = v.contiguous()
        print(f"bases {key}: out max {d['out'].abs().max():.4f}")
    save_file(refs, os.path.join(OUT, "ref_bases.safetensors"))


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for name in CONFIGS:
        make_folder(name)
    make_bases()
    import diffusers
    import safetensors

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "safetensors": safetensors.__version__}
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"generator": "tools/make_fixtures_unet.py", "versions": versions}, f, indent=1)
        f.write("\n")
    for root, _, files in os.walk(OUT):  # safetensors writes 0600
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


if __name__ == "__main__":
    main()
