"""Measures mood-tiny and the Twemoji style with the mood command (bench/style_transfer.sh runs it).

1. Recognisable emoji (`quality`): for N training captions (a fixed random sample), `mood gen`
   makes one image per caption; each image's nearest neighbour among the 1,417 Noto training
   images (L2 distance of the 32 x 32 area-downsampled pixels) should be the image of its caption.
   Reported: top-1 and top-5 accuracy, for the trained model and for the untrained one (the
   initialisation tools/mood_tiny/init_model.py writes), where chance is 1/1417 and 5/1417.

2. Style transfer (`style`): a style LoRA trained on the five-image Twemoji board is applied to
   N held-out subjects (not on the board). For subject s with generated image g, the Twemoji
   drawing T(s) and the Noto drawing N(s) show the same subject, so what separates them is the
   drawing style: silhouette size, flat colour fields against gradients, palette. The metric is
   the distance of g to each after a Gaussian blur (sigma 1.5 px) of the 64 x 64 images, which
   keeps exactly those (shape, colour masses, shading) and forgives pixel-level misalignment:
   the fraction of subjects with d(g, T(s)) < d(g, N(s)). The same fraction for the base model
   without the style is the control: Noto-like images must score low, or the metric would not
   measure style. Reference lines, real drawings in place of g (`reference` in the JSON): another
   held-out subject's Twemoji drawing (a perfect Twemoji-style picture of the wrong subject) and
   the pixel average of T(s) and N(s). They show what this metric grants a style alone: the two
   drawings of a subject differ in pose and composition as much as in rendering, so a picture
   with the Twemoji look but not Twemoji's composition of that subject scores near 50%.

Images are made as `mood demo` makes them: 30 steps of mood gen's default sampler (Euler a) at
the guidance scale given (--cfg; the demo's is bench/style_transfer.sh's CFG).

usage: tools/.venv/bin/python tools/mood_tiny/evaluate.py quality|style --mood build/mood
       --model DIR [--init DIR] [--lora FILE] [--n 100] [--seed 0] [--cfg 7] [--work DIR]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys

import numpy as np
from PIL import Image

DATA = os.environ.get("MOOD_DATA_EMOJI",
                      os.path.join(os.path.dirname(__file__), "../../../shared/data/emoji"))
BOARD = {"1f600", "1f431", "1f34e", "1f680", "2615"}


def captions() -> list[tuple[str, str]]:
    rows = []
    with open(os.path.join(DATA, "captions.tsv")) as f:
        next(f)
        for line in f:
            code, caption = line.rstrip("\n").split("\t")[:2]
            rows.append((code, caption))
    return rows


def load(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def small(img: np.ndarray) -> np.ndarray:
    return img.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)).ravel()


def blur(img: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Separable Gaussian blur of an H x W x 3 image, edges extended (white here)."""
    r = int(3 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
    p = sum(k[i] * p[i:i + img.shape[0]] for i in range(2 * r + 1))
    return sum(k[i] * p[:, i:i + img.shape[1]] for i in range(2 * r + 1))


def generate(a, model: str, prompt: str, seed: int, out: str, lora: str | None) -> None:
    cmd = [a.mood, "gen", prompt, "--model", model, "--seed", str(seed), "--steps", "30",
           "--cfg", str(a.cfg), "--size", "64x64", "-o", out]
    if lora:
        cmd += ["--lora", lora]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def nn_accuracy(a, model: str, sample, refs, codes, tag: str) -> dict:
    top1 = top5 = 0
    for i, (code, caption) in enumerate(sample):
        out = os.path.join(a.work, f"{tag}-{code}.png")
        generate(a, model, caption, a.seed + i, out, None)
        d = ((refs - small(load(out))) ** 2).sum(axis=1)
        rank = int((d < d[codes.index(code)]).sum())
        top1 += rank == 0
        top5 += rank < 5
    n = len(sample)
    return {"top1": top1 / n, "top5": top5 / n, "n": n}


def quality(a) -> dict:
    rows = captions()
    codes = [c for c, _ in rows]
    refs = np.stack([small(load(os.path.join(DATA, "noto", f"{c}.png"))) for c in codes])
    sample = random.Random(a.seed).sample(rows, a.n)
    res = {"trained": nn_accuracy(a, a.model, sample, refs, codes, "q")}
    if a.init:
        res["untrained"] = nn_accuracy(a, a.init, sample, refs, codes, "u")
    res["chance_top1"] = 1 / len(rows)
    return res


def closer_to_twemoji(g: np.ndarray, code: str) -> tuple[bool, float]:
    """Whether image g is closer to the Twemoji drawing of `code` than to its Noto drawing (the
    style metric above), and by how much (d(g, Noto) - d(g, Twemoji))."""
    g = blur(g)
    dt = np.sqrt(((g - blur(load(os.path.join(DATA, "twemoji", f"{code}.png"))))**2).sum())
    dn = np.sqrt(((g - blur(load(os.path.join(DATA, "noto", f"{code}.png"))))**2).sum())
    return bool(dt < dn), float(dn - dt)


def ceiling(sample) -> dict:
    """What the metric gives real drawings in place of generated images, as a scale for the
    measured fractions: another subject's Twemoji drawing (a perfect Twemoji-style picture that
    does not show the subject: what a style alone can reach if it cannot know how Twemoji drew
    this subject), and the pixel average of the subject's two drawings (halfway: 50% would mean
    the metric has no bias)."""
    other = mean = 0
    for i, (code, _) in enumerate(sample):
        nxt = sample[(i + 1) % len(sample)][0]
        other += closer_to_twemoji(load(os.path.join(DATA, "twemoji", f"{nxt}.png")), code)[0]
        avg = 0.5 * (load(os.path.join(DATA, "twemoji", f"{code}.png")) +
                     load(os.path.join(DATA, "noto", f"{code}.png")))
        mean += closer_to_twemoji(avg, code)[0]
    return {"other_subject_twemoji": other / len(sample), "average_of_both": mean / len(sample)}


def style(a) -> dict:
    rows = [r for r in captions() if r[0] not in BOARD]
    sample = random.Random(a.seed).sample(rows, a.n)
    res = {"reference": ceiling(sample)}
    for tag, lora in (("base", None), ("styled", a.lora)):
        closer, margins = 0, []
        for i, (code, caption) in enumerate(sample):
            out = os.path.join(a.work, f"{tag}-{code}.png")
            generate(a, a.model, caption, a.seed + i, out, lora)
            is_closer, margin = closer_to_twemoji(load(out), code)
            closer += is_closer
            margins.append(margin)
        res[tag] = {"closer_to_twemoji": closer / len(sample), "n": len(sample),
                    "mean_margin": float(np.mean(margins))}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["quality", "style"])
    ap.add_argument("--mood", default="build/mood")
    ap.add_argument("--model", required=True)
    ap.add_argument("--init")
    ap.add_argument("--lora")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=7.0, help="guidance scale (mood gen's default)")
    ap.add_argument("--work", default="/tmp/mood-eval")
    ap.add_argument("--json")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    if a.what == "style" and not a.lora:
        sys.exit("style needs --lora")
    res = quality(a) if a.what == "quality" else style(a)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
