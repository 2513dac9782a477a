"""Reference gradients for mood's UNet backward pass (tests/fixtures/unet_backward/), checked by
tests/unit/test_unet_backward.c.

The three tiny diffusers UNets of tests/fixtures/unet/ (tools/make_fixtures_unet.py: SD1-like with
1x1 Conv2d proj_in/out, SD2-like with Linear projections and an odd latent size 12 x 10 whose
upsamplers resize 3 -> 5, SDXL-like with the text_time added embedding) get LoRA side paths written
by hand in torch, as mood applies them (mood_side_path in include/mood/core.h):

  Linear:  y = W x + b + scale * up(down(x))             down (r, in), up (out, r)
  Conv2d:  y = conv(x) + scale * conv1x1(conv(x, down))  down (r, in, k, k) with the layer's stride
                                                          and padding, up (out, r)
  dense:   y = W x + b + scale * dW x  (or conv(x, dW))   (rank 0: up holds dW, down is absent)

on EVERY Linear and Conv2d of the UNet (attention to_q/k/v/out.0 of attn1 and attn2, ff.net.0.proj
and ff.net.2, proj_in/proj_out, resnet conv1/conv2/conv_shortcut/time_emb_proj, the down- and
upsamplers, conv_in, conv_out, time_embedding, SDXL's add_embedding), rank 1 or 2 alternating, plus
two dense paths (a cross-attention to_k, a resnet conv) and a second low-rank path on one to_q.
Factors are random (up is not zero, unlike a fresh LoRA) so every gradient is non-trivial.

The loss is sum(out * R) for a fixed random R, so dL/d(out) = R. torch autograd gives the gradient
of every factor and of the context. The reference runs in float64 (weights, factors and inputs are
float32 values), so the comparison measures mood's float32 error alone: softmax and normalisation
gradients cancel enough for torch's own float32 result to be off by about 1e-4 of the largest
value in a few tensors.

ref_<name>.safetensors (all F32):
  x, t, context [, text_embeds, time_ids], R, out (the forward with the side paths),
  path.<i>.down (absent for dense paths), path.<i>.up, grad.<i>.down, grad.<i>.up, dcontext;
  metadata path.<i>.weight (the diffusers weight name), path.<i>.rank, path.<i>.scale, paths (count).

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_unet_backward.py
Made with torch 2.15.0, diffusers 0.42.1, safetensors 0.8.0.
"""

from __future__ import annotations

import json
import os
import zlib

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

SRC = "tests/fixtures/unet"
OUT = "tests/fixtures/unet_backward"
# name: (model folder below SRC, variant)
MODELS = {"sd1": ("sd1", None), "sd2": ("sd2", None), "sdxl": ("sdxl/unet", "fp16")}
DENSE = {  # weights that get a dense path, per model
    "sd1": ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            "up_blocks.0.resnets.1.conv1.weight"],
    "sd2": ["up_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            "down_blocks.1.resnets.0.conv2.weight"],
    "sdxl": ["mid_block.attentions.0.transformer_blocks.1.attn2.to_k.weight",
             "down_blocks.0.resnets.0.conv1.weight"],
}
SECOND = {  # a weight that gets a second low-rank path
    "sd1": "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_q.weight",
    "sd2": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "sdxl": "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight",
}


def gen(tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(tag.encode()))


class Side:
    """One side path on a module (Linear or Conv2d)."""

    def __init__(self, weight: str, module: torch.nn.Module, rank: int, scale: float, tag: str):
        g = gen(tag)
        w = module.weight
        self.weight, self.module, self.rank, self.scale = weight, module, rank, scale
        fan_in = w[0].numel()
        if rank > 0:
            self.down = (torch.randn((rank,) + tuple(w.shape[1:]), generator=g) / fan_in**0.5)
            self.up = torch.randn(w.shape[0], rank, generator=g) / rank**0.5
            self.down = self.down.float().double().requires_grad_(True)  # float32 values
        else:
            self.down = None
            self.up = 0.5 * torch.randn(w.shape, generator=g) / fan_in**0.5
        self.up = self.up.float().double()
        self.up.requires_grad_(True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, torch.nn.Linear):
            if self.rank == 0:
                return self.scale * F.linear(x, self.up)
            return self.scale * F.linear(F.linear(x, self.down), self.up)
        if self.rank == 0:
            return self.scale * F.conv2d(x, self.up, stride=m.stride, padding=m.padding)
        h = F.conv2d(x, self.down, stride=m.stride, padding=m.padding)
        return self.scale * F.conv2d(h, self.up[:, :, None, None])


