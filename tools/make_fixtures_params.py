"""Reference fixtures for mood's A1111 parameters parser (tests/fixtures/params/).

Writes one .txt per case (bytes exactly as below: CRLF line ends and trailing spaces included)
and expected.json with what AUTOMATIC1111 1.10's parse_generation_parameters
(modules/infotext_utils.py) makes of each, computed here with Python's own `re` engine and json
module, so the C scanner (styles/params.c) is checked against the real regular-expression
semantics (Unicode \\w and \\s, greedy branches, findall's restarts):

  - the text is stripped and split at "\\n"; the last line holds the details when the pattern
    RE_PARAM below matches it at least 3 times, else it is one more prompt line;
  - every other line is stripped; lines from the one starting with "Negative prompt:" on are the
    negative prompt (that prefix removed and the rest stripped), joined with "\\n" the way A1111
    concatenates (an empty line at the very start is dropped);
  - each (key, value): an empty value is skipped (A1111's v[0] raises and is caught); a value
    starting and ending with '"' is json.loads'ed (kept as is when that fails); a dict keeps a
    repeated key at its first place with its last value;
  - "Prompt" / "Negative prompt" keys replace the prompts (they share A1111's result dict).

One deliberate difference from A1111, the same in mood: a value that starts with '{' or '[' and
whose balanced JSON extent is followed by ',' or the end of the line is taken whole (Civitai's
reading of `Hashes: {...}` and `Civitai resources: [...]`; A1111 cuts it at its first comma).

The texts are written for these tests in the layouts A1111 1.10, Forge (f2.0.1), Civitai's
generator/extension and Fooocus produce, except two quoted verbatim: the example in A1111's
parse_generation_parameters docstring (a1111_docstring) and the details line of ecosystem.md
§4.1 (ecosystem_a1111).

Usage: tools/.venv/bin/python tools/make_fixtures_params.py   (Python 3.11+, standard library
only; deterministic).
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "params")

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')

CASES = {
    # Verbatim: the docstring of A1111's parse_generation_parameters.
    "a1111_docstring": (
        "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, "
        "heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), "
        "detailed, intricate\n"
        "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, "
        "disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn "
        "hands), messy drawing\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, "
        "Model hash: 45dee52b"),
    # The details line verbatim from ecosystem.md §4.1.
    "ecosystem_a1111": (
        "a lighthouse at dusk, <lora:mock_ink_style:0.8>\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        "Lora hashes: \"mock_ink_style: e00e5eb94441\", Version: v1.10.1"),
    # What `mood gen` writes (format(parse(x)) must give it back byte for byte).
    "mood_own": (
        "a lighthouse at dusk <lora:inkwash:0.8> <lora:film-grain:0.3>\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, "
        "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        "Lora hashes: \"inkwash: 0123456789ab, film-grain: 89abcdef0123\", Version: mood 0.1.0"),
    "mood_own_full": (
        "ink wash painting of a heron, (misty lake:1.2)\n"
        "BREAK reeds, <lora:inkwash:0.8>\n"
        "Negative prompt: blurry, (lowres:1.3)\n"
        "photo\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 4294967295, "
        "Size: 768x512, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.45, "
        "Clip skip: 2, Lora hashes: \"inkwash: 0123456789ab\", TI hashes: \"easynegative: "
        "c74b4e810b03\", Hashes: {\"model\": \"31e35c80fc\", \"lora:inkwash\": \"0123456789ab\"}, "
        "Civitai resources: [{\"type\":\"lora\",\"weight\":0.8,\"air\":\"urn:air:sd1:lora:civitai:"
        "900001@900101\"}], Version: mood 0.1.0"),
    # Forge (FLUX): Schedule type, Distilled CFG Scale, Module N after Version, LoRA names with
    # spaces, a blank prompt line.
    "forge_flux": (
        "an old harbour at dawn, \"quiet.\"\n"
        "\n"
        "<lora:ink-wash_flux:0.95>\n"
        "<lora:- Flux1 - film grain V2.0:0.55>\n"
        "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: "
        "3.5, Seed: 3045329758, Size: 832x1216, Model hash: 06f96f89f6, Model: flux_dev, "
        "Lora hashes: \"ink-wash_flux: de92428f6411, - Flux1 - film grain V2.0: 5d8cf3724039\", "
        "Version: f2.0.1v1.10.1-previous-561-g82eb7566, Diffusion in Low Bits: Automatic (fp16 "
        "LoRA), Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp8_e4m3fn"),
    # Civitai's generator / A1111 extension: Hashes JSON, Civitai resources, no Lora hashes.
    "civitai_hashes": (
        "portrait of a knight, ink wash style\n"
        "Negative prompt: lowres\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 42, Size: 768x1024, "
        "Clip skip: 2, Created Date: 2024-09-01T00:00:00.0000000Z, Hashes: {\"vae\": "
        "\"c6a580b13a\", \"model\": \"31e35c80fc\", \"lora:inkwash\": \"0123456789\", "
        "\"embed:easynegative\": \"c74b4e810b\"}, Civitai resources: [{\"type\":\"checkpoint\","
        "\"modelVersionId\":128713},{\"type\":\"lora\",\"weight\":0.8,\"modelVersionId\":900101}]"
        ", Civitai metadata: {}"),
    # A1111 with hires fix, ADetailer (quoted value with a comma), TI hashes, multi-line prompts.
    "hires_adetailer": (
        "masterpiece, best quality,\n"
        "(a cozy cabin:1.2) in snowy woods,\n"
        "golden hour\n"
        "Negative prompt: (worst quality:1.4), cartoon,\n"
        "easynegative\n"
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 777, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: "
        "0.45, Clip skip: 2, ADetailer model: face_yolov8n.pt, ADetailer prompt: \"detailed face, "
        "smile\", ADetailer confidence: 0.3, ADetailer version: 24.1.2, Hires upscale: 2, "
        "Hires steps: 10, Hires upscaler: 4x-UltraSharp, Lora hashes: \"inkwash: 0123456789ab\", "
        "TI hashes: \"easynegative: c74b4e810b03\", Emphasis: Original, Version: v1.10.1"),
    # Non-ASCII prompts, a non-ASCII key (Python's \w matches it) and a quoted non-ASCII value.
    "unicode": (
        "夜の灯台、水墨画, <lora:inkwash:0.8>\n"
        "Negative prompt: ぼやけた, 低品質\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Model: モデル, "
        "画風: 水墨, Style: \"墨, 和紙\", Lora hashes: \"inkwash: 0123456789ab\", "
        "Version: mood 0.1.0"),
    # Not parameters: the last line has one match, so everything is prompt.
    "not_params": (
        "just a prompt: with a colon, and a comma\n"
        "second line: a: b"),
    # Fooocus' own scheme stores JSON: A1111 reads it as a prompt.
    "fooocus_json": (
        "{\"adm_guidance\": \"(1.5, 0.8, 0.3)\", \"base_model\": "
        "\"juggernautXL_v8Rundiffusion.safetensors\", \"full_prompt\": [\"a cat\"], "
        "\"steps\": 30, \"version\": \"Fooocus v2.5.0\"}"),
    # Odd but legal: blank and indented lines, an empty negative line, an empty value, escaped
    # quotes, a quoted branch that fails, a repeated key, values that do not fit their field.
    "edge_cases": (
        "line one  \n"
        "   \n"
        "  indented line\n"
        "Negative prompt:\n"
        "neg line\n"
        "Steps: 20, Sampler: Euler, Empty: , Quote: \"say \\\"hi\\\", ok\", Odd: \"a\" b, "
        "Steps: 30, Back: \"ends with \\\\\", Count: abc, CFG scale: high, Seed: 12, Seed: -1, "
        "Size: 512x512x2, Lone: \"unterminated, Tail: \"x\""),
    "crlf": "a cat\r\nNegative prompt: dog\r\nSteps: 10, Sampler: Euler, Seed: 3\r\n",
    # One line: the details pattern eats the prompt; "Negative prompt" becomes a key that
    # replaces the negative prompt (A1111's result dict holds both).
    "single_line": "a cat, Negative prompt: ugly, Steps: 20, Sampler: Euler a, CFG scale: 7",
    "two_pairs": "a photo\nSteps: 20, Seed: 1",
    "details_only": "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64",
    "empty": "",
    # Keys with '-', '/' and a trailing space before ':'; spaces inside values; a tab.
    "odd_keys": (
        "x\n"
        "Steps : 20, Token-merge/ratio: 0.5,Seed:7,  Model:  my model , RNG: CPU,\tNGMS: 0.2"),
}


def json_extent(s, i):
    """Index after the balanced JSON object/array starting at s[i], or 0."""
    stack, in_string, j = [], False, i
    while j < len(s):
        c = s[j]
        if in_string:
            if c == "\\":
                j += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
        elif c in "}]":
            if not stack or stack.pop() != c:
                return 0
            if not stack:
                return j + 1
        j += 1
    return 0


def find_pairs(line):
    """re.findall(RE_PARAM, line), except for Civitai's whole JSON values."""
    pairs, pos = [], 0
    while True:
        m = RE_PARAM.search(line, pos)
        if not m:
            return pairs
        key, value, end = m.group(1), m.group(2), m.end()
        v0 = m.start(2)
        if line[v0:v0 + 1] in ("{", "["):
            e = json_extent(line, v0)
            if e and (e == len(line) or line[e] == ","):
                value, end = line[v0:e], (e + 1 if e < len(line) else e)
        pairs.append((key, value))
        pos = end if end > m.start() else m.start() + 1


