"""Measures mood-tiny and the Twemoji style with the mood command (bench/style_transfer.sh runs it).

1. Recognisable emoji (`quality`): for N training captions (a fixed random sample), `mood gen`
   makes one image per caption; each image's nearest neighbour among the 1,417 Noto training
   images (L2 distance of the 32 x 32 area-downsampled pixels) should be the image of its caption.
   Reported: top-1 and top-5 accuracy, for the trained model and for the untrained one (the
   initialisation tools/mood_tiny/init_model.py writes), where chance is 1/1417 and 5/1417.

2. Style transfer (`style`): a style LoRA trained on the five-image Twemoji board is applied to
   N held-out subjects (not on the board). For subject s with generated image g, the Twemoji
   drawing T(s) and the Noto drawing N(s) show the same subject; the fraction of subjects whose g
   is closer to T(s) than to N(s) is reported, by two metrics.

   The style axis (the metric): what tells the two sets apart, subject for subject, is how they
   draw: Twemoji fills the frame with flat colour fields from its own palette and no shading or
   outlines; Noto leaves a margin and shades with gradients. `style_features` measures exactly
   that (silhouette size, palette histogram, saturation and brightness, the shares of flat,
   shaded and edge pixels) and nothing about where things are, and `StyleAxis` finds the
   direction in those features that best separates the sets (Fisher's discriminant), fitted on
   the real drawings of the other 1,312 subjects (neither measured nor on the board). g is closer
   to T(s) when its position on that axis is nearer T(s)'s than N(s)'s.
   Why it is a fair judge: its reference lines put real drawings in place of g. Another measured
   subject's Twemoji drawing (a perfect Twemoji picture of the wrong subject) comes out closer to
   T(s) 84% of the time, and another subject's Noto drawing 18% (N=100, seed 0): the axis sees the
   style whatever the subject, so a style LoRA can reach the goal on it, and the base model's
   Noto look cannot. The control (the base model without the style) must score low too. Its
   blind spot: it was validated on real, sharp drawings, and a smeared picture reads as flat
   (fewer edge cells), so a LoRA that smears scores higher without drawing like Twemoji: look
   at the images as well.

   Blurred pixels (the earlier metric, kept as a second line): the L2 distance after a Gaussian
   blur (sigma 1.5 px) of the 64 x 64 images. Its reference lines show why it is not the measure:
   another subject's real Twemoji drawing scores about 44%, as the two drawings of a subject differ
   in pose and composition as much as in rendering, so it mostly asks whether g copies Twemoji's
   composition of that subject, which five images of other subjects cannot teach.

3. Prompts outside the captions (`novel`): "<colour> <object>" phrases that are no caption, built
   from NOVEL_COLOURS and the NOVEL_OBJECTS words that some caption holds (so the text encoder
   has seen each word, never the pair), N of them at random, each also generated as the bare
   object word with the same seed. Two measures, for the trained model and the untrained one:
   - the colour word is followed: the share of the image's coloured pixels (HSV saturation and
     value >= 0.35) whose hue is the named colour's (NOVEL_HUES) is higher than in the bare
     object's image; reported: the share of prompts where it is, and the mean shares;
   - the object is drawn: a Noto image whose caption holds the object word is among the five
     nearest (the 32 x 32 pixels of `quality`); reported with its chance level (the share of
     captions holding the word, over five draws).

Images are made as `mood demo` makes them: 30 steps of mood gen's default sampler (Euler a) at
the guidance scale given (--cfg; the demo's is bench/style_transfer.sh's CFG).

usage: tools/.venv/bin/python tools/mood_tiny/evaluate.py quality|style|novel --mood build/mood
       --model DIR [--init DIR] [--lora FILE] [--n 100] [--seed 0] [--cfg 7] [--work DIR]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
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


NOVEL_COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]
NOVEL_OBJECTS = ["apple", "cat", "car", "balloon", "fish", "star", "flower", "book", "house",
                 "umbrella", "heart", "bird", "hat", "ball", "cup", "tree"]
# hue ranges in degrees (red wraps around 0)
NOVEL_HUES = {"red": ((0, 15), (340, 360)), "orange": ((15, 40),), "yellow": ((40, 70),),
              "green": ((70, 170),), "blue": ((190, 250),), "purple": ((250, 320),)}


def novel_prompts(n: int, seed: int) -> list[tuple[str, str, str]]:
    """n (prompt, colour, object) with the object a word of some caption and the prompt none."""
    caps = [c for _, c in captions()]
    words = {w.strip(",:") for c in caps for w in c.split()}
    taken = set(caps)
    pool = [(f"{c} {o}", c, o) for c in NOVEL_COLOURS for o in NOVEL_OBJECTS
            if o in words and f"{c} {o}" not in taken]
    return random.Random(seed).sample(pool, min(n, len(pool)))


def colour_share(img: np.ndarray, colour: str) -> float:
    """The share of img's coloured pixels (saturation and value >= 0.35) of the colour's hue."""
    hi, lo = img.max(axis=2), img.min(axis=2)
    sat = (hi - lo) / np.maximum(hi, 1e-6)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    d = np.maximum(hi - lo, 1e-6)
    h = np.where(hi == r, (g - b) / d % 6, np.where(hi == g, (b - r) / d + 2, (r - g) / d + 4))
    h = h * 60.0
    mask = (sat >= 0.35) & (hi >= 0.35)
    if not mask.any():
        return 0.0
    inside = np.zeros_like(mask)
    for a, z in NOVEL_HUES[colour]:
        inside |= (h >= a) & (h < z)
    return float((inside & mask).sum() / mask.sum())


def novel(a) -> dict:
    rows = captions()
    caps = [c for _, c in rows]
    refs = np.stack([small(load(os.path.join(DATA, "noto", f"{c}.png"))) for c, _ in rows])

    def has_word(caption, word):
        return word in {w.strip(",:") for w in caption.split()}

    def object_in_top5(img, obj):
        top = np.argsort(((refs - small(img)) ** 2).sum(axis=1))[:5]
        return any(has_word(caps[j], obj) for j in top)

    models = {"trained": a.model, **({"untrained": a.init} if a.init else {})}
    res = {"prompts": []}
    tally = {m: {"object": 0, "raised": 0, "share": [], "bare_share": []} for m in models}
    chance = []
    prompts = novel_prompts(a.n, a.seed)
    for i, (prompt, colour, obj) in enumerate(prompts):
        k = sum(has_word(c, obj) for c in caps)
        chance.append(1 - math.comb(len(caps) - k, 5) / math.comb(len(caps), 5))
        row = {"prompt": prompt}
        for tag, model in models.items():
            out = os.path.join(a.work, f"novel-{tag}-{i}.png")
            bare = os.path.join(a.work, f"novel-{tag}-bare-{i}.png")
            generate(a, model, prompt, a.seed + i, out, None)
            generate(a, model, obj, a.seed + i, bare, None)
            img = load(out)
            cw, cb = colour_share(img, colour), colour_share(load(bare), colour)
            t = tally[tag]
            drawn = object_in_top5(img, obj)
            t["object"] += drawn
            t["raised"] += cw > cb
            t["share"].append(cw)
            t["bare_share"].append(cb)
            row[tag] = {"object_in_top5": bool(drawn), "colour_share": cw,
                        "bare_colour_share": cb}
        res["prompts"].append(row)
    n = len(prompts)
    res["n"] = n
    res["object_top5_chance"] = float(np.mean(chance))
    for tag, t in tally.items():
        res[tag] = {"object_top5": t["object"] / n, "colour_raised": t["raised"] / n,
                    "colour_share": float(np.mean(t["share"])),
                    "bare_colour_share": float(np.mean(t["bare_share"]))}
    return res


def closer_in_pixels(g: np.ndarray, code: str) -> tuple[bool, float]:
    """Whether image g is closer to the Twemoji drawing of `code` than to its Noto drawing in
    blurred pixels (the second metric above), and by how much (d(g, Noto) - d(g, Twemoji))."""
    g = blur(g)
    dt = np.sqrt(((g - blur(load(os.path.join(DATA, "twemoji", f"{code}.png"))))**2).sum())
    dn = np.sqrt(((g - blur(load(os.path.join(DATA, "noto", f"{code}.png"))))**2).sum())
    return bool(dt < dn), float(dn - dt)


def style_features(img: np.ndarray) -> np.ndarray:
    """The drawing-style statistics of a 64 x 64 image on white, on a 16 x 16 grid of 4 x 4 area
    means: silhouette (foreground share, bounding-box width and height), colour (mean saturation
    and brightness of the foreground, its 4 x 4 x 4 RGB histogram: the palette), rendering (shares
    of foreground cells whose gradient is flat, smooth shading or an edge; near-black share:
    outlines). None depends on where in the picture a part is, so two drawings of different
    subjects in one style come out alike, and two of one subject in different styles apart.
    The grid is mood-tiny's own (its UNet works on 4 x 4 pixel patches): the fine texture it
    leaves inside a patch belongs to neither style, and measured at full size it would count as
    Noto's shading."""
    x = img.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    fg = x.min(axis=2) < 0.9
    if not fg.any():
        return np.zeros(9 + 64)
    hi, lo = x.max(axis=2), x.min(axis=2)
    sat = (hi - lo) / np.maximum(hi, 1e-6)
    ys, xs = np.nonzero(fg)
    grad = (np.abs(np.diff(x, axis=1)).sum(axis=2)[:-1, :] +
            np.abs(np.diff(x, axis=0)).sum(axis=2)[:, :-1])[fg[:-1, :-1]]
    if grad.size == 0:
        grad = np.zeros(1)
    q = np.clip((x[fg] * 4).astype(int), 0, 3)
    palette = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64) / len(q)
    return np.concatenate([[fg.mean(), (np.ptp(xs) + 1) / 16, (np.ptp(ys) + 1) / 16,
                            sat[fg].mean(), hi[fg].mean(), (grad < 0.08).mean(),
                            ((grad >= 0.08) & (grad < 0.4)).mean(), (grad >= 0.4).mean(),
                            (hi[fg] < 0.3).mean()], palette])