def attach(unet: UNet2DConditionModel, name: str) -> list[Side]:
    sides: list[Side] = []
    modules = dict(unet.named_modules())
    i = 0
    for mname, m in unet.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        weight = f"{mname}.weight"
        sides.append(Side(weight, m, 1 + i % 2, 0.5 + 0.25 * (i % 3), f"{name}/{weight}"))
        i += 1
        if weight == SECOND[name]:
            sides.append(Side(weight, m, 2, 0.8, f"{name}/{weight}/second"))
    for weight in DENSE[name]:
        m = modules[weight[: -len(".weight")]]
        sides.append(Side(weight, m, 0, 0.7, f"{name}/{weight}/dense"))
    by_module: dict[int, list[Side]] = {}
    for s in sides:
        by_module.setdefault(id(s.module), []).append(s)
    for m in {id(s.module): s.module for s in sides}.values():
        paths = by_module[id(m)]
        m.register_forward_hook(
            lambda mod, args, out, paths=paths: out + sum(p(args[0]) for p in paths))
    return sides


def make(name: str) -> None:
    folder, variant = MODELS[name]
    unet = UNet2DConditionModel.from_pretrained(os.path.join(SRC, folder), variant=variant,
                                                torch_dtype=torch.float32).eval().double()
    for p in unet.parameters():
        p.requires_grad_(False)
    sides = attach(unet, name)
    ref = load_file(os.path.join(SRC, f"ref_{name}.safetensors"))
    d = {k: ref[k] for k in ("x", "t", "context", "text_embeds", "time_ids") if k in ref}
    dd = {k: v.double() for k, v in d.items()}
    ctx = dd["context"].clone().requires_grad_(True)
    added = None
    if "text_embeds" in d:
        added = {"text_embeds": dd["text_embeds"], "time_ids": dd["time_ids"]}
    out = unet(dd["x"], dd["t"], encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    R = torch.randn(out.shape, generator=gen(f"{name}/R"))
    (out * R.double()).sum().backward()
    d["R"], d["out"], d["dcontext"] = R, out.detach(), ctx.grad
    meta = {"paths": str(len(sides))}
    for i, s in enumerate(sides):
        meta[f"path.{i}.weight"] = s.weight
        meta[f"path.{i}.rank"] = str(s.rank)
        meta[f"path.{i}.scale"] = repr(s.scale)
        d[f"path.{i}.up"], d[f"grad.{i}.up"] = s.up.detach(), s.up.grad
        if s.rank > 0:
            d[f"path.{i}.down"], d[f"grad.{i}.down"] = s.down.detach(), s.down.grad
    save_file({k: v.contiguous().float() for k, v in d.items()},
              os.path.join(OUT, f"ref_{name}.safetensors"), metadata=meta)
    gmax = max(float(s.up.grad.abs().max()) for s in sides)
    print(f"{name}: {len(sides)} side paths, out max {out.abs().max():.3f}, "
          f"max |grad up| {gmax:.3f}, max |dcontext| {ctx.grad.abs().max():.3f}")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for name in MODELS:
        make(name)
    import diffusers
    import safetensors

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "safetensors": safetensors.__version__}
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"generator": "tools/make_fixtures_unet_backward.py", "versions": versions}, f,
                  indent=1)
        f.write("\n")
    for root, _, files in os.walk(OUT):  # safetensors writes 0600
        for fname in files:
            os.chmod(os.path.join(root, fname), 0o644)


if __name__ == "__main__":
    main()