def unquote(text):
    try:
        return json.loads(text)
    except Exception:
        return text


def parse(x):
    lines = x.strip().split("\n")
    last = lines.pop()
    pairs = find_pairs(last)
    has_details = len(pairs) >= 3
    if not has_details:
        lines.append(last)
        pairs = []
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res = {}
    for k, v in pairs:
        if not v:
            continue
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        res[k] = v
    prompt = res.pop("Prompt", prompt)
    negative = res.pop("Negative prompt", negative)
    return {"prompt": prompt, "negative": negative, "has_details": has_details,
            "pairs": [[k, v] for k, v in res.items()]}


# Random texts over the characters that steer the pattern (key characters, separators, quotes,
# escapes, brackets, Unicode letters and white space, the negative-prompt line and keys with
# fields of their own), for a differential check of the scanner.
ALPHABET = ["a", "b", "S", "7", "_", " ", " ", ":", ":", ",", ",", '"', '"', "\\", "-", "/",
            "{", "}", "[", "]", "\t", "\n", "é", "日", "\u3000", "\x1c", ".", "n",
            "\nNegative prompt:", "Prompt: ", "Seed: ", "Size: 8x8"]


def random_texts(count, seed=20240901):
    import random
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        n = rng.randrange(0, 48)
        text = "".join(rng.choice(ALPHABET) for _ in range(n))
        if rng.random() < 0.5:  # most real texts end in a details line: make some likely
            text += "\nab: 1, cd: " + rng.choice(['"x, y"', "{\"k\": [1, 2]}", "", '"']) + \
                ", ef: " + "".join(rng.choice(ALPHABET[:20]) for _ in range(rng.randrange(8)))
        texts.append(text)
    return texts


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {"generator": "tools/make_fixtures_params.py",
                "python": sys.version.split()[0], "cases": {}, "random": []}
    for name, text in CASES.items():
        with open(os.path.join(OUT, name + ".txt"), "wb") as f:
            f.write(text.encode("utf-8"))
        expected["cases"][name] = parse(text)
    for text in random_texts(400):
        case = parse(text)
        case["text"] = text
        expected["random"].append(case)
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %d cases to %s" % (len(CASES), OUT))


if __name__ == "__main__":
    main()
