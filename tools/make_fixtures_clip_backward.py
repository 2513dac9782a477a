"""Reference gradients for mood's CLIP text encoder backward pass (tests/fixtures/clip_backward/),
checked by tests/unit/test_clip_backward.c.

Two tiny random transformers CLIPTextModel (float32 weights, norms and biases made non-trivial):

  * quick_gelu (SD1-like): hidden 32, 4 heads, intermediate 64, 2 layers, 20 positions;
  * gelu (SD2-like): hidden 24, 3 heads, intermediate 48, 3 layers, 20 positions.

Each gets LoRA side paths written by hand, as mood applies them (mood_side_path in
include/mood/core.h; the same function as PEFT's LoRA Linear: base(x) + scaling * B(A(x))):

  y = W x + b + scale * up(down(x))      down (r, in), up (out, r)
  y = W x + b + scale * dW x             dense path (rank 0: up holds dW)

on every self_attn q_proj, k_proj, v_proj, out_proj and mlp fc1, fc2 (rank 1 or 2, scale
varying), plus a dense path on one fc1 and a second low-rank path on one q_proj. Factors are
random (up is not zero, unlike a fresh LoRA) so every gradient is non-trivial.

Cases (the hidden state the pipeline takes: hidden_states[-clip_skip], through final_layer_norm
when final_norm, A1111 numbering):

  * quick_gelu: clip skip 1, final norm (SD1: last_hidden_state);
  * gelu_skip2: clip skip 2, final norm (SD2: the last layer takes no part);
  * gelu_raw: clip skip 2, no final norm (SDXL's hidden_states[-2]).

The loss is sum(hidden * R) for a fixed random R, so dL/d(hidden) = R. torch autograd gives the
gradient of every factor and of every base weight (embeddings, norms, biases included). The
reference runs in float64 (the weights, factors and R are float32 values), so the comparison
measures mood's float32 error alone.

model_<name>.safetensors (F32, transformers names with "text_model."): the encoder.
ref_<case>.safetensors (F32 unless noted):
  ids (I32, 2 x 16: repeated tokens, so token rows gather several positions' gradients), R,
  hidden (the forward with the side paths), path.<i>.down (absent for dense paths), path.<i>.up,
  grad.<i>.down, grad.<i>.up, wgrad.<weight name> for every weight (mood's names, "text_model."
  prefix); metadata model, heads, act, clip_skip, final_norm, paths (count), path.<i>.weight,
  path.<i>.rank, path.<i>.scale, weights (the weight names in named_parameters() order, comma
  separated: mood_clip_weight_name's order).

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_clip_backward.py
Made with torch 2.15.0, transformers 5.24.0, safetensors 0.8.0.
"""

from __future__ import annotations

import json
import os
import zlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

OUT = "tests/fixtures/clip_backward"
T = 16
MODELS = {  # name: (act, hidden, heads, intermediate, layers)
    "quick_gelu": ("quick_gelu", 32, 4, 64, 2),
    "gelu": ("gelu", 24, 3, 48, 3),
}
CASES = {  # case: (model, clip_skip, final_norm)
    "quick_gelu": ("quick_gelu", 1, True),
    "gelu_skip2": ("gelu", 2, True),
    "gelu_raw": ("gelu", 2, False),
}
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
           "mlp.fc1", "mlp.fc2")
DENSE = "text_model.encoder.layers.1.mlp.fc1.weight"
SECOND = "text_model.encoder.layers.0.self_attn.q_proj.weight"


def gen(tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(tag.encode()))


def full_name(name: str) -> str:
    return name if name.startswith("text_model.") else "text_model." + name


