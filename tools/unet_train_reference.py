"""A UNet with LoRA side paths and torch autograd's training step on it, for bench/unet_train.sh
(mood_unet_forward_train + mood_unet_backward against the same step in torch).

Side paths as mood applies them (tools/make_fixtures_unet_backward.py has the details) on kohya's
default LoRA targets: every Linear and Conv2d inside a Transformer2DModel (attention to_q, to_k,
to_v, to_out.0 of attn1 and attn2, ff.net.0.proj, ff.net.2, proj_in, proj_out); rank --rank,
scale 1, random factors (up not zero). The base weights are frozen (requires_grad False), so
autograd, like mood, computes only the factors' gradients. Loss: sum(out * R).

  make DIR [--config small|sd15] [--size S] [--batch B] [--tokens L] [--rank R]
      DIR/unet/: the model in float16 (written once; sd15 as tools/unet_sd15_reference.py writes
      it, 1.7 GB; small is SD1.5's structure at widths 64/128/256/256) and
      DIR/io_<B>x<S>x<L>_r<R>.safetensors: x, t, context, R, the factors (path.<i>.down/up,
      metadata path.<i>.weight/rank/scale, paths) and torch's float32 out and gradients
      (grad.<i>.down/up, dcontext).
  time DIR [same sizes] [--threads N] [--runs R]
      torch's step (forward with autograd, then backward) on N CPU threads: one warm-up, then R
      runs; prints "torch_ms <median>" and "torch_fwd_ms <median of the forward alone>".
  memory DIR [same sizes]
      bytes of the tensors autograd saves for the backward pass (distinct storages):
      "torch_saved_mb <MB>".

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
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file
except ImportError as e:  # pragma: no cover
    print(f"unet_train_reference: {e}", file=sys.stderr)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unet_sd15_reference as sd15  # noqa: E402

SMALL = dict(sd15.SD15, block_out_channels=(64, 128, 256, 256))


def gen(tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(tag.encode()))


class Side:
    """A low-rank side path y += scale * up(down(x)) on a Linear or Conv2d module."""

    def __init__(self, weight: str, module: torch.nn.Module, rank: int):
        g = gen(weight)
        w = module.weight
        self.weight, self.module, self.rank, self.scale = weight, module, rank, 1.0
        self.down = (torch.randn((rank,) + tuple(w.shape[1:]), generator=g) /
                     w[0].numel()**0.5).requires_grad_(True)
        self.up = (torch.randn(w.shape[0], rank, generator=g) / rank**0.5).requires_grad_(True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, torch.nn.Linear):
            return self.scale * F.linear(F.linear(x, self.down), self.up)
        return self.scale * F.conv2d(F.conv2d(x, self.down, stride=m.stride, padding=m.padding),
                                     self.up[:, :, None, None])


def attach(unet: UNet2DConditionModel, rank: int) -> list[Side]:
    sides = []
    for name, m in unet.named_modules():
        if ".attentions." in name and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            s = Side(f"{name}.weight", m, rank)
            m.register_forward_hook(lambda mod, args, out, s=s: out + s(args[0]))
            sides.append(s)
    return sides


def io_path(a) -> str:
    return os.path.join(a.dir, f"io_{a.batch}x{a.size}x{a.tokens}_r{a.rank}.safetensors")


def load_model(a) -> tuple[UNet2DConditionModel, list[Side]]:
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.dir, "unet"),
                                                torch_dtype=torch.float32).train(False)
    for p in unet.parameters():
        p.requires_grad_(False)
    return unet, attach(unet, a.rank)


def inputs(a) -> dict:
    g = gen("inputs")
    return {"x": torch.randn(a.batch, 4, a.size, a.size, generator=g),
            "t": torch.linspace(999.0, 1.5, a.batch),
            "context": torch.randn(a.batch, a.tokens, 768, generator=g)}


def make(a) -> None:
    d = os.path.join(a.dir, "unet")
    if not os.path.isfile(os.path.join(d, "diffusion_pytorch_model.safetensors")):
        os.makedirs(a.dir, exist_ok=True)
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**(SMALL if a.config == "small" else sd15.SD15)).eval()
        sd15.randomise(unet)
        unet.to(torch.float16).save_pretrained(d)  # as unet_sd15_reference.py writes it
    if os.path.isfile(io_path(a)):
        return
    unet, sides = load_model(a)
    d = inputs(a)
    ctx = d["context"].clone().requires_grad_(True)
    out = unet(d["x"], d["t"], encoder_hidden_states=ctx).sample
    R = torch.randn(out.shape, generator=gen("R"))
    (out * R).sum().backward()
    d.update(R=R, out=out.detach(), dcontext=ctx.grad)
    meta = {"paths": str(len(sides))}
    for i, s in enumerate(sides):
        meta.update({f"path.{i}.weight": s.weight, f"path.{i}.rank": str(s.rank),
                     f"path.{i}.scale": repr(s.scale)})
        d.update({f"path.{i}.down": s.down.detach(), f"path.{i}.up": s.up.detach(),
                  f"grad.{i}.down": s.down.grad, f"grad.{i}.up": s.up.grad})
    save_file({k: v.contiguous() for k, v in d.items()}, io_path(a), metadata=meta)


def time_step(a) -> None:
    torch.set_num_threads(a.threads)
    unet, sides = load_model(a)
    d = load_file(io_path(a))
    for i, s in enumerate(sides):  # the stored factors
        s.down = d[f"path.{i}.down"].clone().requires_grad_(True)
        s.up = d[f"path.{i}.up"].clone().requires_grad_(True)
    steps, fwds = [], []
    for r in range(a.runs + 1):
        for s in sides:
            s.down.grad = s.up.grad = None
        t0 = time.perf_counter()
        out = unet(d["x"], d["t"], encoder_hidden_states=d["context"]).sample
        t1 = time.perf_counter()
        (out * d["R"]).sum().backward()
        t2 = time.perf_counter()
        if r:
            steps.append((t2 - t0) * 1e3)
            fwds.append((t1 - t0) * 1e3)
    print(f"torch_ms {statistics.median(steps):.1f}")
    print(f"torch_fwd_ms {statistics.median(fwds):.1f}")


def memory(a) -> None:
    unet, _ = load_model(a)
    d = inputs(a)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(d["x"], d["t"], encoder_hidden_states=d["context"])
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    total = sum(n for ptr, n in seen.items() if ptr not in params)
    print(f"torch_saved_mb {total / 2**20:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=("make", "time", "memory"))
    ap.add_argument("dir")
    ap.add_argument("--config", choices=("small", "sd15"), default="small")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    {"make": make, "time": time_step, "memory": memory}[a.cmd](a)


if __name__ == "__main__":
    main()
