"""Reference fixtures for mood's image module (tests/fixtures/image/), and a Pillow check of the
PNGs mood writes.

Fixtures (tools/.venv/bin/python tools/make_fixtures_image.py; deterministic):

  float_edges.json   mood_image_from_float against diffusers: a (1, 3, 24, 24) float32 tensor
                     whose values sit on and around every rounding boundary of the conversion
                     ((x*0.5+0.5)*255 = k + 0.5 exactly, and 1 and 2 ulps either side), the clamp
                     edges, +-inf and NaN, the rest random in [-1.2, 1.2]; converted by
                     diffusers.image_processor.VaeImageProcessor().postprocess(output_type="pil")
                     (torch denormalize, numpy (x*255).round() half to even, uint8). Stores the
                     input bits (little-endian float32, hex) and the image bytes (HWC, hex).
  pil_params.png     8x8 RGB written by Pillow with PngInfo.add_text as A1111 saves: "parameters"
                     (Latin-1 text with "é": tEXt), "workflow" (Japanese: iTXt), "zipped"
                     (add_text(zip=True): zTXt); then a tEXt chunk "late" placed after IDAT by
                     hand (Pillow writes text before IDAT only).
  pil_itxt.png       "parameters" that is not Latin-1 (A1111 with a Japanese prompt: iTXt), and a
                     compressed iTXt "zitxt" (add_itxt(zip=True)).
  pil_dup.png        two "parameters" chunks, one before IDAT and one after: Pillow's Image.text
                     after load() holds the second.
  rgb.png rgba.png gray16.png la.png rgb.bmp rgb.jpg
                     small images for decoding, with Pillow's own decode (converted to RGB or
                     RGBA as mood returns it) in expected.json; gray16.png holds 16-bit values,
                     which stb_image reduces to their high byte (expected.json has that too).
  a1111.jpg a1111.webp
                     images saved as AUTOMATIC1111 saves JPEG and WebP (modules/images.py
                     save_image_with_geninfo: the image saved, then piexif.insert of an EXIF
                     block whose UserComment is piexif.helper.UserComment.dump(text,
                     encoding="unicode")); expected.json has the text A1111's
                     read_info_from_image gets back (piexif.load, UserComment.load).
  expected.json      the texts Pillow reads from each PNG (Image.text after load) and the pixels.

Check mode: tools/.venv/bin/python tools/make_fixtures_image.py --check DIR reads the PNGs that
tests/unit/test_image.c writes when MOOD_PNG_CHECK_DIR=DIR is set (DIR/check.json lists each
file, its texts and its raw pixels) and verifies with Pillow that every text chunk reads back
equal, with the chunk type Pillow's add_text would have chosen (tEXt when Latin-1, else iTXt),
and that the pixels decode equal. Exits 1 on any difference.
"""
import json
import os
import struct
import sys
import zlib

import numpy as np
import torch
from PIL import Image, PngImagePlugin

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "image")

PARAMS = ("a lighthouse at dusk, café lights, <lora:inkwash:0.8>\n"
          "Negative prompt: blurry\n"
          "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, "
          "Size: 8x8, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
          "Lora hashes: \"inkwash: 0123456789ab\", Version: v1.10.1")
PARAMS_JA = ("夜の灯台, <lora:inkwash:0.8>\n"
             "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 2, Size: 8x8, Version: v1.10.1")


def chunk(ctype, data):
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(
        ">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def insert_before_iend(path, extra):
    data = open(path, "rb").read()
    iend = data.rindex(b"IEND") - 4
    with open(path, "wb") as f:
        f.write(data[:iend] + extra + data[iend:])


def pattern(w, h, channels):
    y, x = np.mgrid[0:h, 0:w]
    planes = [x * 30 + 5, y * 30 + 7, (x + y) * 13 + 1, 255 - x * y * 3][:channels]
    return np.stack(planes, axis=-1).astype(np.uint8)


def float_edges():
    from diffusers.image_processor import VaeImageProcessor
    vals = []
    for k in range(255):
        t = np.float32((k + 0.5) / 255.0)
        x = np.float32((t - np.float32(0.5)) * np.float32(2.0))
        vals.append(x)
        up = dn = x
        for _ in range(2):
            up = np.nextafter(up, np.float32(np.inf), dtype=np.float32)
            dn = np.nextafter(dn, np.float32(-np.inf), dtype=np.float32)
            vals += [up, dn]
    vals += [np.float32(v) for v in (-1.0, 1.0, 0.0, -0.0, -1.0000001, 1.0000001, -3.0, 3.0,
                                     np.inf, -np.inf, np.nan, 1e-45, -1e-45)]
    n = 3 * 24 * 24
    rng = np.random.default_rng(7)
    rest = rng.uniform(-1.2, 1.2, n - len(vals)).astype(np.float32)
    flat = np.concatenate([np.array(vals, dtype=np.float32), rest])
    assert flat.size == n
    tensor = torch.from_numpy(flat.reshape(1, 3, 24, 24).copy())
    with np.errstate(invalid="ignore"):
        pil = VaeImageProcessor().postprocess(tensor, output_type="pil")[0]
    out = np.asarray(pil, dtype=np.uint8)
    import diffusers
    return {"generator": "tools/make_fixtures_image.py", "diffusers": diffusers.__version__,
            "torch": torch.__version__, "numpy": np.__version__, "shape": [3, 24, 24],
            "input_f32le": flat.astype("<f4").tobytes().hex(), "expected_hwc": out.tobytes().hex()}


def write_pngs():
    files = {}
    img = Image.fromarray(pattern(8, 8, 3))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", PARAMS)
    info.add_text("workflow", "{\"nodes\": [\"日本\"]}")
    info.add_text("zipped", "compressed " * 20, zip=True)
    path = os.path.join(OUT, "pil_params.png")
    img.save(path, pnginfo=info)
    insert_before_iend(path, chunk(b"tEXt", b"late\0after the image data"))

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", PARAMS_JA)
    info.add_itxt("zitxt", "圧縮された " * 20, zip=True)
    img.save(os.path.join(OUT, "pil_itxt.png"), pnginfo=info)

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "first")
    path = os.path.join(OUT, "pil_dup.png")
    img.save(path, pnginfo=info)
    insert_before_iend(path, chunk(b"tEXt", b"parameters\0second"))

    for name in ("pil_params.png", "pil_itxt.png", "pil_dup.png"):
        im = Image.open(os.path.join(OUT, name))
        im.load()
        files[name] = {"text": dict(im.text)}
    return files


