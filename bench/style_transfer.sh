#!/bin/bash
# bench/style_transfer.sh: the measurements of the shipped small model and of the demo's style
# (tools/mood_tiny/evaluate.py says how each is defined and why):
#   1. mood-tiny's nearest-neighbour accuracy on $N training captions (top-1, top-5) against the
#      untrained initialisation (tools/mood_tiny/init_model.py, seed 0) and chance (1/1417);
#   2. prompts outside the captions ($NOVEL_N "<colour> <object>" phrases): whether the colour word
#      and the object are followed, against the untrained initialisation;
#   3. the Twemoji style trained as `mood demo` trains it (same board and settings), applied to
#      $N subjects the board does not show: the fraction whose image is closer to the subject's
#      Twemoji drawing than to its Noto drawing, with the style and without it (the control), on
#      the style axis (the metric) and in blurred pixels (the earlier one), with the reference
#      lines of real drawings that show what each metric can grant.
# Needs: tools/.venv (numpy, Pillow; torch and diffusers for the untrained initialisation), the
# emoji data set in ../shared/data/emoji. Prints one table; the JSON of each part goes to
# ${MOOD_BENCH_CACHE:-/tmp/mood-bench}/style-transfer/.
# Usage: bench/style_transfer.sh [MOOD_BINARY]   (default build/mood; N=100, CFG=3, SEED=0)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-$root/build/mood}}
N=${N:-100}
CFG=${CFG:-3}   # the guidance scale mood demo generates at (DEMO_CFG in cli/cmd_demo.c)
SEED=${SEED:-0} # picks the subjects and the generation seeds
NOVEL_N=${NOVEL_N:-48} # prompts outside the captions
PY=${PYTHON:-$root/tools/.venv/bin/python}
work=${MOOD_BENCH_CACHE:-/tmp/mood-bench}/style-transfer
model=$root/data/mood-tiny
board=$root/examples/moodboards/twemoji
mkdir -p "$work"
[ -f "$work/init/model_index.json" ] || "$PY" "$root/tools/mood_tiny/init_model.py" "$work/init" \
    --seed 0 >/dev/null

# the style, exactly as `mood demo` trains it
MOOD_HOME="$work/registry" "$MOOD" train --name twemoji-demo --board "$board" --model "$model" \
    --res 64 --steps 300 --batch 5 --rank 8 --alpha 8 --lr 1e-3 --seed 0 \
    -o "$work/twemoji-demo.safetensors" --no-register >/dev/null

"$PY" "$root/tools/mood_tiny/evaluate.py" quality --mood "$MOOD" --model "$model" \
    --init "$work/init" --n "$N" --seed "$SEED" --cfg "$CFG" --work "$work/img" \
    --json "$work/quality.json" >/dev/null
"$PY" "$root/tools/mood_tiny/evaluate.py" novel --mood "$MOOD" --model "$model" \
    --init "$work/init" --n "$NOVEL_N" --seed "$SEED" --cfg "$CFG" --work "$work/img" \
    --json "$work/novel.json" >/dev/null
"$PY" "$root/tools/mood_tiny/evaluate.py" style --mood "$MOOD" --model "$model" \
    --lora "$work/twemoji-demo.safetensors" --n "$N" --seed "$SEED" --cfg "$CFG" \
    --work "$work/img" --json "$work/style.json" >/dev/null

"$PY" - "$work" <<'PYEOF'
import json, sys
w = sys.argv[1]
q = json.load(open(f"{w}/quality.json"))
s = json.load(open(f"{w}/style.json"))
print(f"mood-tiny on {q['trained']['n']} training captions, nearest Noto image is the caption's own:")
print(f"  trained    top-1 {q['trained']['top1']:.0%}  top-5 {q['trained']['top5']:.0%}")
if "untrained" in q:
    print(f"  untrained  top-1 {q['untrained']['top1']:.0%}  top-5 {q['untrained']['top5']:.0%}"
          f"  (chance {q['chance_top1']:.2%})")
v = json.load(open(f"{w}/novel.json"))
print(f"{v['n']} prompts outside the captions ('<colour> <object>', each word in some caption, "
      f"never the pair):")
for tag in ("trained", "untrained"):
    if tag in v:
        t = v[tag]
        print(f"  {tag:9}  colour word followed {t['colour_raised']:4.0%} (colour's share "
              f"{t['colour_share']:.2f}, bare object {t['bare_colour_share']:.2f});  object "
              f"among the 5 nearest {t['object_top5']:4.0%} (chance {v['object_top5_chance']:.0%})")
print(f"Twemoji style on {s['styled']['n']} held-out subjects, image closer to the subject's Twemoji"
      f" drawing than to its Noto drawing:")
r = s["reference"]
print("                            style axis   blurred pixels")
print(f"  with the style              {s['styled']['closer_to_twemoji']:4.0%}"
      f"        {s['styled']['closer_in_pixels']:4.0%}")
print(f"  without (control)           {s['base']['closer_to_twemoji']:4.0%}"
      f"        {s['base']['closer_in_pixels']:4.0%}")
print(f"  another subject's Twemoji   {r['style_axis']['other_subject_twemoji']:4.0%}"
      f"        {r['pixels']['other_subject_twemoji']:4.0%}   (real drawings: what a perfect style scores)")
print(f"  another subject's Noto      {r['style_axis']['other_subject_noto']:4.0%}"
      f"        {r['pixels']['other_subject_noto']:4.0%}   (what the base style scores)")
PYEOF
