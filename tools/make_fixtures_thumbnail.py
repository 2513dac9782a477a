"""make_fixtures_thumbnail.py: reference mood board thumbnails for tests/unit/test_train_samples.c.

Each board image of tests/fixtures/train/board (written by make_fixtures_train.py) is prepared as
Pillow does it: ImageOps.exif_transpose, alpha composited on white, then resized with BILINEAR
(Pillow's antialiased bilinear, what the board itself uses) so that its longer side is 50 pixels
(rounded; never enlarged). mood_board_thumbnail must give the same pixels up to JPEG's loss; the
references are lossless PNGs.

Run: tools/.venv/bin/python tools/make_fixtures_thumbnail.py
Versions: Pillow 13.0.0 (deterministic: no random numbers).
"""
import json
import os

from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
BOARD = os.path.join(HERE, "..", "tests", "fixtures", "train", "board")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "thumbnail")
MAX_SIDE = 50


def prepare(path):
    img = ImageOps.exif_transpose(Image.open(path))
    if img.mode != "RGBA":
        img = img.convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img).convert("RGB")


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = []
    for name in ("a.png", "e.png"):
        img = prepare(os.path.join(BOARD, name))
        longer = max(img.width, img.height)
        scale = min(1.0, MAX_SIDE / longer)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        if size != img.size:
            img = img.resize(size, Image.BILINEAR)
        ref = os.path.splitext(name)[0] + "_thumb.png"
        img.save(os.path.join(OUT, ref))
        cases.append({"image": name, "max_side": MAX_SIDE, "ref": ref,
                      "width": size[0], "height": size[1]})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"pillow": Image.__version__, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
