"""Prints the C table of tests/unit/test_tokenizer.c's test_a1111_comments_and_weight: what
AUTOMATIC1111's own regular expressions give (Python's re, as A1111 runs them) for prompts with
'#' comments (modules/processing_scripts/comments.py, strip_comments) and a final ":N" weight
(modules/prompt_parser.py, re_weight in get_multicond_prompt_list).

usage: python3 tools/make_cases_a1111_prompt.py
"""
import json
import re

RE_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def strip_comments(text):
    text = re.sub('(^|\n)#[^\n]*(\n|$)', '\n', text)  # a line that is a comment
    text = re.sub('#[^\n]*(\n|$)', '\n', text)  # from '#' to the end of the line
    return text


PROMPTS = ["a cat", "a cat # a comment\nsitting", "# whole line\na cat", "a\n#b\n#c\nd",
           "#only", "a # b # c", "x#y\nz", "", "a cat:1.3", "a cat: 1.3  ", "ratio 16:9",
           "(a:1.2", "a:1.2:1.3", "a:.5", "a:1.", "a:.", "a:1.5.", "a: -2", "a:+0.5",
           "no weight here", "a (cat):1.3", "a cat\n:1.3", ":5", "a:1e1", "a:1.5x"]


def c_string(s):
    return json.dumps(s)


for p in PROMPTS:
    m = RE_WEIGHT.search(p)
    text, w = m.groups()
    print(f"        {{{c_string(p)}, {c_string(strip_comments(p))}, {len(text)}, "
          f"{float(w) if w is not None else 1.0!r}}},")
