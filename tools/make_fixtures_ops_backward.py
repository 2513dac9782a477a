"""Reference gradients for mood's CPU backward passes (engine/cpu/ops.h, "backward";
tests/fixtures/ops_backward/).

Small cases with odd sizes: float32 inputs and an upstream gradient `dout` (fixed seeds); the
forward op is run by torch in float64 on those values and autograd gives the gradients, stored
as float32. Each case is a set of tensors named "<case>.<role>"; integer sizes are in
"<case>.dims" (I32).

  conv.safetensors       F.conv2d: cases c0.. with dims [batch, in_c, h, w, out_c, k, stride,
                         pad]: x, w, dout and the gradients dx, dw, db. k 1/3, stride 1/2, pad
                         0/1, more than 512 output positions (several position tiles) and 40 input
                         channels (several channel tiles).
  norm.safetensors       group norm g0.. (dims [B, C, HW, groups], "<case>.eps") and layer norm
                         l0.. (dims [N, C]): x, w, b, mean, rstd (aten.native_group_norm /
                         native_layer_norm in float32, what mood's forward returns), dout, dx, dw,
                         db.
  attention.safetensors  F.scaled_dot_product_attention: a0.. with dims [B, H, Tq, Tk, D, causal],
                         "<case>.scale" (0: 1/sqrt(D)), q, k, v (B x T x H*D), dout, dq, dk, dv;
                         Tq != Tk, causal, more than 128 query rows (several blocks).
  misc.safetensors       linear (x, w, b, dout, dx, dw, db), act (x, dout, silu, gelu, quick_gelu:
                         the input gradients), geglu (x = [a | gate] rows, dout, dx), up (nearest
                         2x: dout, dx), cbias (channel bias: dout, dv), nchw (NCHW -> NHWC: dout,
                         dx) and nhwc (NHWC -> NCHW: dout, dx), cat (dout, da, db), lora (x, down,
                         up, dout, dx, ddown, dup; scale 0.75).

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_ops_backward.py
Made with torch 2.15.0, safetensors 0.8.0 (save_file).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = "tests/fixtures/ops_backward"


def dims(*v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int32)


def save(name: str, t: dict[str, torch.Tensor]) -> None:
    path = f"{OUT}/{name}.safetensors"
    save_file({k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in t.items()}, path)
    os.chmod(path, 0o644)
    print(name, len(t), "tensors", os.path.getsize(path), "bytes")


def grads(fn, inputs: list[torch.Tensor], dout: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of sum(dout * fn(*inputs)) in float64 (the float32 values, widened)."""
    xs = [x.double().requires_grad_(True) for x in inputs]
    y = fn(*xs)
    y.backward(dout.double())
    return [x.grad.float() for x in xs]


def conv() -> None:
    g = torch.Generator().manual_seed(11)
    cases = [  # batch, in_c, h, w, out_c, k, stride, pad
        (2, 3, 7, 9, 5, 3, 1, 1),
        (2, 4, 9, 8, 6, 3, 2, 1),
        (2, 5, 6, 7, 4, 1, 1, 0),
        (1, 3, 8, 7, 4, 3, 1, 0),
        (1, 4, 7, 6, 3, 1, 2, 0),
        (1, 2, 5, 5, 3, 3, 2, 0),
        (1, 4, 24, 25, 3, 3, 1, 1),
        (1, 40, 6, 5, 7, 3, 1, 1),
        (1, 70, 5, 4, 5, 1, 1, 0),
    ]
    t = {}
    for i, (bt, ic, h, w, oc, k, s, p) in enumerate(cases):
        x = torch.randn(bt, ic, h, w, generator=g)
        wt = torch.randn(oc, ic, k, k, generator=g) * 0.3
        b = torch.randn(oc, generator=g)
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        dout = torch.randn(bt, oc, oh, ow, generator=g)
        dx, dw, db = grads(lambda a, c, d: F.conv2d(a, c, d, stride=s, padding=p), [x, wt, b], dout)
        c = f"c{i}"
        t[f"{c}.dims"] = dims(bt, ic, h, w, oc, k, s, p)
        t[f"{c}.x"], t[f"{c}.w"], t[f"{c}.dout"] = x, wt, dout
        t[f"{c}.dx"], t[f"{c}.dw"], t[f"{c}.db"] = dx, dw, db
    save("conv", t)


