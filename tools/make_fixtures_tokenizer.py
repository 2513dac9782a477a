#!/usr/bin/env python3
"""make_fixtures_tokenizer.py: writes tests/fixtures/tokenizer/corpus.json, the reference
token ids for tests/unit/test_tokenizer.c.

References:
  - ids: Hugging Face transformers' CLIPTokenizer, built offline from data/clip's
    bpe_simple_vocab_16e6.txt.gz (vocab.json and merges.txt derived exactly as OpenAI CLIP's
    simple_tokenizer.py builds its vocabulary: the 256 byte symbols of bytes_to_unicode, the same
    with "</w>", the 48,894 merges joined, <|startoftext|>, <|endoftext|>);
  - emphasis and chunks: AUTOMATIC1111's own modules/prompt_parser.py (parse_prompt_attention)
    and modules/sd_hijack_clip.py (FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line), imported
    from a checkout given with --a1111 DIR (the folder holding modules/). Their heavy imports
    (torch devices, the hijack, the lark schedule parser, shared options) are stubbed: only the
    pure-Python parsing and chunking run, with opts.emphasis "Original" and
    opts.comma_padding_backtrack 20 (the defaults), no textual-inversion embeddings, and the
    tokenizer above (A1111 itself uses the same ids from the slow CLIPTokenizer). The checkout
    must be A1111 1.6 or later (commit 28bd8e14 was used): its re_attention reads a weight with
    white space around the number, "(red: 1.5)", which older ones take as text.

Usage: tools/.venv/bin/python tools/make_fixtures_tokenizer.py --a1111 /path/to/webui
Needs transformers (5.x was used; the version is recorded in the output).
"""
import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "data", "clip", "bpe_simple_vocab_16e6.txt.gz")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "corpus.json")


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
          list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_tokenizer(tmp):
    from transformers import CLIPTokenizer
    merges = gzip.open(VOCAB).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(tmp, "vocab.json"), "w") as f:
        json.dump(dict(zip(vocab, range(len(vocab)))), f)
    with open(os.path.join(tmp, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer.from_pretrained(tmp)
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    return tok


def load_a1111(path, tok):
    """Imports A1111's prompt_parser and sd_hijack_clip with their heavy imports stubbed."""
    sys.path.insert(0, path)
    for name in ("lark", "modules.devices", "modules.sd_hijack", "modules.sd_emphasis"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["lark"].Lark = lambda *a, **k: None
    shared = types.ModuleType("modules.shared")
    shared.opts = types.SimpleNamespace(emphasis="Original", comma_padding_backtrack=20)
    sys.modules["modules.shared"] = shared
    from modules import prompt_parser, sd_hijack_clip

    class NoEmbeddings:
        def find_embedding_at_position(self, tokens, offset):
            return None, None

    class Reference(sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase):
        def __init__(self):
            super().__init__(types.SimpleNamespace(), types.SimpleNamespace(embedding_db=NoEmbeddings()))
            self.comma_token = tok.get_vocab()[",</w>"]
            self.id_start, self.id_end, self.id_pad = 49406, 49407, 49407

        def tokenize(self, texts):
            return tok(texts, truncation=False, add_special_tokens=False)["input_ids"]

    return prompt_parser, Reference()


WORDS = ("masterpiece best quality 1girl solo long hair looking at viewer smile blue eyes "
         "landscape mountains river sunset cinematic lighting highly detailed 8k octane render "
         "trending on artstation by greg rutkowski watercolor ink wash film grain bokeh portrait "
         "of an old fisherman dramatic clouds volumetric fog reflections photorealistic").split()


def long_prompt(rng, n_words, comma_every, emphasis=False):
    out = []
    for i in range(n_words):
        w = rng.choice(WORDS)
        if emphasis and rng.random() < 0.15:
            w = rng.choice(["(%s)", "((%s))", "[%s]", "(%s:1.3)", "(%s:0.8)"]) % w
        out.append(w)
        if comma_every and rng.random() < 1.0 / comma_every:
            out.append(",")
    return " ".join(out).replace(" ,", ",")


def corpus():
    p = [
        # plain text, case, whitespace
        "", " ", "a photo of a cat", "A Photo Of A CAT", "HELLO world", "  leading and trailing  ",
        "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds", "multiple     spaces   here",
        "no-break\u00a0space and\u3000ideographic space", "en\u2002em\u2003thin\u2009spaces",
        "line\u2028separator\u2029para", "zero\u200bwidth\u200cnon\u200djoiner", "\ufeffbom at start",
        "control\x01\x02\x1c\x1f\x7fchars", "next line\x85here",
        # apostrophes and contractions
        "it's a dog's life", "IT'S THEY'RE WE'VE I'M YOU'LL HE'D DON'T", "'s 't 're alone",
        "rock'n'roll", "o'clock", "''double''", "'''", "l'amour d'été", "can’t curly apostrophe",
        "the '90s", "x'sy", "quote's'", "'ll'd'm",
        # punctuation runs
        "!!!", "wow!!! really???", "...", "a...b", "(((", "--==<<>>==--", "a,b,c", "a , b , c",
        "hello,world", "e-mail", "snake_case_name", "path/to/file.png", "https://example.com/a?b=c&d=e",
        "#hashtag @mention $100 50% ^_^ ~tilde~", "¿qué? ¡sí!", "«guillemets» „quotes“ “smart”",
        "em—dash en–dash … ellipsis", "a|b|c", "{curly} <angle> [square] (round)",
        # numbers
        "1920x1080", "3.14159", "12345678901234567890", "version 2.0.1", "1st 2nd 3rd 4th",
        "٠١٢٣ arabic-indic digits", "०१२ devanagari digits", "①②③ circled", "Ⅻ roman twelve",
        "½ ¾ fractions", "²³ superscripts", "x₁ subscripts", "１２３ fullwidth digits",
        # accents and case
        "café naïve résumé", "CAFÉ NAÏVE", "cafe\u0301 decomposed", "e\u0301\u0300 two marks",
        "a\u0323\u0302 reorder", "a\u0302\u0323 reorder2", "Ω ohm sign \u2126", "Å angstrom \u212b",
        "Straße STRASSE ß ẞ", "İstanbul ISTANBUL ı", "ΣΊΣΥΦΟΣ σίσυφος", "ǅungla ǄUNGLA ǆ",
        "Ελληνικά Русский ТЕКСТ", "ﬁ ﬂ ligatures", "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ", "Ⓐ Ⓑ circled letters",
        "ǰ̌ combining", "q\u0307\u0323 dot", "\u0301 leading mark", "a\u034f\u0301 cgj",
        "Å\u0301 precomposed plus mark", "ḱ ḱ", "\u1e0b\u0323 d-dot", "\u0fb2\u0f80 tibetan",
        # scripts
        "猫の写真", "一只猫在草地上", "高品質 傑作", "한국어 텍스트", "\u1100\u1161\u11a8 jamo",
        "\u1112\u1161\u11ab\u1100\u1173\u11af", "ภาษาไทย", "हिन्दी पाठ", "العربية نص", "עברית",
        "ქართული", "አማርኛ", "tiếng Việt có dấu", "Ελληνική", "ꙮ many eyed", "𝔣𝔯𝔞𝔨𝔱𝔲𝔯 math",
        "𝟘𝟙𝟚 math digits", "mixed漢字and english", "カタカナ ひらがな ｶﾀｶﾅ",
        # emoji
        "😀", "a cat 🐱 and a dog 🐶", "👨‍👩‍👧‍👦 family", "👍🏽 thumbs", "🇫🇷 🇯🇵 flags", "❤️ heart",
        "🏳️‍🌈", "emoji😀glued", "🔥🔥🔥", "★☆✨", "©®™", "keycap 1️⃣",
        # html entities (not unescaped by the reference)
        "&amp; &lt;3 &gt; &quot;", "&#39;quoted&#39;", "tom &amp; jerry", "&nbsp;",
        # special token strings
        "<|startoftext|>", "a <|endoftext|> b", "<|ENDOFTEXT|>", "x<|startoftext|>y<|endoftext|>z",
        "<|endoftext", "<|endof|text|>",
        # typical SD prompts with emphasis
        "masterpiece, best quality, (1girl:1.2), solo, long hair, looking at viewer",
        "a (red) car", "a ((red)) car", "a (((red))) car", "a [red] car", "a [[red]] car",
        "a (red:1.5) car", "a (red:0.5) car", "a (red:-1) car", "a (red:+2) car", "a (red: 1.5) car",
        "a (red:1.5 ) car", "a (red : 1.5 ) car", "a (red:\t2\n) car", "a (red:  ) car", "(red:.5)", "(red:5.)", "(red:1e3)", "(word:1.3)",
        "(masterpiece:1.2), [blurry], (photorealistic:1.4), ((sharp focus))",
        "(unbalanced", "unbalanced)", "[unbalanced", "unbalanced]", "((a)", "(a))", "[(a])",
        "\\(escaped\\)", "\\[escaped\\]", "a \\\\ backslash", "lone \\ backslash", "\\a",
        "(a \\(nested\\) b:1.2)", "(a (b (c:1.5) d) e)", "[a (b) c]", "(a [b] c)",
        "(unnecessary)(parens)", "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        "an (important) word", "normal text", "\\(literal\\]", "a:b", "ratio 16:9", "(a:b)",
        "(a:1.2:3)", "(:1.2)", "()", "[]", "(())", "([])", "a (b:1.1) c (d:1.1) e",
        "(a)(b)[c][d]", "(tag:1.0)", "smile:1.2)", "(a:1.2", "(a:1.2]", "[a:1.2]",
        # BREAK
        "a cat BREAK a dog", "a cat BREAK", "BREAK a dog", "BREAK", "BREAK BREAK", "a BREAKfast",
        "aBREAK b", "a_BREAK b", "a\nBREAK\nb", "a, BREAK, b", "(a BREAK b)", "[a BREAK b]",
        "a break b", "a BREAK(b)", "éBREAK b", "a BREAKé", "a BREAK。b", "a  BREAK  BREAK  b",
        "x,BREAK,y",
        # a weight A1111 cannot read
        "(a:1.2.3)", "(a:.)",
    ]
    rng = random.Random(1234)
    for n, every in ((70, 0), (80, 6), (100, 4), (150, 10), (200, 3), (400, 8)):
        p.append(long_prompt(rng, n, every))
    for n, every in ((90, 5), (160, 7), (300, 4)):
        p.append(long_prompt(rng, n, every, emphasis=True))
    # Exactly 75 / 76 tokens, and a comma right at the chunk edge.
    p.append(" ".join(["cat"] * 75))
    p.append(" ".join(["cat"] * 76))
    p.append(" ".join(["cat"] * 74) + ", dog")
    p.append(" ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 30))
    p.append(" ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 30))
    p.append(", ".join(["cat"] * 60))
    p.append(" ".join(["cat"] * 74) + " " + ",,,,,, dog")
    p.append(" ".join(["cat"] * 40) + " BREAK " + " ".join(["dog"] * 80))
    p.append("(" + " ".join(["cat"] * 100) + ")")
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a1111", required=True, help="A1111 checkout (folder holding modules/)")
    args = ap.parse_args()
    import transformers
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(tmp)
    parser, ref = load_a1111(args.a1111, tok)
    cases = []
    for prompt in corpus():
        case = {"prompt": prompt,
                "ids": tok(prompt, add_special_tokens=False)["input_ids"]}
        try:
            frags = parser.parse_prompt_attention(prompt)
            chunks, count = ref.tokenize_line(prompt)
        except ValueError as e:
            case["a1111_error"] = str(e)
            cases.append(case)
            continue
        case["fragments"] = frags
        case["token_count"] = count
        case["target_count"] = ref.get_target_prompt_token_count(count)
        out = []
        for c in chunks:
            assert len(c.tokens) == 77 and c.tokens[0] == 49406 and c.tokens[76] == 49407
            body = c.tokens[1:76]
            used = 75
            while used > 0 and body[used - 1] == 49407 and c.multipliers[used] == 1.0:
                used -= 1
            weights = [[i, w] for i, w in enumerate(c.multipliers) if w != 1.0]
            out.append({"ids": body[:used], "weights": weights})
        case["chunks"] = out
        cases.append(case)
    doc = {"about": "CLIP token ids (transformers %s CLIPTokenizer from bpe_simple_vocab_16e6) and "
                    "A1111 emphasis/chunks (prompt_parser.py, sd_hijack_clip.py) for "
                    "tests/unit/test_tokenizer.c; made by tools/make_fixtures_tokenizer.py. In "
                    "chunks, ids are those after the start token up to the padding; weights "
                    "lists [index in the 77, weight] for weights other than 1."
                    % transformers.__version__,
           "cases": cases}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("%d prompts, %d bytes -> %s" % (len(cases), os.path.getsize(OUT), OUT))


if __name__ == "__main__":
    main()
