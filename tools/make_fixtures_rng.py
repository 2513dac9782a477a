"""Reference fixtures for mood's torch-compatible random numbers (tests/fixtures/rng/).

Writes, with torch itself (never with mood):

  * tests/fixtures/rng/torch_cpu.safetensors: outputs of torch's CPU generator. Each *case* seeds
    one torch.Generator with torch.manual_seed semantics and makes a list of *calls* in sequence
    (state carried over: the cached Box-Muller value of the small-tensor path and the extra 16
    draws of the vectorized path). The tensor of call k of case C is named "C/k"; the
    `__metadata__` entry "cases" is a JSON list describing them:
        {"case": "...", "seed": "<uint64 as decimal>", "kernel": "avx2" | "scalar",
         "calls": [{"op": "randn_f32" | "randn_f64" | "rand_f32" | "rand_f64" | "randint",
                    "shape": [...], "low": int, "high": int}, ...]}
    kernel "avx2" cases run under torch's default CPU capability on an x86-64 machine with AVX2
    (AVX512 machines use the same normal kernel); "scalar" cases are made in a subprocess with
    ATEN_CPU_CAPABILITY=default (torch's portable kernel, glibc's logf/cosf/sinf).
  * tests/fixtures/rng/torch_philox.safetensors: raw 32-bit words of at::philox_engine
    (aten/src/ATen/core/PhiloxRNGEngine.h, the Philox4x32-10 that torch also runs on the CPU), from
    a 10-line C++ program compiled against the installed torch headers (needs g++). Tensor
    "philox/<seed>/<subsequence>/<offset>" (I64 holding uint32 values, 8 words each); torch's
    engine counts the offset in 128-bit blocks: counter = (offset, subsequence) as two uint64.

How to run (from the repository root):
    tools/.venv/bin/python tools/make_fixtures_rng.py
Deterministic; made with torch 2.15.0 (CPU capability AVX512 -> AVX2 normal kernel), safetensors
0.8.0, g++ 12.2.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "rng")

U64 = 1 << 64
SEEDS = [0, 1, 42, 2**32 - 1, 2**63 - 1, -1, 2**32 + 7]
SHAPES = [[1], [7], [15], [16], [17], [31], [1000], [2, 4, 9, 13]]


def run_calls(seed: int, calls: list[dict]) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    out = []
    for c in calls:
        op, shape = c["op"], c["shape"]
        if op == "randn_f32":
            t = torch.randn(shape, generator=g, dtype=torch.float32)
        elif op == "randn_f64":
            t = torch.randn(shape, generator=g, dtype=torch.float64)
        elif op == "rand_f32":
            t = torch.rand(shape, generator=g, dtype=torch.float32)
        elif op == "rand_f64":
            t = torch.rand(shape, generator=g, dtype=torch.float64)
        elif op == "randint":
            t = torch.randint(c["low"], c["high"], shape, generator=g, dtype=torch.int64)
        else:
            raise ValueError(op)
        out.append(t.contiguous())
    return out


def randn(shape: list[int]) -> dict:
    return {"op": "randn_f32", "shape": shape}


def avx2_cases() -> list[dict]:
    cases = []
    for s in SEEDS:
        cases.append({"case": f"shapes_{s % U64}", "seed": s, "calls": [randn(x) for x in SHAPES]})
    # One SD1.x latent: (1, 4, 64, 64), as ComfyUI draws it with a CPU generator.
    cases.append({"case": "latent_42", "seed": 42, "calls": [randn([1, 4, 64, 64])]})
    # State carried over: small (cached normal), vectorized, small again, ...
    seq = [randn([5]), randn([20]), randn([3]), randn([1]), randn([16]), randn([2]), randn([33]),
           randn([1])]
    cases.append({"case": "sequence_0", "seed": 0, "calls": seq})
    cases.append({"case": "sequence_1234", "seed": 1234, "calls": seq})
    f64 = [{"op": "randn_f64", "shape": [n]} for n in (1, 7, 16, 17, 1000)]
    f64 += [randn([3]), {"op": "randn_f64", "shape": [3]}]  # float and double share the cache
    cases.append({"case": "f64_0", "seed": 0, "calls": f64})
    cases.append({"case": "f64_77", "seed": 77, "calls": f64})
    cases.append({"case": "uniform_5", "seed": 5, "calls": [
        {"op": "rand_f32", "shape": [1000]}, {"op": "rand_f64", "shape": [100]},
        {"op": "randint", "shape": [200], "low": 0, "high": 10},
        {"op": "randint", "shape": [50], "low": -5, "high": 2**28},   # 64-bit draws from 2^28
        {"op": "randint", "shape": [50], "low": -3, "high": 2**28 - 3},  # range 2^28
        {"op": "randint", "shape": [50], "low": 0, "high": 2**28 - 1},   # 32-bit draws
        {"op": "randint", "shape": [50], "low": -2**62, "high": 2**62},
        randn([3]), {"op": "rand_f32", "shape": [7]}, randn([18])]})
    for c in cases:
        c["kernel"] = "avx2"
    return cases


def scalar_cases() -> list[dict]:
    cases = []
    for s in (0, 42):
        cases.append({"case": f"scalar_{s}", "seed": s, "kernel": "scalar",
                      "calls": [randn([16]), randn([17]), randn([1000]), randn([5]), randn([40])]})
    return cases


def child(cases_json: str, path: str) -> None:
    """Runs inside the subprocess (maybe with another ATEN_CPU_CAPABILITY)."""
    cases = json.loads(cases_json)
    tensors = {}
    for c in cases:
        for k, t in enumerate(run_calls(c["seed"], c["calls"])):
            tensors[f"{c['case']}/{k}"] = t
    save_file(tensors, path)
    print(torch.backends.cpu.get_cpu_capability())


def make_cpu() -> None:
    tensors: dict[str, torch.Tensor] = {}
    meta = []
    with tempfile.TemporaryDirectory() as tmp:
        for cases, capability in ((avx2_cases(), None), (scalar_cases(), "default")):
            path = os.path.join(tmp, "part.safetensors")
            env = dict(os.environ)
            if capability:
                env["ATEN_CPU_CAPABILITY"] = capability
            else:
                env.pop("ATEN_CPU_CAPABILITY", None)
            res = subprocess.run([sys.executable, __file__, "--child", json.dumps(cases), path],
                                 env=env, check=True, capture_output=True, text=True)
            got = res.stdout.strip()
            want = {"default": ["DEFAULT"], None: ["AVX2", "AVX512"]}[capability]
            if got not in want:
                raise SystemExit(f"torch ran with CPU capability {got}, wanted one of {want}")
            from safetensors.torch import load_file
            tensors.update(load_file(path))
            for c in cases:
                meta.append({**c, "seed": str(c["seed"] % U64)})
    save_file(tensors, os.path.join(OUT, "torch_cpu.safetensors"),
              metadata={"cases": json.dumps(meta),
                        "made_by": f"torch {torch.__version__} on {platform.machine()}"})


PHILOX_CPP = r"""
#include <ATen/core/PhiloxRNGEngine.h>
#include <cstdio>
#include <cstdlib>
int main(int argc, char **argv) {
  at::philox_engine e(strtoull(argv[1], 0, 10), strtoull(argv[2], 0, 10), strtoull(argv[3], 0, 10));
  for (int i = 0; i < 8; i++) printf("%u ", e());
  return 0;
}
"""

PHILOX_CASES = [(0, 0, 0), (42, 0, 0), (42, 5, 3), (2**64 - 1, 2**40 + 3, 2**33 + 1),
                (123456789, 16383, 0), (67280421310721, 1, 2**32 - 1)]


def make_philox() -> None:
    cxx = shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise SystemExit("needs g++ to compile against torch's PhiloxRNGEngine.h")
    inc = os.path.join(os.path.dirname(torch.__file__), "include")
    tensors = {}
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "philox.cpp"), os.path.join(tmp, "philox")
        with open(src, "w") as f:
            f.write(PHILOX_CPP)
        subprocess.run([cxx, "-std=c++17", "-O1", "-I", inc, src, "-o", exe], check=True)
        for seed, sub, off in PHILOX_CASES:
            out = subprocess.run([exe, str(seed), str(sub), str(off)], check=True,
                                 capture_output=True, text=True).stdout.split()
            tensors[f"philox/{seed}/{sub}/{off}"] = torch.tensor([int(w) for w in out],
                                                                dtype=torch.int64)
    save_file(tensors, os.path.join(OUT, "torch_philox.safetensors"),
              metadata={"made_by": f"at::philox_engine from torch {torch.__version__} headers"})


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    os.makedirs(OUT, exist_ok=True)
    make_cpu()
    make_philox()
    for name in sorted(os.listdir(OUT)):
        os.chmod(os.path.join(OUT, name), 0o644)
        print(name, os.path.getsize(os.path.join(OUT, name)))


if __name__ == "__main__":
    main()
