"""Reference fixtures for mood's CPU layer functions (engine/cpu/ops.h; tests/fixtures/ops/).

Small float32 cases with odd sizes, computed by torch / diffusers on random inputs (fixed seeds).
Each case is a set of tensors named "<case>.<role>"; integer sizes are in "<case>.dims" (I32).

  conv.safetensors       torch.nn.functional.conv2d: cases c0.. with dims
                         [batch, in_c, h, w, out_c, k, stride, pad], tensors x, w, b (empty when
                         the case has no bias), y. k 1/3, stride 1/2, pad 0/1.
  norm.safetensors       group norm cases g0.. (dims [B, C, HW, groups], eps in "<case>.eps"):
                         x, w, b, y, mean, rstd from torch.ops.aten.native_group_norm (32 groups,
                         odd groups of 3 channels, a large offset); layer norm cases l0.. (dims
                         [N, C]) from aten.native_layer_norm.
  attention.safetensors  torch.nn.functional.scaled_dot_product_attention: cases a0.. with dims
                         [B, H, Tq, Tk, D, causal], "<case>.scale" (0 = default), q, k, v (B x T x
                         H*D) and y; Tq != Tk, causal, head dims 8 and 40, more than 128 queries.
  misc.safetensors       linear (with and without bias), diffusers GEGLU (proj + geglu), silu,
                         gelu, quick_gelu, diffusers get_timestep_embedding (flip/shift/odd dim),
                         nearest 2x upsampling, channel concat, NCHW<->NHWC, channel bias, LoRA
                         side path.

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_ops.py
Made with torch 2.15.0, diffusers 0.42.1, safetensors (save_file).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from diffusers.models.embeddings import get_timestep_embedding
from safetensors.torch import save_file

OUT = "tests/fixtures/ops"


def dims(*v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int32)


def save(name: str, t: dict[str, torch.Tensor]) -> None:
    path = f"{OUT}/{name}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in t.items()}, path)
    os.chmod(path, 0o644)
    print(name, len(t), "tensors", os.path.getsize(path), "bytes")


def conv() -> None:
    g = torch.Generator().manual_seed(1)
    cases = [  # batch, in_c, h, w, out_c, k, stride, pad, bias
        (3, 5, 7, 9, 4, 3, 1, 1, True),
        (3, 5, 7, 9, 6, 3, 2, 1, True),
        (2, 5, 7, 9, 3, 1, 1, 0, True),
        (2, 4, 8, 6, 5, 3, 2, 0, False),
        (1, 6, 7, 5, 4, 1, 2, 0, True),
        (2, 3, 6, 7, 5, 3, 1, 0, True),
        (1, 7, 1, 1, 3, 3, 1, 1, True),
        (2, 4, 5, 4, 3, 1, 1, 0, False),
    ]
    t = {}
    for i, (bt, ic, h, w, oc, k, s, p, has_b) in enumerate(cases):
        x = torch.randn(bt, ic, h, w, generator=g)
        wt = torch.randn(oc, ic, k, k, generator=g) * 0.3
        b = torch.randn(oc, generator=g) if has_b else None
        y = F.conv2d(x, wt, b, stride=s, padding=p)
        c = f"c{i}"
        t[f"{c}.dims"] = dims(bt, ic, h, w, oc, k, s, p)
        t[f"{c}.x"], t[f"{c}.w"], t[f"{c}.y"] = x, wt, y
        t[f"{c}.b"] = b if has_b else torch.zeros(0)
    save("conv", t)


def norm() -> None:
    g = torch.Generator().manual_seed(2)
    t = {}
    for i, (bt, c, hw, groups, eps, offset) in enumerate(
        [(2, 64, 35, 32, 1e-5, 0.0), (3, 15, 12, 5, 1e-6, 0.0), (2, 6, 9, 3, 1e-5, 5.0)]
    ):
        x = torch.randn(bt, c, hw, generator=g) * 2 + offset
        w = 1 + 0.3 * torch.randn(c, generator=g)
        b = 0.3 * torch.randn(c, generator=g)
        y, mean, rstd = torch.ops.aten.native_group_norm(x, w, b, bt, c, hw, groups, eps)
        n = f"g{i}"
        t[f"{n}.dims"], t[f"{n}.eps"] = dims(bt, c, hw, groups), torch.tensor([eps])
        t[f"{n}.x"], t[f"{n}.w"], t[f"{n}.b"], t[f"{n}.y"] = x, w, b, y
        t[f"{n}.mean"], t[f"{n}.rstd"] = mean.reshape(-1), rstd.reshape(-1)
    for i, (rows, c, eps, offset) in enumerate([(7, 40, 1e-5, 0.0), (5, 33, 1e-6, 3.0)]):
        x = torch.randn(rows, c, generator=g) + offset
        w = 1 + 0.3 * torch.randn(c, generator=g)
        b = 0.3 * torch.randn(c, generator=g)
        y, mean, rstd = torch.ops.aten.native_layer_norm(x, [c], w, b, eps)
        n = f"l{i}"
        t[f"{n}.dims"], t[f"{n}.eps"] = dims(rows, c), torch.tensor([eps])
        t[f"{n}.x"], t[f"{n}.w"], t[f"{n}.b"], t[f"{n}.y"] = x, w, b, y
        t[f"{n}.mean"], t[f"{n}.rstd"] = mean.reshape(-1), rstd.reshape(-1)
    save("norm", t)


def attention() -> None:
    g = torch.Generator().manual_seed(3)
    t = {}
    cases = [  # B, H, Tq, Tk, D, causal, scale (0: 1/sqrt(D))
        (2, 3, 5, 7, 8, 0, 0.0),
        (1, 2, 9, 9, 40, 1, 0.0),
        (2, 1, 130, 17, 8, 0, 0.3),
        (1, 2, 150, 150, 8, 1, 0.0),
        (1, 2, 3, 77, 40, 0, 0.0),
    ]
    for i, (bt, h, tq, tk, d, causal, scale) in enumerate(cases):
        q = torch.randn(bt, tq, h * d, generator=g)
        k = torch.randn(bt, tk, h * d, generator=g)
        v = torch.randn(bt, tk, h * d, generator=g)

        def heads(x: torch.Tensor, n: int) -> torch.Tensor:
            return x.reshape(bt, n, h, d).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(q, tq), heads(k, tk), heads(v, tk),
                                           is_causal=bool(causal), scale=scale or None)
        n = f"a{i}"
        t[f"{n}.dims"], t[f"{n}.scale"] = dims(bt, h, tq, tk, d, causal), torch.tensor([scale])
        t[f"{n}.q"], t[f"{n}.k"], t[f"{n}.v"] = q, k, v
        t[f"{n}.y"] = y.transpose(1, 2).reshape(bt, tq, h * d)
    save("attention", t)


def misc() -> None:
    g = torch.Generator().manual_seed(4)
    t = {}
    x = torch.randn(7, 13, generator=g)
    w = torch.randn(11, 13, generator=g)
    b = torch.randn(11, generator=g)
    t["linear.x"], t["linear.w"], t["linear.b"] = x, w, b
    t["linear.y"], t["linear.y_nobias"] = F.linear(x, w, b), F.linear(x, w)

    torch.manual_seed(5)
    geglu = GEGLU(12, 10)  # proj (20 x 12): rows [a | gate]
    x = torch.randn(6, 12, generator=g) * 2
    t["geglu.x"], t["geglu.w"], t["geglu.b"] = x, geglu.proj.weight, geglu.proj.bias
    t["geglu.y"] = geglu(x)

    x = torch.cat([torch.linspace(-20, 20, 401), torch.randn(600, generator=g) * 3])
    t["act.x"], t["act.silu"], t["act.gelu"] = x, F.silu(x), F.gelu(x)
    t["act.quick_gelu"] = x * torch.sigmoid(1.702 * x)

    ts = torch.tensor([0.0, 1.0, 250.5, 999.0])
    t["temb.t"] = ts
    for i, (dim, flip, shift) in enumerate([(320, True, 0), (320, False, 1), (7, True, 1),
                                            (256, True, 0), (33, False, 0)]):
        n = f"temb{i}"
        t[f"{n}.dims"] = dims(dim, int(flip), shift)
        t[f"{n}.y"] = get_timestep_embedding(ts, dim, flip_sin_to_cos=flip,
                                             downscale_freq_shift=shift)

    x = torch.randn(2, 3, 5, 7, generator=g)
    t["up.x"], t["up.y"] = x, F.interpolate(x, scale_factor=2.0, mode="nearest")
    a, c = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g)
    t["cat.a"], t["cat.b"], t["cat.y"] = a, c, torch.cat([a, c], dim=1)
    x = torch.randn(2, 5, 3, 7, generator=g)
    t["nchw.x"], t["nchw.y"] = x, x.permute(0, 2, 3, 1)  # (B, H, W, C) = (B x HW x C)
    v = torch.randn(2, 5, generator=g)
    t["cbias.v"], t["cbias.y"] = v, x + v[:, :, None, None]

    x = torch.randn(9, 13, generator=g)
    base = torch.randn(9, 11, generator=g)
    down, up = torch.randn(4, 13, generator=g), torch.randn(11, 4, generator=g)
    t["lora.x"], t["lora.base"], t["lora.down"], t["lora.up"] = x, base, down, up
    t["lora.y"] = base + 0.75 * ((x @ down.T) @ up.T)
    save("misc", t)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    conv()
    norm()
    attention()
    misc()


if __name__ == "__main__":
    main()
