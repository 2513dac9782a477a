"""A tiny pixel-space UNet and torch autograd's full-parameter training step on it, for
bench/unet_fullgrad.sh (mood_unet_forward_train + mood_unet_backward_ex with every weight's
gradient, against the same step in torch).

Models (--config), both diffusers UNet2DConditionModel with layers_per_block 1, DownBlock2D +
DownBlock2D + CrossAttnDownBlock2D (up: CrossAttnUpBlock2D + UpBlock2D + UpBlock2D), so attention
only at the lowest level and in the mid block, 4 heads, 32 norm groups:
  * pixel (default): in/out channels 3, block_out_channels (32, 64, 128), cross_attention_dim
    128: 3.9M parameters (a small pixel-space model at 32 x 32);
  * mood-tiny: tools/mood_tiny/init_model.py's UNet: in/out channels 48 (64 x 64 pixels as 4 x 4
    patches: 16 x 16 inputs), block_out_channels (64, 128, 128), cross_attention_dim 64: 5.6M.
Every parameter requires a gradient; loss sum(out * R).

  make DIR [--config C] [--size S] [--batch B] [--tokens L]
      DIR/unet/: the model in float32 (written once; parameters randomised as in
      tools/make_fixtures_unet_fullgrad.py) and DIR/io_<B>x<S>x<L>.safetensors: x, t, context, R,
      torch's out and the gradient of every parameter (grad.<name>), all F32.
  time DIR [same sizes] [--threads N] [--runs R]
      torch's step (forward with autograd, then backward into every parameter's .grad) on N CPU
      threads: one warm-up, then R runs; prints "torch_ms <median>", "torch_fwd_ms <median of
      the forward alone>", "torch_bwd_ms" and "torch_cpu_ms" (the process's CPU time per step: on
      one thread a figure that other load on the machine hardly changes).

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
    print(f"unet_fullgrad_reference: {e}", file=sys.stderr)
    sys.exit(77)

COMMON = dict(layers_per_block=1,
              down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
              attention_head_dim=4, norm_num_groups=32)
CONFIGS = {
    "pixel": dict(COMMON, sample_size=32, in_channels=3, out_channels=3,
                  block_out_channels=(32, 64, 128), cross_attention_dim=128),
    "mood-tiny": dict(COMMON, sample_size=16, in_channels=48, out_channels=48,
                      block_out_channels=(64, 128, 128), cross_attention_dim=64),
}


def gen(tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(tag.encode()))


@torch.no_grad()
def randomise(unet: torch.nn.Module) -> None:
    for name, p in unet.named_parameters():
        v = torch.randn(p.shape, generator=gen(f"tiny/{name}"))
        if p.ndim >= 2:
            v = v / (p[0].numel() ** 0.5)
        elif name.endswith("weight"):
            v = 1.0 + 0.1 * v
        else:
            v = 0.1 * v
        p.copy_(v)


def io_path(a) -> str:
    return os.path.join(a.dir, f"io_{a.batch}x{a.size}x{a.tokens}.safetensors")


def inputs(a) -> dict:
    c = CONFIGS[a.config]
    g = gen("inputs")
    return {"x": torch.randn(a.batch, c["in_channels"], a.size, a.size, generator=g),
            "t": torch.linspace(999.0, 1.5, a.batch),
            "context": torch.randn(a.batch, a.tokens, c["cross_attention_dim"], generator=g),
            "R": torch.randn(a.batch, c["out_channels"], a.size, a.size, generator=g)}


def load_model(a) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(os.path.join(a.dir, "unet"),
                                                torch_dtype=torch.float32).train(False)


def make(a) -> None:
    d = os.path.join(a.dir, "unet")
    if not os.path.isfile(os.path.join(d, "diffusion_pytorch_model.safetensors")):
        os.makedirs(a.dir, exist_ok=True)
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**CONFIGS[a.config]).eval()
        randomise(unet)
        unet.save_pretrained(d)
    if os.path.isfile(io_path(a)):
        return
    unet = load_model(a)
    d = inputs(a)
    out = unet(d["x"], d["t"], encoder_hidden_states=d["context"]).sample
    (out * d["R"]).sum().backward()
    d["out"] = out.detach()
    for name, p in unet.named_parameters():
        d[f"grad.{name}"] = p.grad
    save_file({k: v.contiguous() for k, v in d.items()}, io_path(a))


def time_step(a) -> None:
    torch.set_num_threads(a.threads)
    unet = load_model(a)
    d = load_file(io_path(a))
    steps, fwds, bwds, cpus = [], [], [], []
    for r in range(a.runs + 1):
        unet.zero_grad(set_to_none=False)
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = unet(d["x"], d["t"], encoder_hidden_states=d["context"]).sample
        t1 = time.perf_counter()
        (out * d["R"]).sum().backward()
        t2 = time.perf_counter()
        if r:
            steps.append((t2 - t0) * 1e3)
            fwds.append((t1 - t0) * 1e3)
            bwds.append((t2 - t1) * 1e3)
            cpus.append((time.process_time() - c0) * 1e3)
    print(f"torch_ms {statistics.median(steps):.1f}")
    print(f"torch_fwd_ms {statistics.median(fwds):.1f}")
    print(f"torch_bwd_ms {statistics.median(bwds):.1f}")
    print(f"torch_cpu_ms {statistics.median(cpus):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=("make", "time"))
    ap.add_argument("dir")
    ap.add_argument("--config", choices=tuple(CONFIGS), default="pixel")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    {"make": make, "time": time_step}[a.cmd](a)


if __name__ == "__main__":
    main()