class StyleAxis:
    """The direction in style-feature space that best tells Twemoji drawings from Noto drawings
    (Fisher's linear discriminant, features standardised, within-style covariance shrunk by
    SHRINK), fitted on the real drawings of `codes`: subjects neither on the board nor measured."""
    SHRINK = 0.1

    def __init__(self, codes: list[str]):
        t = np.stack([style_features(load(os.path.join(DATA, "twemoji", f"{c}.png")))
                      for c in codes])
        n = np.stack([style_features(load(os.path.join(DATA, "noto", f"{c}.png"))) for c in codes])
        both = np.concatenate([t, n])
        self.mean, self.scale = both.mean(axis=0), both.std(axis=0) + 1e-6
        t, n = (t - self.mean) / self.scale, (n - self.mean) / self.scale
        within = np.cov(np.concatenate([t - t.mean(axis=0), n - n.mean(axis=0)]).T)
        self.w = np.linalg.solve(within + self.SHRINK * np.eye(len(self.mean)),
                                 t.mean(axis=0) - n.mean(axis=0))

    def score(self, img: np.ndarray) -> float:
        return float((style_features(img) - self.mean) / self.scale @ self.w)

    def closer_to_twemoji(self, g: np.ndarray, code: str) -> tuple[bool, float]:
        """Whether g is nearer the subject's Twemoji drawing than its Noto drawing on the axis,
        and by how much in units of the gap between the two (+0.5: at Twemoji's drawing)."""
        st = self.score(load(os.path.join(DATA, "twemoji", f"{code}.png")))
        sn = self.score(load(os.path.join(DATA, "noto", f"{code}.png")))
        sg = self.score(g)
        margin = (abs(sg - sn) - abs(sg - st)) / (2 * abs(st - sn) + 1e-9)
        return abs(sg - st) < abs(sg - sn), float(margin)