def norm() -> None:
    g = torch.Generator().manual_seed(12)
    t = {}
    for i, (bt, c, hw, groups, eps, offset) in enumerate(
        [(2, 64, 11, 32, 1e-5, 0.0), (3, 15, 12, 5, 1e-6, 0.0), (2, 6, 9, 3, 1e-5, 5.0)]
    ):
        x = torch.randn(bt, c, hw, generator=g) * 2 + offset
        w = 1 + 0.3 * torch.randn(c, generator=g)
        b = 0.3 * torch.randn(c, generator=g)
        _, mean, rstd = torch.ops.aten.native_group_norm(x, w, b, bt, c, hw, groups, eps)
        dout = torch.randn(bt, c, hw, generator=g)
        dx, dw, db = grads(lambda a, ww, bb: F.group_norm(a, groups, ww, bb, eps), [x, w, b], dout)
        n = f"g{i}"
        t[f"{n}.dims"], t[f"{n}.eps"] = dims(bt, c, hw, groups), torch.tensor([eps])
        t[f"{n}.x"], t[f"{n}.w"], t[f"{n}.b"], t[f"{n}.dout"] = x, w, b, dout
        t[f"{n}.mean"], t[f"{n}.rstd"] = mean.reshape(-1), rstd.reshape(-1)
        t[f"{n}.dx"], t[f"{n}.dw"], t[f"{n}.db"] = dx, dw, db
    for i, (rows, c, eps, offset) in enumerate([(7, 40, 1e-5, 0.0), (5, 70, 1e-6, 3.0)]):
        x = torch.randn(rows, c, generator=g) + offset
        w = 1 + 0.3 * torch.randn(c, generator=g)
        b = 0.3 * torch.randn(c, generator=g)
        _, mean, rstd = torch.ops.aten.native_layer_norm(x, [c], w, b, eps)
        dout = torch.randn(rows, c, generator=g)
        dx, dw, db = grads(lambda a, ww, bb: F.layer_norm(a, [c], ww, bb, eps), [x, w, b], dout)
        n = f"l{i}"
        t[f"{n}.dims"], t[f"{n}.eps"] = dims(rows, c), torch.tensor([eps])
        t[f"{n}.x"], t[f"{n}.w"], t[f"{n}.b"], t[f"{n}.dout"] = x, w, b, dout
        t[f"{n}.mean"], t[f"{n}.rstd"] = mean.reshape(-1), rstd.reshape(-1)
        t[f"{n}.dx"], t[f"{n}.dw"], t[f"{n}.db"] = dx, dw, db
    save("norm", t)


