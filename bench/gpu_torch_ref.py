"""gpu_torch_ref.py: the torch side of bench/gpu.sh, on the same GPU in the same run.

Reads the result files bench_cuda_ops wrote (RESULT and LORASHAPE lines), times torch on the
same shapes (warm-up, then the median of 5 batches of repeats, host clock around a device sync,
as the C side)
and prints one table row per op: mood ms, torch ms, achieved TFLOP/s of each and their fraction
of the card's bf16 dense peak, and torch / mood.

  python3 bench/gpu_torch_ref.py PEAK_TFLOPS RESULT_FILE...

Ops: F.conv2d (cudnn.benchmark on), F.linear, F.scaled_dot_product_attention on bf16 tensors;
the LoRA merge as W.addmm_(up, down, alpha=scale) per layer in fp32 (no TF32: mood's merge is
fp32) and, for reference, in bf16. The UNet forward (RESULT unet_sd15_<f32|bf16> lines of
bench_cuda_unet, mood's forward replayed from a CUDA graph; unet_sd15_<f32|bf16>_nograph: the
same without graphs, compared with the same torch timing): diffusers' UNet2DConditionModel with runwayml/stable-diffusion-v1-5's config
(random weights: timing only), in that dtype (fp32 without TF32), its default attention
processor (SDPA), under torch.no_grad(), on the same batch, latent size and context length;
its TFLOP/s use mood's count of the products' FLOPs. diffusers comes from PYTHONPATH (gpu.sh
installs the wheel in .whl/); without it the row says so.
"""

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# MOOD_BENCH_DEVICE=cpu checks this script on a machine without a GPU (tiny shapes only)
dev = os.environ.get("MOOD_BENCH_DEVICE", "cuda")
bf = torch.bfloat16


def rand(*shape, dtype=bf):
    # uniform [-1, 1), like the C side: never zeros
    return (torch.rand(*shape, device=dev, dtype=torch.float32) * 2 - 1).to(dtype)


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def clock_ms(fn, reps):
    """Mean ms per call of reps calls: host clock around a device sync, as the C side."""
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / reps


def time_fn(fn):
    """Median over 5 batches of the mean ms per call, each batch about 20 ms."""
    for _ in range(3):
        fn()
    one = clock_ms(fn, 1)
    reps = max(3, min(2000, int(20.0 / one) if one > 0 else 100))
    return statistics.median(clock_ms(fn, reps) for _ in range(5))


def torch_op(kind, spec):
    v = [int(x) for x in spec.split(",")]
    if kind == "conv":
        B, IC, H, W, OC, k, stride, pad = v
        x, w = rand(B, IC, H, W), rand(OC, IC, k, k)
        return time_fn(lambda: F.conv2d(x, w, stride=stride, padding=pad))
    if kind == "linear":
        N, IC, OC = v
        x, w = rand(N, IC), rand(OC, IC)
        return time_fn(lambda: F.linear(x, w))
    if kind in ("attn", "attn_flash"):
        B, H, Tq, Tk, D = v
        # mood's layout (B x T x H*D) seen as (B, H, T, D), as diffusers' attention processor
        q = rand(B, Tq, H * D).view(B, Tq, H, D).transpose(1, 2)
        k = rand(B, Tk, H * D).view(B, Tk, H, D).transpose(1, 2)
        vv = rand(B, Tk, H * D).view(B, Tk, H, D).transpose(1, 2)
        return time_fn(lambda: F.scaled_dot_product_attention(q, k, vv))
    raise ValueError(kind)


# runwayml/stable-diffusion-v1-5's unet/config.json (as tools/unet_sd15_reference.py)
SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False)


def torch_unet(kind, spec):
    """One diffusers UNet forward, SD1.5 config; on the CPU (a check of this script) narrow."""
    from diffusers import UNet2DConditionModel  # noqa: PLC0415 (optional: gpu.sh's wheel)
    from diffusers.utils import logging as dlog  # noqa: PLC0415

    dlog.set_verbosity_error()  # no notes about .to(dtype)

    dtype = torch.float32 if kind.endswith("_f32") else bf
    B, H, W, L = (int(x) for x in spec.split(","))
    cfg = dict(SD15)
    if dev != "cuda":
        cfg["block_out_channels"] = (32, 64, 64, 64)
    with torch.device(dev):
        unet = UNet2DConditionModel(**cfg).to(dtype).eval()
    x = rand(B, 4, H, W, dtype=dtype)
    t = torch.full((B,), 500.0, device=dev)
    ctx = rand(B, L, 768, dtype=dtype)
    with torch.no_grad():
        ms = time_fn(lambda: unet(x, t, ctx).sample)
    del unet
    empty_cache()
    return ms