def write_exif_params():
    import piexif
    import piexif.helper
    files = {}
    text = PARAMS_JA
    for name, fmt in (("a1111.jpg", "JPEG"), ("a1111.webp", "WEBP")):
        path = os.path.join(OUT, name)
        Image.fromarray(pattern(8, 8, 3)).save(path, format=fmt, quality=90)
        exif = piexif.dump({"Exif": {piexif.ExifIFD.UserComment:
                                     piexif.helper.UserComment.dump(text, encoding="unicode")}})
        piexif.insert(exif, path)
        back = piexif.load(open(path, "rb").read())["Exif"][piexif.ExifIFD.UserComment]
        files[name] = {"parameters": piexif.helper.UserComment.load(back)}
    return files


def write_decodables():
    files = {}
    Image.fromarray(pattern(5, 3, 3)).save(os.path.join(OUT, "rgb.png"))
    Image.fromarray(pattern(4, 4, 4), "RGBA").save(os.path.join(OUT, "rgba.png"))
    Image.fromarray(pattern(6, 2, 3)).save(os.path.join(OUT, "rgb.bmp"))
    Image.fromarray(pattern(16, 16, 3)).save(os.path.join(OUT, "rgb.jpg"), quality=95,
                                             subsampling=0)
    la = np.stack([pattern(3, 3, 1)[..., 0], np.full((3, 3), 128, np.uint8)], axis=-1)
    Image.fromarray(la, "LA").save(os.path.join(OUT, "la.png"))
    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 123)
    Image.fromarray(g16.astype(np.uint16)).save(os.path.join(OUT, "gray16.png"))
    for name in ("rgb.png", "rgba.png", "rgb.bmp", "rgb.jpg", "la.png"):
        im = Image.open(os.path.join(OUT, name))
        mode = "RGBA" if im.mode in ("RGBA", "LA") else "RGB"
        rgb = im.convert(mode)
        files[name] = {"width": rgb.width, "height": rgb.height, "channels": len(mode),
                       "pixels": np.asarray(rgb).tobytes().hex()}
    hi = np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    files["gray16.png"] = {"width": 4, "height": 3, "channels": 3, "pixels": hi.tobytes().hex()}
    return files


def check(directory):
    spec = json.load(open(os.path.join(directory, "check.json"), encoding="utf-8"))
    bad = 0
    for entry in spec["files"]:
        path = os.path.join(directory, entry["file"])
        im = Image.open(path)
        im.load()
        types = {}
        data = open(path, "rb").read()
        pos = 8
        while pos < len(data):
            n, ctype = struct.unpack(">I4s", data[pos:pos + 8])
            if ctype in (b"tEXt", b"iTXt", b"zTXt"):
                types[data[pos + 8:pos + 8 + n].split(b"\0", 1)[0].decode("latin-1")] = ctype
            pos += 12 + n
        for key, value in entry["texts"].items():
            try:
                value.encode("latin-1")
                want_type = b"tEXt"
            except UnicodeEncodeError:
                want_type = b"iTXt"
            ok = im.text.get(key) == value and types.get(key) == want_type
            bad += not ok
            print("%-4s %s %s (%s)" % ("ok" if ok else "FAIL", entry["file"], key,
                                       types.get(key, b"none").decode()))
        raw = open(os.path.join(directory, entry["raw"]), "rb").read()
        ok = (im.size == (entry["width"], entry["height"]) and
              np.asarray(im.convert(im.mode)).tobytes() == raw)
        bad += not ok
        print("%-4s %s pixels %s %dx%d" % ("ok" if ok else "FAIL", entry["file"], im.mode,
                                            im.width, im.height))
    print("%d failed" % bad)
    return 1 if bad else 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    with open(os.path.join(OUT, "float_edges.json"), "w") as f:
        json.dump(float_edges(), f, indent=1)
        f.write("\n")
    expected = {"generator": "tools/make_fixtures_image.py",
                "pillow": PngImagePlugin.Image.__version__, "files": {}}
    expected["files"].update(write_pngs())
    expected["files"].update(write_decodables())
    expected["files"].update(write_exif_params())
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %s" % OUT)


if __name__ == "__main__":
    main()
