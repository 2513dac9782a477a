"""Bundled example files for the README's main-job command (tools/example.sh) -> examples/

Produces
    examples/models/tiny-sd1.safetensors      a tiny random-weight SD1-architecture checkpoint (real names,
                                              4 channels wide; the same model as tests/fixtures/bases/sd1_base)
    examples/loras/inkwash.safetensors        a kohya LoRA written by kohya sd-scripts (attention + text encoder)
    examples/loras/film-grain.safetensors     a kohya LoCon (3x3 convs too), F16, written by kohya sd-scripts
Both LoRAs carry training metadata as kohya writes it, plus an ss_tag_frequency so that `mood inspect`
shows trigger words. Weights are random (these are file-format examples, not trained styles).

Run (from the repository root):
    git clone SD_SCRIPTS_REPO /tmp/sd-scripts  # kohya-ss/sd-scripts, commit 48d368fa
    tools/.venv/bin/python tools/make_examples.py --sd-scripts /tmp/sd-scripts
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_models as tm  # noqa: E402
import make_fixtures_kohya as mk  # noqa: E402

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

EXAMPLES = os.path.join(tm.REPO_ROOT, "examples")
LORAS = {
    "inkwash": (dict(family="sd1", dim=4, alpha=2.0, save_dtype=None),
                {"img/10_inkwash": {"inkwash": 12, "ink wash painting": 9, "monochrome": 7, "mountain": 3,
                                    "lighthouse": 2}}),
    "film-grain": (dict(family="sd1", dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0, save_dtype=torch.float16),
                   {"img/5_grain": {"film grain": 10, "35mm": 6, "photo": 5, "bokeh": 1}}),
}


def add_tags(path, tags):
    with safe_open(path, "pt") as f:
        md = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    md["ss_tag_frequency"] = json.dumps(tags)
    md["ss_resolution"] = "(512, 512)"
    md["ss_steps"] = "600"
    md["ss_num_epochs"] = "6"
    save_file(tensors, path, md)  # the data section (and so AutoV3 / sshs_model_hash) is unchanged
    os.chmod(path, 0o644)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd-scripts", required=True)
    args = ap.parse_args()
    tm.set_sd_scripts(args.sd_scripts)
    os.makedirs(os.path.join(EXAMPLES, "models"), exist_ok=True)
    os.makedirs(os.path.join(EXAMPLES, "loras"), exist_ok=True)
    model = os.path.join(EXAMPLES, "models", "tiny-sd1.safetensors")
    shutil.copyfile(tm.base_path("sd1"), model)
    os.chmod(model, 0o644)
    print("wrote", os.path.relpath(model, tm.REPO_ROOT))
    mk.OUT_DIR = os.path.join(EXAMPLES, "loras")
    for name, (recipe, tags) in LORAS.items():
        path, _, _ = mk.build_lora(name, recipe)
        add_tags(path, tags)


if __name__ == "__main__":
    main()