def empty_cache():
    if dev == "cuda":
        torch.cuda.empty_cache()


def torch_lora(shapes, dtype):
    """Whole-UNet merge: W += scale * up @ down for every layer; median of 5 after a warm-up."""
    layers = []
    for rows, cols, count, rank in shapes:
        for _ in range(count):
            layers.append((rand(rows, cols, dtype=dtype), rand(rows, rank, dtype=dtype),
                           rand(rank, cols, dtype=dtype)))

    def merge():
        for w, up, down in layers:
            w.addmm_(up, down, alpha=0.5)

    merge()
    ts = [clock_ms(merge, 1) for _ in range(5)]
    del layers
    empty_cache()
    return statistics.median(ts)


def main():
    peak = float(sys.argv[1])
    rows, shapes = [], []
    for path in sys.argv[2:]:
        for line in open(path):
            f = line.rstrip("\n").split("\t")
            if f[0] == "RESULT":
                rows.append(f[1:])
            elif f[0] == "LORASHAPE":
                shapes.append(tuple(int(x) for x in f[1:5]))
    name = torch.cuda.get_device_name() if dev == "cuda" else dev
    print(f"torch {torch.__version__}, {name}, bf16 peak {peak:.1f} TFLOP/s")
    table = []
    torch_ms = {}  # (kind, spec): diffusers timed once for a row and its _nograph twin
    for kind, spec, ms, flop in rows:
        flop = float(flop) if ms != "ERROR" else 0.0
        if kind == "lora_merge":
            t32 = torch_lora(shapes, torch.float32)
            t16 = torch_lora(shapes, bf)
            table.append((kind + " fp32", spec, ms, t32, flop))
            table.append(("lora_merge torch-bf16", spec, "-", t16, flop))
            continue
        # unet_sd15_<dtype>_nograph: mood's forward without CUDA graphs, the same torch run
        base = kind[: -len("_nograph")] if kind.endswith("_nograph") else kind
        try:
            if (base, spec) in torch_ms:
                t = torch_ms[(base, spec)]
            else:
                t = torch_unet(base, spec) if base.startswith("unet_") else torch_op(base, spec)
        except Exception as exc:  # a shape torch refuses, no diffusers: report, go on
            print(f"torch {kind} {spec}: {exc}")
            t = float("nan")
        torch_ms[(base, spec)] = t
        table.append((kind, spec, ms, t, flop))
        empty_cache()
    print()
    print(f"{'op':22} {'sizes':24} {'mood ms':>9} {'TF/s':>7} {'%peak':>6} "
          f"{'torch ms':>9} {'TF/s':>7} {'%peak':>6} {'torch/mood':>10}")
    lora_notes = []
    for kind, spec, ms, t, flop in table:
        tt = flop / (t * 1e-3) / 1e12 if t == t and t > 0 else float("nan")
        if kind.startswith("lora_merge"):
            # memory-bound: every weight read and written once (fp32: 8 bytes, bf16: 4 each)
            nbytes = int(spec.split(",")[1]) * (4 if "bf16" in kind else 8)
            side = [("torch", t)] + ([("mood", float(ms))] if ms not in ("-", "ERROR") else [])
            lora_notes += [f"{kind} {who}: {nbytes / (x * 1e-3) / 1e9:.0f} GB/s"
                           for who, x in side]
        if ms in ("-", "ERROR"):
            print(f"{kind:22} {spec:24} {ms:>9} {'':>7} {'':>6} {t:9.3f} {tt:7.1f} "
                  f"{100 * tt / peak:5.1f}% {'':>10}")
            continue
        m = float(ms)
        mt = flop / (m * 1e-3) / 1e12
        print(f"{kind:22} {spec:24} {m:9.3f} {mt:7.1f} {100 * mt / peak:5.1f}% {t:9.3f} "
              f"{tt:7.1f} {100 * tt / peak:5.1f}% {t / m:10.2f}")
    for n in lora_notes:
        print(n)
    print("(lora_merge: fp32 merge, memory-bound: %peak of the bf16 rate means little; "
          "goal under 100 ms for the whole UNet)")
    if any(r[0].startswith("unet_") for r in table):
        print("(unet_sd15: one SD1.5 UNet forward, sizes batch,H,W,tokens; torch = diffusers "
              "UNet2DConditionModel in the same dtype; TF/s from mood's FLOP count of the "
              "products; f32 without TF32, so %peak of the bf16 rate means little; mood's "
              "forward replayed from a CUDA graph, _nograph: every kernel launched by the host)")


if __name__ == "__main__":
    main()