def attention() -> None:
    g = torch.Generator().manual_seed(13)
    t = {}
    cases = [  # B, H, Tq, Tk, D, causal, scale (0: 1/sqrt(D))
        (2, 3, 5, 7, 8, 0, 0.0),
        (1, 2, 9, 9, 6, 1, 0.0),
        (2, 1, 130, 11, 4, 0, 0.3),
        (1, 1, 133, 133, 4, 1, 0.0),
        (1, 2, 3, 77, 5, 0, 0.0),
    ]
    for i, (bt, h, tq, tk, d, causal, scale) in enumerate(cases):
        q = torch.randn(bt, tq, h * d, generator=g)
        k = torch.randn(bt, tk, h * d, generator=g)
        v = torch.randn(bt, tk, h * d, generator=g)
        dout = torch.randn(bt, tq, h * d, generator=g)

        def sdpa(qq: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
            def heads(x: torch.Tensor, n: int) -> torch.Tensor:
                return x.reshape(bt, n, h, d).transpose(1, 2)

            y = F.scaled_dot_product_attention(heads(qq, tq), heads(kk, tk), heads(vv, tk),
                                               is_causal=bool(causal), scale=scale or None)
            return y.transpose(1, 2).reshape(bt, tq, h * d)

        dq, dk, dv = grads(sdpa, [q, k, v], dout)
        n = f"a{i}"
        t[f"{n}.dims"], t[f"{n}.scale"] = dims(bt, h, tq, tk, d, causal), torch.tensor([scale])
        t[f"{n}.q"], t[f"{n}.k"], t[f"{n}.v"], t[f"{n}.dout"] = q, k, v, dout
        t[f"{n}.dq"], t[f"{n}.dk"], t[f"{n}.dv"] = dq, dk, dv
    save("attention", t)


def misc() -> None:
    g = torch.Generator().manual_seed(14)
    t = {}
    x, w = torch.randn(7, 13, generator=g), torch.randn(11, 13, generator=g)
    b = torch.randn(11, generator=g)
    dout = torch.randn(7, 11, generator=g)
    t["linear.x"], t["linear.w"], t["linear.b"], t["linear.dout"] = x, w, b, dout
    t["linear.dx"], t["linear.dw"], t["linear.db"] = grads(F.linear, [x, w, b], dout)

    x = torch.cat([torch.linspace(-20, 20, 81), torch.randn(120, generator=g) * 3])
    dout = torch.randn(x.shape, generator=g)
    t["act.x"], t["act.dout"] = x, dout
    (t["act.silu"],) = grads(F.silu, [x], dout)
    (t["act.gelu"],) = grads(F.gelu, [x], dout)
    (t["act.quick_gelu"],) = grads(lambda a: a * torch.sigmoid(1.702 * a), [x], dout)

    x = torch.randn(5, 18, generator=g) * 2  # rows [a | gate], F = 9 (diffusers GEGLU's chunk)
    dout = torch.randn(5, 9, generator=g)

    def geglu(h: torch.Tensor) -> torch.Tensor:
        a, gate = h.chunk(2, dim=-1)
        return a * F.gelu(gate)

    t["geglu.x"], t["geglu.dout"] = x, dout
    (t["geglu.dx"],) = grads(geglu, [x], dout)

    x = torch.randn(2, 3, 5, 7, generator=g)
    dout = torch.randn(2, 3, 10, 14, generator=g)
    t["up.dout"] = dout
    (t["up.dx"],) = grads(lambda a: F.interpolate(a, scale_factor=2.0, mode="nearest"), [x], dout)

    x, v = torch.randn(2, 5, 3, 7, generator=g), torch.randn(2, 5, generator=g)
    dout = torch.randn(2, 5, 3, 7, generator=g)
    t["cbias.dout"] = dout
    (t["cbias.dv"],) = grads(lambda a: x.double() + a[:, :, None, None], [v], dout)

    dout = torch.randn(2, 3, 7, 5, generator=g)  # (B, H, W, C) = (B x HW x C)
    t["nchw.dout"] = dout
    (t["nchw.dx"],) = grads(lambda a: a.permute(0, 2, 3, 1), [x], dout)
    xh = torch.randn(2, 3, 7, 5, generator=g)  # NHWC in
    dout = torch.randn(2, 5, 3, 7, generator=g)
    t["nhwc.dout"] = dout
    (t["nhwc.dx"],) = grads(lambda a: a.permute(0, 3, 1, 2), [xh], dout)

    a, c = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g)
    dout = torch.randn(2, 5, 5, 4, generator=g)
    t["cat.dout"] = dout
    t["cat.da"], t["cat.db"] = grads(lambda p, q: torch.cat([p, q], dim=1), [a, c], dout)

    x = torch.randn(9, 13, generator=g)
    down, up = torch.randn(4, 13, generator=g), torch.randn(11, 4, generator=g)
    dout = torch.randn(9, 11, generator=g)
    t["lora.x"], t["lora.down"], t["lora.up"], t["lora.dout"] = x, down, up, dout
    t["lora.dx"], t["lora.ddown"], t["lora.dup"] = grads(
        lambda xx, dd, uu: 0.75 * ((xx @ dd.T) @ uu.T), [x, down, up], dout)
    save("misc", t)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    conv()
    norm()
    attention()
    misc()


if __name__ == "__main__":
    main()
