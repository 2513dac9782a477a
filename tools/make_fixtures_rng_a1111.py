"""Reference fixture for mood's torch CUDA generator from AUTOMATIC1111's NumPy re-implementation.

Writes tests/fixtures/rng/a1111_philox.safetensors with the outputs of A1111's
modules/rng_philox.py (the "NV" random number source of stable-diffusion-webui: torch.randn(...,
device="cuda") computed on the CPU, checked by its authors against real GPUs). The file is
imported from a checkout given on the command line; none of its code is copied here.

What A1111's Generator computes (read from rng_philox.py), and how it maps onto torch/curand:
  * call k of a Generator(seed) (k = 0, 1, ...) gives element i the Philox4x32-10 block of
    counter (k, 0, i, 0) and key (seed_lo, seed_hi) (seed taken as uint64). That is curand_init(seed,
    subsequence = i, offset = 4k) followed by one curand4, i.e. torch's kernel while every thread
    writes one element (numel <= 256 * grid; then each randn call advances torch's offset by 4).
    Above that size torch's grid-stride loop uses the other words; A1111 does not model it.
  * element i = s * sin(v) from the first two words x, y (curand's _curand_box_muller, first
    output): u = x * 2^-32 + 2^-33, v = y * 2pi 2^-32 + half, s = sqrt(-2 log u). NumPy promotes
    uint32 * float32 arrays to float64, so A1111 evaluates all of it in float64 (x and y exact,
    constants the float32 CURAND_2POW32_INV and CURAND_2POW32_INV_2PI) and rounds once to float32;
    the GPU rounds x and y to float and uses logf/__sincosf. The two therefore differ by about
    s * 2pi * 2^-25 at most (y rounded to 24 bits), about 1e-6.

Cases (tensor "<case>/<k>" = call k of the case's generator, float32, in A1111's shape;
`__metadata__["cases"]` is a JSON list of {"case", "seed" (decimal uint64), "shapes"}):
  * seq_<seed> for seeds 0, 1, 42, 2^32-1, 2^32+7, 2^64-1: calls of shapes [1], [3], [16], [1000],
    [3, 4] in a row on one generator (offsets 0..4);
  * latent_42: two SD1 latents [4, 64, 64] in a row (A1111 draws each image's noise this way).
`__metadata__` also records the A1111 commit, the sha256 of rng_philox.py (LF line ends) and the
NumPy version.

How to run (from the repository root):
    tools/.venv/bin/python tools/make_fixtures_rng_a1111.py \
        --a1111 /path/to/stable-diffusion-webui/modules/rng_philox.py [--commit SHA]
--commit is read from git when the file is in an unmodified checkout. Deterministic (byte for
byte: the header is written with sorted keys); made with rng_philox.py of A1111 commit
ef1698fd6dbd6387341a1eeeded068ff1476ee50, NumPy 2.4.6.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess

import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "rng", "a1111_philox.safetensors")

SEEDS = [0, 1, 42, 2**32 - 1, 2**32 + 7, 2**64 - 1]
SEQ_SHAPES = [[1], [3], [16], [1000], [3, 4]]

# The "Expected output" in rng_philox.py's docstring for Generator(seed=0).randn(shape=(3, 4)), 8
# digits. The code itself differs from it by up to 3e-7 (these look like a GPU's logf/__sincosf
# values, not the code's float64 ones), so it only shows that the right file was loaded.
DOC_SEED0_3x4 = [-0.92466259, -0.42534415, -2.6438457, 0.14518388, -0.12086647, -0.57972564,
                 -0.62285122, -0.32838709, -1.07454231, -0.36314407, -1.67105067, 2.26550497]


def load_a1111(path: str):
    spec = importlib.util.spec_from_file_location("a1111_rng_philox", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot import")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def git_commit(path: str) -> str | None:
    """HEAD of the checkout holding path, if path is tracked and unmodified there."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        head = subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        clean = subprocess.run(["git", "-C", d, "diff", "--quiet", "HEAD", "--",
                                os.path.abspath(path)]).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head if clean else None


def save_sorted(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str]) -> None:
    """safetensors.numpy.save_file, but byte-for-byte reproducible: the library writes
    __metadata__ in hash-map order, which changes from run to run."""
    header: dict = {"__metadata__": metadata}
    blobs, pos = [], 0
    for name in sorted(tensors):
        b = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    back = load_file(path)
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a1111", required=True, help="stable-diffusion-webui/modules/rng_philox.py")
    ap.add_argument("--commit", help="A1111 commit the file comes from (default: from git)")
    args = ap.parse_args()

    commit = args.commit or git_commit(args.a1111)
    if not commit:
        raise SystemExit("give --commit: the file is not in an unmodified git checkout")
    with open(args.a1111, "rb") as f:
        sha = hashlib.sha256(f.read().replace(b"\r\n", b"\n")).hexdigest()
    rng = load_a1111(args.a1111)

    # The right file: it reproduces its own documented example.
    doc = rng.Generator(seed=0).randn(shape=(3, 4)).reshape(-1)
    if not np.allclose(doc, DOC_SEED0_3x4, rtol=0, atol=1e-6):
        raise SystemExit(f"{args.a1111}: Generator(0).randn((3, 4)) is not its docstring's")

    cases = [{"case": f"seq_{s}", "seed": s, "shapes": SEQ_SHAPES} for s in SEEDS]
    cases.append({"case": "latent_42", "seed": 42, "shapes": [[4, 64, 64], [4, 64, 64]]})
    tensors = {}
    for c in cases:
        g = rng.Generator(seed=c["seed"])
        for k, shape in enumerate(c["shapes"]):
            t = g.randn(shape=tuple(shape))
            assert t.dtype == np.float32 and list(t.shape) == shape
            tensors[f"{c['case']}/{k}"] = np.ascontiguousarray(t)
        c["seed"] = str(c["seed"])
    save_sorted(tensors, OUT, metadata={
        "cases": json.dumps(cases),
        "a1111_commit": commit,
        "rng_philox_sha256": sha,
        "made_by": f"AUTOMATIC1111 stable-diffusion-webui modules/rng_philox.py, numpy "
                   f"{np.__version__}"})
    os.chmod(OUT, 0o644)
    print(OUT, os.path.getsize(OUT))


if __name__ == "__main__":
    main()
