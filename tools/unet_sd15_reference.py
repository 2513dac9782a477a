"""A full-size SD1.5-config UNet with random weights, and diffusers' output / timing for it.

Used by the slow test (tests/unit/test_unet_slow.c) and the benchmark (bench/unet.sh); nothing is
committed: the model is written where the caller says (a temp dir, or a cache dir outside the
repository) and reused when it is already there.

  make DIR [--size S] [--batch B] [--tokens L]
      DIR/unet/: config.json (runwayml/stable-diffusion-v1-5's UNet config) and
      diffusion_pytorch_model.safetensors in float16 (1.7 GB), every parameter randn/sqrt(fan_in)
      (norm weights 1 + 0.1 randn, biases 0.1 randn; seed crc32(parameter name)), written once.
      DIR/io_<B>x<S>.safetensors: x (B x 4 x S x S), t, context (B x L x 768) and out, diffusers'
      float32 forward with the float16-rounded weights (written once).
  time DIR [--size S] [--batch B] [--tokens L] [--threads N] [--runs R]
      diffusers' forward on those inputs with torch on N CPU threads: one warm-up, then R runs;
      prints "torch_ms <median>".

Exit status 77 when torch or diffusers cannot be imported (callers skip).
Written for torch 2.15.0, diffusers 0.42.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import zlib

try:
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file
except ImportError as e:  # pragma: no cover
    print(f"unet_sd15_reference: {e}", file=sys.stderr)
    sys.exit(77)

SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False)


@torch.no_grad()
def randomise(unet: torch.nn.Module) -> None:
    for name, p in unet.named_parameters():
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        v = torch.randn(p.shape, generator=g)
        if p.ndim >= 2:
            v /= p[0].numel() ** 0.5
        elif name.endswith("weight"):
            v = 1.0 + 0.1 * v
        else:
            v *= 0.1
        p.copy_(v)


def model_dir(root: str) -> str:
    return os.path.join(root, "unet")


def io_path(root: str, a) -> str:
    return os.path.join(root, f"io_{a.batch}x{a.size}x{a.tokens}.safetensors")


def load(root: str) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(model_dir(root), torch_dtype=torch.float32).eval()


@torch.no_grad()
def make(a) -> None:
    d = model_dir(a.dir)
    if not os.path.isfile(os.path.join(d, "diffusion_pytorch_model.safetensors")):
        os.makedirs(a.dir, exist_ok=True)
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SD15).eval()
        randomise(unet)
        unet.half().save_pretrained(d)
        del unet
    path = io_path(a.dir, a)
    if os.path.isfile(path):
        return
    unet = load(a.dir)
    g = torch.Generator().manual_seed(1234)
    io = {"x": torch.randn(a.batch, 4, a.size, a.size, generator=g),
          "t": torch.tensor([999.0, 261.5] * a.batch)[: a.batch],
          "context": torch.randn(a.batch, a.tokens, 768, generator=g)}
    io["out"] = unet(io["x"], io["t"], encoder_hidden_states=io["context"]).sample.contiguous()
    save_file(io, path + ".tmp")
    os.replace(path + ".tmp", path)


@torch.no_grad()
def timing(a) -> None:
    torch.set_num_threads(a.threads)
    unet = load(a.dir)
    io = load_file(io_path(a.dir, a))
    run = lambda: unet(io["x"], io["t"], encoder_hidden_states=io["context"]).sample  # noqa: E731
    out = run()  # warm-up
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        out = run()
        times.append((time.perf_counter() - t0) * 1000)
    err = (out - io["out"]).abs().max() / io["out"].abs().max()
    print(f"torch_ms {statistics.median(times):.1f}")
    print(f"torch_rel_err {err:.2e}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["make", "time"])
    p.add_argument("dir")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    make(a) if a.cmd == "make" else timing(a)


if __name__ == "__main__":
    main()
