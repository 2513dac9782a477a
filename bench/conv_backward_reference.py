"""bench/conv_backward_reference.py: torch's convolution backward at the shapes of
bench/bench_conv_backward.c, for bench/conv_backward.sh.

  python conv_backward_reference.py [RUNS [BATCH]]   (defaults 7, 32)

For each shape, torch.ops.aten.convolution_backward (what autograd runs for F.conv2d) with
output_mask (input) and (weight, bias), each the best of RUNS calls after a warm-up, in process
CPU time, on torch.get_num_threads() threads (the script sets OMP_NUM_THREADS, and this sets
torch's count from it). Prints "conv IC->OC kK sS HxW dx MS dw MS" per shape.
Written for torch 2.15.0.
"""
import os
import sys
import time

import torch

# in_c, h, w, out_c, k, stride, pad: keep in step with bench/bench_conv_backward.c.
SHAPES = [(32, 32, 32, 32, 3, 1, 1), (96, 32, 32, 32, 3, 1, 1), (96, 32, 32, 32, 1, 1, 0),
          (32, 32, 32, 3, 3, 1, 1), (64, 16, 16, 64, 3, 1, 1), (192, 16, 16, 64, 3, 1, 1),
          (48, 16, 16, 64, 3, 1, 1), (64, 16, 16, 64, 3, 2, 1), (128, 8, 8, 128, 3, 1, 1),
          (256, 8, 8, 128, 3, 1, 1), (256, 8, 8, 128, 1, 1, 0), (128, 4, 4, 128, 3, 1, 1)]


def best_ms(fn, runs: int) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        best = min(best, (time.process_time() - t0) * 1e3)
    return best


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    for ic, h, w, oc, k, s, p in SHAPES:
        x, wt = torch.randn(batch, ic, h, w), torch.randn(oc, ic, k, k)
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        g = torch.randn(batch, oc, oh, ow)

        def run(mask):
            return lambda: torch.ops.aten.convolution_backward(
                g, x, wt, [oc], [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)

        tx = best_ms(run([True, False, False]), runs)
        tw = best_ms(run([False, True, True]), runs)
        print(f"conv {ic}->{oc} k{k} s{s} {h}x{w} dx {tx:.3f} dw {tw:.3f}", flush=True)


if __name__ == "__main__":
    main()
