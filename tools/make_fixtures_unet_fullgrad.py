"""Reference gradients of EVERY UNet parameter for mood's full-parameter backward pass
(tests/fixtures/unet_fullgrad/), checked by tests/unit/test_unet_fullgrad.c
(mood_unet_backward_ex in include/mood/unet.h).

Two tiny random diffusers UNet2DConditionModel with the real block structure but few channels,
saved with save_pretrained as diffusers folders (float16 weights, which the reference then uses,
so it sees exactly what mood reads):

  * sd1/  SD1-like: block_out_channels (8, 16), CrossAttnDownBlock2D + DownBlock2D (up: UpBlock2D +
          CrossAttnUpBlock2D), the cross-attention mid block, layers_per_block 1, attention_head_dim
          2 (= 2 heads), 1x1 Conv2d proj_in/proj_out, cross_attention_dim 12, 4 norm groups.
          Inputs 2 x 4 x 8 x 8, 5 context tokens.
  * xl/   SDXL-like pixel-space model: in/out channels 3, three levels (4, 8, 12) with attention
          at the two lower ones (DownBlock2D + 2 x CrossAttnDownBlock2D), heads (1, 2, 4) (head
          widths 4 and 3 where there is attention), transformer_layers_per_block (1, 1, 2) (mid
          block 2), Linear proj_in/proj_out, cross_attention_dim 8, addition_embed_type
          "text_time" (addition_time_embed_dim 4, 8 text_embeds), the other timestep embedding
          (flip_sin_to_cos false, freq_shift 1), 2 norm groups (with one channel per group a
          resnet's conv1 bias would get no gradient), norm_eps 1e-6 and mid_block_scale_factor
          1.5. resnet_out_scale_factor stays 1: diffusers 0.42.1 passes it to none of these four
          block types, while mood's forward applies it to them. Inputs 2 x 3 x 10 x 6, an odd
          size (10 x 6 -> 5 x 3 -> 3 x 2, so the first upsampler resizes 3 x 2 -> 5 x 3), 4
          context tokens.

Every parameter is randomised (seed crc32("<name>/<parameter>")): Linear/Conv weights
randn / sqrt(fan_in), norm weights 1 + 0.1 randn, biases 0.1 randn, so no gradient is trivially
zero. The loss is sum(out * R) for a fixed random R, so dL/d(out) = R; torch autograd in float64
gives the gradient of every parameter and of the context.

ref_<name>.safetensors (all F32): x, t, context [, text_embeds, time_ids], R, out, dcontext and
grad.<parameter name> for every parameter of the model (diffusers state-dict names); metadata
"params": their count.

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_unet_fullgrad.py
Made with torch 2.15.0, diffusers 0.42.1, safetensors 0.8.0.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

OUT = "tests/fixtures/unet_fullgrad"

CONFIGS = {
    "sd1": dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4),
    "xl": dict(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4, 8, 12),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), cross_attention_dim=8, attention_head_dim=(1, 2, 4),
        norm_num_groups=2, norm_eps=1e-6, use_linear_projection=True, flip_sin_to_cos=False,
        freq_shift=1, mid_block_scale_factor=1.5,
        addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 6 * 4),
}
# name: (latent H, W, context tokens)
SIZES = {"sd1": (8, 8, 5), "xl": (10, 6, 4)}
TIMESTEPS = [999.0, 1.5]
TIME_IDS = [[64.0, 48, 0, 0, 64, 48], [32.0, 40, 4, 2, 64, 48]]


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
        p.copy_(v.half().float())  # the values the float16 file holds


def inputs(tag: str, unet: UNet2DConditionModel, H: int, W: int, L: int) -> dict:
    c = unet.config
    g = gen(f"{tag}/inputs")
    d = {
        "x": torch.randn(2, c.in_channels, H, W, generator=g),
        "t": torch.tensor(TIMESTEPS),
        "context": torch.randn(2, L, c.cross_attention_dim, generator=g),
    }
    if c.addition_embed_type == "text_time":
        te = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        d["text_embeds"] = torch.randn(2, te, generator=g)
        d["time_ids"] = torch.tensor(TIME_IDS)
    return d


def make(name: str) -> None:
    H, W, L = SIZES[name]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**CONFIGS[name]).eval()
    randomise(unet, name)
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    unet.half().save_pretrained(path)
    unet.double()
    d = inputs(name, unet, H, W, L)
    dd = {k: v.double() for k, v in d.items()}
    ctx = dd["context"].clone().requires_grad_(True)
    added = None
    if "text_embeds" in d:
        added = {"text_embeds": dd["text_embeds"], "time_ids": dd["time_ids"]}
    out = unet(dd["x"], dd["t"], encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    R = torch.randn(out.shape, generator=gen(f"{name}/R"))
    (out * R.double()).sum().backward()
    d["R"], d["out"], d["dcontext"] = R, out.detach(), ctx.grad
    n = 0
    for pname, p in unet.named_parameters():
        assert p.grad is not None, pname
        d[f"grad.{pname}"] = p.grad
        n += 1
    save_file({k: v.detach().contiguous().float() for k, v in d.items()},
              os.path.join(OUT, f"ref_{name}.safetensors"), metadata={"params": str(n)})
    total = sum(p.numel() for p in unet.parameters())
    gmax = max(float(p.grad.abs().max()) for p in unet.parameters())
    print(f"{name}: {n} parameters ({total} values), out max {out.abs().max():.3f}, "
          f"max |grad| {gmax:.3f}, max |dcontext| {ctx.grad.abs().max():.3f}")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for name in CONFIGS:
        make(name)
    import diffusers
    import safetensors

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "safetensors": safetensors.__version__}
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"generator": "tools/make_fixtures_unet_fullgrad.py", "versions": versions}, f,
                  indent=1)
        f.write("\n")
    for root, _, files in os.walk(OUT):  # safetensors writes 0600
        for fname in files:
            os.chmod(os.path.join(root, fname), 0o644)


if __name__ == "__main__":
    main()