def references(sample, axis: StyleAxis) -> dict:
    """What each metric gives real drawings in place of generated images, as its scale: another
    subject's Twemoji drawing (a perfect Twemoji-style picture that does not show the subject;
    a style metric must put it on Twemoji's side) and another subject's Noto drawing (which it must
    not), and, for the pixel metric, the pixel average of the subject's two drawings."""
    ref = {"style_axis": {"other_subject_twemoji": 0, "other_subject_noto": 0},
           "pixels": {"other_subject_twemoji": 0, "other_subject_noto": 0, "average_of_both": 0}}
    for i, (code, _) in enumerate(sample):
        nxt = sample[(i + 1) % len(sample)][0]
        for style in ("twemoji", "noto"):
            other = load(os.path.join(DATA, style, f"{nxt}.png"))
            ref["style_axis"][f"other_subject_{style}"] += axis.closer_to_twemoji(other, code)[0]
            ref["pixels"][f"other_subject_{style}"] += closer_in_pixels(other, code)[0]
        avg = 0.5 * (load(os.path.join(DATA, "twemoji", f"{code}.png")) +
                     load(os.path.join(DATA, "noto", f"{code}.png")))
        ref["pixels"]["average_of_both"] += closer_in_pixels(avg, code)[0]
    return {m: {k: v / len(sample) for k, v in r.items()} for m, r in ref.items()}


def style(a) -> dict:
    rows = [r for r in captions() if r[0] not in BOARD]
    sample = random.Random(a.seed).sample(rows, a.n)
    measured = {code for code, _ in sample}
    axis = StyleAxis([code for code, _ in rows if code not in measured])
    res = {"reference": references(sample, axis)}
    for tag, lora in (("base", None), ("styled", a.lora)):
        closer, margins, closer_px = 0, [], 0
        for i, (code, caption) in enumerate(sample):
            out = os.path.join(a.work, f"{tag}-{code}.png")
            generate(a, a.model, caption, a.seed + i, out, lora)
            img = load(out)
            is_closer, margin = axis.closer_to_twemoji(img, code)
            closer += is_closer
            margins.append(margin)
            closer_px += closer_in_pixels(img, code)[0]
        res[tag] = {"closer_to_twemoji": closer / len(sample), "n": len(sample),
                    "mean_margin": float(np.mean(margins)),
                    "closer_in_pixels": closer_px / len(sample)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["quality", "style", "novel"])
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
    res = {"quality": quality, "style": style, "novel": novel}[a.what](a)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