def build(name: str) -> CLIPTextModel:
    act, hidden, heads, inter, layers = MODELS[name]
    torch.manual_seed(zlib.crc32(name.encode()))
    cfg = CLIPTextConfig(vocab_size=100, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         max_position_embeddings=20, hidden_act=act, layer_norm_eps=1e-5,
                         eos_token_id=99, bos_token_id=98, pad_token_id=0)
    m = CLIPTextModel(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():  # non-trivial norms and biases, weights of unit-ish scale
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    sd = {full_name(k): v.detach().contiguous() for k, v in m.state_dict().items()
          if not k.endswith("position_ids")}
    save_file(sd, os.path.join(OUT, f"model_{name}.safetensors"))
    return m


def make_ids() -> torch.Tensor:
    g = gen("ids")
    r = torch.randint(1, 12, (2, T), generator=g)  # a small range: tokens repeat
    r[:, 0] = 98
    r[0, 9], r[0, 10:] = 99, 0
    r[1, T - 1] = 99
    return r.to(torch.int32)


class Side:
    """One side path on a Linear."""

    def __init__(self, weight: str, module: torch.nn.Linear, rank: int, scale: float, tag: str):
        g = gen(tag)
        w = module.weight
        self.weight, self.module, self.rank, self.scale = weight, module, rank, scale
        fan_in = w.shape[1]
        if rank > 0:
            self.down = (torch.randn(rank, fan_in, generator=g) / fan_in**0.5)
            self.down = self.down.float().double().requires_grad_(True)
            self.up = torch.randn(w.shape[0], rank, generator=g) / rank**0.5
        else:
            self.down = None
            self.up = 0.5 * torch.randn(w.shape, generator=g) / fan_in**0.5
        self.up = self.up.float().double().requires_grad_(True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank == 0:
            return self.scale * F.linear(x, self.up)
        return self.scale * F.linear(F.linear(x, self.down), self.up)


def attach(m: CLIPTextModel, name: str) -> list[Side]:
    sides: list[Side] = []
    modules = {full_name(k): v for k, v in m.named_modules()}
    i = 0
    for mname, mod in modules.items():
        if not isinstance(mod, torch.nn.Linear) or not mname.endswith(TARGETS):
            continue
        weight = f"{mname}.weight"
        sides.append(Side(weight, mod, 1 + i % 2, 0.5 + 0.25 * (i % 3), f"{name}/{weight}"))
        i += 1
        if weight == SECOND:
            sides.append(Side(weight, mod, 2, 0.8, f"{name}/{weight}/second"))
    dm = modules[DENSE[: -len(".weight")]]
    sides.append(Side(DENSE, dm, 0, 0.7, f"{name}/{DENSE}/dense"))
    by_module: dict[int, list[Side]] = {}
    for s in sides:
        by_module.setdefault(id(s.module), []).append(s)
    for mod in {id(s.module): s.module for s in sides}.values():
        paths = by_module[id(mod)]
        mod.register_forward_hook(
            lambda _m, args, out, paths=paths: out + sum(p(args[0]) for p in paths))
    return sides


def grad_of(p: torch.Tensor) -> torch.Tensor:
    """The gradient, zero for a tensor the hidden state does not depend on (layers after the
    clip skip's, the final norm without final_norm)."""
    return p.grad if p.grad is not None else torch.zeros_like(p)


def make_case(case: str, model: CLIPTextModel, ids: torch.Tensor) -> None:
    mname, clip_skip, final_norm = CASES[case]
    m = model
    for p in m.parameters():
        p.grad = None
    sides = attach(m, case)
    o = m(input_ids=ids.long(), output_hidden_states=True)
    h = o.hidden_states[-clip_skip]
    inner = m.text_model if hasattr(m, "text_model") else m
    if final_norm:
        h = inner.final_layer_norm(h)
    R = torch.randn(h.shape, generator=gen(f"{case}/R"))
    (h * R.double()).sum().backward()
    d = {"ids": ids, "R": R, "hidden": h.detach()}
    _, hidden, heads, _, _ = MODELS[mname]
    meta = {"model": f"model_{mname}.safetensors", "heads": str(heads), "act": MODELS[mname][0],
            "clip_skip": str(clip_skip), "final_norm": str(int(final_norm)),
            "paths": str(len(sides)),
            "weights": ",".join(full_name(k) for k, _ in m.named_parameters())}
    for i, s in enumerate(sides):
        meta[f"path.{i}.weight"] = s.weight
        meta[f"path.{i}.rank"] = str(s.rank)
        meta[f"path.{i}.scale"] = repr(s.scale)
        d[f"path.{i}.up"], d[f"grad.{i}.up"] = s.up.detach(), grad_of(s.up)
        if s.rank > 0:
            d[f"path.{i}.down"], d[f"grad.{i}.down"] = s.down.detach(), grad_of(s.down)
    for k, p in m.named_parameters():
        d["wgrad." + full_name(k)] = grad_of(p)
    save_file({k: v.contiguous() if v.dtype == torch.int32 else v.contiguous().float()
               for k, v in d.items()},
              os.path.join(OUT, f"ref_{case}.safetensors"), metadata=meta)
    gmax = max(float(grad_of(s.up).abs().max()) for s in sides)
    wmax = max(float(p.grad.abs().max()) for p in m.parameters() if p.grad is not None)
    print(f"{case}: {len(sides)} side paths, hidden max {h.abs().max():.3f}, "
          f"max |grad up| {gmax:.3f}, max |weight grad| {wmax:.3f}")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    ids = make_ids()
    models = {name: build(name) for name in MODELS}
    for case, (mname, _, _) in CASES.items():
        # a fresh float64 copy per case (hooks and gradients do not carry over)
        m = CLIPTextModel(models[mname].config).eval()
        m.load_state_dict(models[mname].state_dict())
        m = m.double()
        make_case(case, m, ids)
    import safetensors
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "safetensors": safetensors.__version__}
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"generator": "tools/make_fixtures_clip_backward.py", "versions": versions}, f,
                  indent=1)
        f.write("\n")
    for root, _, files in os.walk(OUT):  # safetensors writes 0600
        for fname in files:
            os.chmod(os.path.join(root, fname), 0o644)


if __name__ == "__main__":
    main()
