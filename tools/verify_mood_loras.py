"""Check that LoRA files WRITTEN BY mood load in the reference tools and mean what mood says they mean.

What it checks
    1. mood writes LoRAs from committed fixtures into a temporary folder with every writing command:
       `mood lora stack` (SD1 LoRA + F16 LoCon with a negative weight, also written as F16; separate U-Net/TE
       weights; SDXL LoRA + LoCon; LyCORIS LoHa + LoKr + Tucker LoCon; SD2 LoCon + LoKr),
       `mood lora merge --rank 4 --conv-rank 2` (two input pairs), `mood lora resize --rank 2` and
       `--dynamic sv_fro=0.9`, `mood lora extract --rank 4 --conv-rank 2` (F32 and F16).
    2. Each file is checked with
       metadata     kohya format: only `<module>.lora_down.weight` / `.lora_up.weight` / `.alpha` keys, 0-d alphas,
                    the ss_* / modelspec.* keys train_network.py writes, and sshs_model_hash / sshs_legacy_hash equal
                    to kohya's own addnet_hash_safetensors / addnet_hash_legacy of the file (and to kohya's
                    precalculate_safetensors_hashes of the loaded tensors);
       diffusers    a tiny StableDiffusionPipeline / StableDiffusionXLPipeline assembled from tools/tiny_models.py's
                    U-Net and text encoders (plus a tiny VAE, DDIM scheduler and a 32-token CLIP tokenizer made
                    offline): `pipe.load_lora_weights(file)` must log no warning and inject one PEFT LoRA layer per
                    module of the file; a 2-step pipeline call runs with the adapter; then
                    `pipe.fuse_lora(lora_scale=1)` + `unload_lora_weights()`;
       kohya        sd-scripts networks/lora.py `create_network_from_weights`: module set equal to the file's,
                    `apply_to` + `load_state_dict` without missing/unexpected keys, then `merge_to` on fresh models;
       kohya merge  networks/merge_lora.py / sdxl_merge_lora.py `merge_to_sd_model` (what users run to bake a
                    LoRA): no "no module found" line;
       lycoris      LyCORIS' kohya loader `lycoris.kohya.create_network_from_weights` + `merge_to` (plain LoRA files
                    load as LoConModule);
       stack==inputs  for stacks of kohya files: kohya's merge of the stack equals kohya's merge of the inputs with
                    their weights, without mood in the loop (F16 stacks: on the change, tolerance 2e-3).
       Each merged model is converted to the single-file layout with tiny_models.to_single_file and every tensor is
       compared with `mood bake --model tests/fixtures/bases/<family>_base.safetensors --lora FILE`
       (|a-b| <= 1e-6 + 1e-5 |b| per element).  "max rel" = max over tensors of max|a-b| / max|b|; "delta rel" = the
       same on the change against the base (much stricter).
    3. The same loaders run on files written by kohya sd-scripts itself (committed fixtures) as controls.
    4. Prints a table, writes it to tests/fixtures/verify_report.md, exits 1 on any FAIL.  KNOWN marks a failure
       caused by a listed reference-tool bug or limitation (KNOWN_ISSUES) and proven by a rerun that sidesteps it
       (diffusers: a uniform-alpha copy and a patched format detection; kohya: the file without the modules kohya
       cannot create); KNOWN is not counted unless --strict.

How to run (from the repository root)
    cmake -S . -B build-verify -G Ninja -DMOOD_CUDA=OFF && ninja -C build-verify
    git clone SD_SCRIPTS_REPO /tmp/sd-scripts  # kohya-ss/sd-scripts, commit 48d368fa
    tools/.venv/bin/python tools/verify_mood_loras.py --mood build-verify/mood --sd-scripts /tmp/sd-scripts
Options: --keep DIR keeps outputs and bakes; --no-report; --only NAME,...; --no-controls; --strict;
--file PATH:FAMILY checks any existing LoRA file the same way.  About 1 minute on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
import traceback
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_models as tm  # noqa: E402

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

REPO = tm.REPO_ROOT
FIX = os.path.join(REPO, "tests", "fixtures")
REPORT = os.path.join(FIX, "verify_report.md")
RTOL, ATOL = 1e-5, 1e-6
F16_DELTA_TOL = 2e-3  # max|ΔW_a - ΔW_b| / max|ΔW_b| allowed when a file's factors were rounded to F16


def fx(*p):
    return os.path.join(FIX, *p)


# name, family, mood arguments (output appended as -o OUT), description
def outputs():
    k, ly, sv = (lambda f: fx("kohya", f)), (lambda f: fx("lycoris", f)), (lambda f: fx("svd", f))
    return [
        ("stack_sd1", "sd1", ["lora", "stack", k("sd1_lora.safetensors") + ":0.7",
                              k("sd1_locon_fp16.safetensors") + ":-0.4"],
         "stack sd1_lora:0.7 + sd1_locon_fp16:-0.4 (F16 LoCon input)"),
        ("stack_sd1_f16", "sd1", ["lora", "stack", k("sd1_lora.safetensors") + ":0.7",
                                  k("sd1_locon_fp16.safetensors") + ":-0.4", "--dtype", "f16"],
         "the same stack written as F16"),
        ("stack_sd1_te", "sd1", ["lora", "stack", k("sd1_lora_bf16.safetensors") + ":0.8:0.5",
                                 k("sd1_lora.safetensors") + ":0.3:0"],
         "stack with separate U-Net/TE weights (BF16 input, TE weight 0)"),
        ("stack_sdxl", "sdxl", ["lora", "stack", k("sdxl_lora.safetensors") + ":0.7",
                                k("sdxl_locon.safetensors") + ":-0.5"],
         "SDXL stack sdxl_lora:0.7 + sdxl_locon:-0.5 (SGM names, te1/te2)"),
        ("stack_lycoris", "sd1", ["lora", "stack", ly("loha.safetensors") + ":0.8",
                                  ly("lokr.safetensors") + ":0.5", ly("locon_tucker.safetensors") + ":-0.3"],
         "stack of LyCORIS LoHa 0.8 + LoKr 0.5 + Tucker LoCon -0.3 (stored at full rank)"),
        ("stack_sd2", "sd2", ["lora", "stack", k("sd2_locon.safetensors") + ":0.6", ly("sd2_lokr.safetensors") + ":0.5"],
         "SD2 stack: kohya LoCon (I64 alphas) + LyCORIS LoKr"),
        ("merge_r4c2", "sd1", ["lora", "merge", k("sd1_lora.safetensors") + ":0.7",
                               k("sd1_locon_fp16.safetensors") + ":-0.4", "--rank", "4", "--conv-rank", "2"],
         "SVD merge to rank 4, conv rank 2"),
        ("merge_svd_ab", "sd1", ["lora", "merge", sv("lora_a.safetensors") + ":0.7",
                                 sv("lora_b.safetensors") + ":-0.4", "--rank", "4", "--conv-rank", "2"],
         "SVD merge of svd/lora_a + lora_b (kohya svd_merge_ab case)"),
        ("resize_r2", "sd1", ["lora", "resize", sv("lora_c.safetensors"), "--rank", "2"], "resize to rank 2"),
        ("resize_fro09", "sd1", ["lora", "resize", sv("lora_c.safetensors"), "--dynamic", "sv_fro=0.9"],
         "dynamic resize sv_fro=0.9"),
        ("extract_r4c2", "sd1", ["lora", "extract", "--base", fx("bases", "sd1_base.safetensors"),
                                 "--tuned", sv("extract_tuned.safetensors"), "--rank", "4", "--conv-rank", "2"],
         "extract rank 4, conv rank 2"),
        ("extract_r4c2_f16", "sd1", ["lora", "extract", "--base", fx("bases", "sd1_base.safetensors"),
                                     "--tuned", sv("extract_tuned.safetensors"), "--rank", "4", "--conv-rank", "2",
                                     "--dtype", "f16"], "extract as F16"),
    ]


def controls():
    """Files written by kohya sd-scripts itself (committed fixtures), checked with the same loaders: when a
    reference tool also fails on these, the failure is the tool's, not mood's."""
    k, sv = (lambda f: fx("kohya", f)), (lambda f: fx("svd", f))
    return [
        ("kohya:sd1_lora", "sd1", k("sd1_lora.safetensors"), "kohya train_network-style LoRA, uniform alpha"),
        ("kohya:sd1_locon_fp16", "sd1", k("sd1_locon_fp16.safetensors"), "kohya LoCon F16, block-wise ranks/alphas"),
        ("kohya:sdxl_locon", "sdxl", k("sdxl_locon.safetensors"), "kohya SDXL LoCon"),
        ("kohya:svd_merge_ab", "sd1", sv("svd_merge_ab.safetensors"), "kohya svd_merge_lora.py output"),
        ("kohya:resize_c_sv_fro09", "sd1", sv("resize_c_sv_fro09.safetensors"), "kohya resize_lora.py dynamic output"),
        ("kohya:extract_dim4_conv2", "sd1", sv("extract_dim4_conv2.safetensors"),
         "kohya extract_lora_from_models.py output"),
    ]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

class Capture(logging.Handler):
    """Collects WARNING+ records of the given loggers (and Python warnings) while active."""

    def __init__(self, names=("diffusers", "peft", "transformers")):
        super().__init__(logging.WARNING)
        self.names, self.records = names, []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")

    @contextlib.contextmanager
    def active(self):
        loggers = [logging.getLogger(n) for n in self.names]
        for lg in loggers:
            lg.addHandler(self)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                yield self
            finally:
                for lg in loggers:
                    lg.removeHandler(self)
                for x in w:
                    msg = str(x.message)
                    if "lora" in msg.lower() or "key" in msg.lower() or "adapter" in msg.lower():
                        self.records.append(f"warning: {msg}")


def lora_modules(sd):
    return sorted({k.split(".", 1)[0] for k in sd})


def compare(got: dict, ref: dict, base: dict):
    """got/ref: single-file dicts.  Returns (ok, max_rel, max_delta_rel, n_compared, n_changed, problems)."""
    probs = []
    keys = sorted(set(got) & set(ref))
    miss = sorted(key for key in set(ref) - set(got) if key not in base or not torch.equal(ref[key], base[key]))
    if miss:
        probs.append(f"{len(miss)} bake tensors not produced by the loader, e.g. {miss[:2]}")
    extra = sorted(set(got) - set(ref))
    if extra:
        probs.append(f"{len(extra)} loader tensors not in the bake, e.g. {extra[:2]}")
    worst = worst_d = 0.0
    n_changed = 0
    bad = []
    for key in keys:
        a, b = got[key].double(), ref[key].double()
        if a.shape != b.shape:
            bad.append(f"{key}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
            continue
        d = (a - b).abs()
        denom = b.abs().max().item()
        worst = max(worst, d.max().item() / denom if denom > 0 else d.max().item())
        if not bool((d <= ATOL + RTOL * b.abs()).all()):
            bad.append(f"{key}: max |diff| {d.max().item():.2e}")
        b0 = base.get(key)
        if b0 is not None:
            db = b - b0.double()
            if db.abs().max().item() > 0:
                n_changed += 1
                da = a - b0.double()
                worst_d = max(worst_d, (da - db).abs().max().item() / db.abs().max().item())
    if bad:
        probs.append(f"{len(bad)} tensors differ from mood bake, e.g. {bad[:2]}")
    return not probs, worst, worst_d, len(keys), n_changed, probs


def one_line(msg, limit=300):
    import re

    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg)
    msg = re.sub(r"[-| ]{3,}", " ", msg.replace("\n", " "))
    return re.sub(r"\s+", " ", msg).strip()[:limit]


class Result:
    def __init__(self, out, loader):
        self.out, self.loader = out, loader
        self.loaded = self.unmatched = None
        self.n_cmp = self.n_changed = None
        self.max_rel = self.delta_rel = None
        self.ok = False
        self.known = None  # explanation when the failure is a reference-tool bug/limitation, proven by a rerun
        self.notes = []

    @property
    def verdict(self):
        return "PASS" if self.ok else ("KNOWN" if self.known else "FAIL")

    def row(self):
        def f(x):
            return "-" if x is None else (f"{x:.1e}" if isinstance(x, float) else str(x))
        cmp = "-" if self.n_cmp is None else f"{self.n_cmp} ({self.n_changed})"
        return [self.out, self.loader, f(self.loaded), f(self.unmatched), cmp, f(self.max_rel), f(self.delta_rel),
                self.verdict]


# ------------------------------------------------------------------------------------------------
# metadata / format check
# ------------------------------------------------------------------------------------------------

REQUIRED_MD = ["ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_v2",
               "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation", "modelspec.title",
               "modelspec.date", "sshs_model_hash", "sshs_legacy_hash"]
ARCH = {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-512/lora",
        "sdxl": "stable-diffusion-xl-v1-base/lora"}
BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def check_metadata(name, family, path, k):
    r = Result(name, "metadata")
    with safe_open(path, "pt") as f:
        md = f.metadata() or {}
        keys = list(f.keys())
        shapes = {key: f.get_slice(key).get_shape() for key in keys}
    mods = lora_modules(keys)
    r.loaded = len(mods)
    bad_keys = [key for key in keys if key.split(".", 1)[1] not in ("lora_down.weight", "lora_up.weight", "alpha")]
    incomplete = [m for m in mods if not all(f"{m}.{s}" in shapes for s in ("lora_down.weight", "lora_up.weight",
                                                                            "alpha"))]
    r.unmatched = len(bad_keys) + len(incomplete)
    probs = []
    if bad_keys:
        probs.append(f"non-kohya keys {bad_keys[:3]}")
    if incomplete:
        probs.append(f"modules without down/up/alpha {incomplete[:3]}")
    for m in mods:
        a, d, u = shapes.get(m + ".alpha"), shapes.get(m + ".lora_down.weight"), shapes.get(m + ".lora_up.weight")
        if a is not None and list(a) != []:
            probs.append(f"{m}.alpha shape {a} (kohya writes 0-d)")
            break
        if d and u and (u[1] != d[0] or (len(d) == 4 and list(u[2:]) != [1, 1]) or len(d) != len(u)):
            probs.append(f"{m}: down {d} / up {u} not a kohya LoRA pair")
            break
    missing = [key for key in REQUIRED_MD if key not in md]
    if missing:
        probs.append(f"metadata missing {missing}")
    if md.get("modelspec.architecture") != ARCH[family]:
        probs.append(f"modelspec.architecture {md.get('modelspec.architecture')!r} != {ARCH[family]!r}")
    if md.get("ss_base_model_version") != BASE_VERSION[family]:
        probs.append(f"ss_base_model_version {md.get('ss_base_model_version')!r}")
    if md.get("ss_v2") != str(family == "sd2"):
        probs.append(f"ss_v2 {md.get('ss_v2')!r}")
    if md.get("ss_network_module") != "networks.lora":
        probs.append(f"ss_network_module {md.get('ss_network_module')!r}")
    if "ss_network_args" in md and md["ss_network_args"] != "None":
        try:
            json.loads(md["ss_network_args"])
        except ValueError:
            probs.append("ss_network_args is not JSON")
    for key, v in md.items():
        if not isinstance(v, str):
            probs.append(f"metadata {key} is not a string")
    with open(path, "rb") as fh:
        h = k.train_util.addnet_hash_safetensors(fh)
        legacy = k.train_util.addnet_hash_legacy(fh)
    if md.get("sshs_model_hash") != h:
        probs.append(f"sshs_model_hash {md.get('sshs_model_hash')} != kohya addnet_hash_safetensors {h}")
    if md.get("sshs_legacy_hash") != legacy:
        probs.append(f"sshs_legacy_hash {md.get('sshs_legacy_hash')} != kohya addnet_hash_legacy {legacy}")
    # kohya recomputes the hash from the loaded tensors and the ss_* metadata (precalculate_safetensors_hashes);
    # equal only if mood lays out the data region exactly as safetensors does
    h2, _ = k.train_util.precalculate_safetensors_hashes(load_file(path), md)
    if h2 != h:
        r.notes.append("data region differs from safetensors.torch.save's layout (hash recomputation differs)")
        probs.append("tensor data layout differs from safetensors.torch.save")
    r.ok = not probs
    r.notes += probs
    r.md = md
    return r


# ------------------------------------------------------------------------------------------------
# diffusers
# ------------------------------------------------------------------------------------------------

def tiny_tokenizer(tmpdir):
    """A CLIPTokenizer that constructs offline: vocabulary of 32 tokens (the tiny text encoders' size)."""
    from transformers import CLIPTokenizer

    d = os.path.join(tmpdir, "tokenizer")
    os.makedirs(d, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in letters[:15]:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"), model_max_length=8)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), latent_channels=4,
                         norm_num_groups=2, layers_per_block=1, sample_size=8).eval()


def inner_te(te):
    """The transformers module diffusers must see (the plain CLIPTextModel inside tiny_models' 4.x wrapper)."""
    return te.text_model if isinstance(te, tm.CLIPTextModelV4Layout) else te


def make_pipeline(family, models, tmpdir):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    tok = tiny_tokenizer(tmpdir)
    sched = DDIMScheduler(num_train_timesteps=1000)
    if family == "sdxl":
        return StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=inner_te(models["te1"]),
                                         text_encoder_2=models["te2"], tokenizer=tok, tokenizer_2=tok,
                                         unet=models["unet"], scheduler=sched)
    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=inner_te(models["te1"]), tokenizer=tok,
                                   unet=models["unet"], scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def count_lora_layers(module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for m in module.modules() if isinstance(m, BaseTunerLayer))


DIFFUSERS_BUGS = {
    "alpha": "[diffusers-alpha] diffusers bug: lora_conversion_utils._get_alpha_name keeps the whole key for U-Net attention modules "
             "('...attn1.processor.to_k_lora.down.weight.alpha', no '.lora.' to split on) and get_peft_kwargs keeps "
             "'text_model.' / reduces q/k/v/out_proj to '...self_attn' for text-encoder modules, so the PEFT "
             "alpha_pattern never matches: every module whose alpha differs from the file's most common alpha "
             "gets the wrong scale (kohya-written files fail the same way)",
    "format": "[diffusers-format] diffusers bug: state_dict_utils.convert_state_dict_to_diffusers detects kohya's converted TE keys "
              "('to_q_lora', old diffusers format) only if some key contains 'to_out_lora'; a text encoder with "
              "q/k/v_proj LoRAs but no out_proj LoRA keeps 'to_q_lora...' keys, which transformers reports "
              "UNEXPECTED and does not load (kohya-written files fail the same way)",
}


KNOWN_ISSUES = [
    DIFFUSERS_BUGS["alpha"] + ". Proof: the row 'diffusers (bugs sidestepped)' loads a copy of the file with one "
    "alpha for every module (scale folded into lora_up) and matches. mood's `lora stack` writes one alpha per file "
    "for this reason; kohya's merge/resize conventions (alpha = rank, alpha scaled with the new rank) make "
    "per-module alphas differ, for kohya's own files too (controls).",
    DIFFUSERS_BUGS["format"] + ". Proof: the same rerun with the format detection patched per key.",
    "[kohya-targets] kohya networks/lora.py (create_network_from_weights and merge_lora.py) only creates LoRA modules "
    "for Linear/Conv2d inside Transformer2DModel, ResnetBlock2D, Downsample2D, Upsample2D and the CLIP "
    "attention/MLP; LyCORIS also trains conv_in, conv_out and time_embedding, which kohya ignores ('no module found'). "
    "Proof: kohya's merge equals mood's bake of the file without those modules. LyCORIS and diffusers load them.",
]


def uniform_alpha_copy(path, out):
    """The same LoRA with one alpha for every module (scale folded into lora_up): sidesteps DIFFUSERS_BUGS['alpha']."""
    from safetensors.torch import save_file

    sd = load_file(path)
    with safe_open(path, "pt") as f:
        md = f.metadata() or {}
    mods = lora_modules(sd)
    a_max = max(float(sd[m + ".alpha"]) for m in mods if m + ".alpha" in sd)
    for m in mods:
        r = sd[m + ".lora_down.weight"].shape[0]
        alpha = float(sd[m + ".alpha"]) if m + ".alpha" in sd else r
        up = sd[m + ".lora_up.weight"]
        sd[m + ".lora_up.weight"] = (up.double() * (alpha / a_max)).to(up.dtype)
        sd[m + ".alpha"] = torch.tensor(a_max, dtype=torch.float32)
    save_file(sd, out, metadata=md)


@contextlib.contextmanager
def patched_format_detection():
    """Per-file detection fix for DIFFUSERS_BUGS['format']: treat kohya-converted 'to_q/k/v_lora' keys as the old
    diffusers format even without a 'to_out_lora' key."""
    import diffusers.loaders.lora_base as lb
    from diffusers.utils.state_dict_utils import StateDictType

    orig = lb.convert_state_dict_to_diffusers

    def conv(sd, original_type=None, **kw):
        if original_type is None and any(x in k for k in sd for x in ("to_q_lora", "to_k_lora", "to_v_lora")):
            original_type = StateDictType.DIFFUSERS_OLD
        return orig(sd, original_type, **kw)

    lb.convert_state_dict_to_diffusers = conv
    try:
        yield
    finally:
        lb.convert_state_dict_to_diffusers = orig


def check_diffusers_workaround(name, family, path, bake, base, tmpdir):
    """Rerun of check_diffusers with both diffusers bugs sidestepped (uniform-alpha copy of the file, patched format
    detection).  If this passes, the plain diffusers failure is explained by those bugs alone."""
    alt = os.path.join(tmpdir, name.replace(":", "_") + ".uniform_alpha.safetensors")
    uniform_alpha_copy(path, alt)
    with patched_format_detection():
        r = check_diffusers(name, family, alt, bake, base, tmpdir)
    r.loader = "diffusers (bugs sidestepped)"
    return r


def check_diffusers(name, family, path, bake, base, tmpdir):
    r = Result(name, "diffusers")
    models = tm.make_models(family)
    pipe = make_pipeline(family, models, tmpdir)
    n_file = len(lora_modules(load_file(path)))
    cap = Capture()
    with cap.active():
        pipe.load_lora_weights(path, adapter_name="mood")
    comps = [("unet", pipe.unet), ("text_encoder", pipe.text_encoder)]
    if family == "sdxl":
        comps.append(("text_encoder_2", pipe.text_encoder_2))
    n_loaded = sum(count_lora_layers(m) for _, m in comps)
    r.loaded, r.unmatched = n_loaded, n_file - n_loaded
    te_prefixes = {"text_encoder": ("lora_te_", "lora_te1_"), "text_encoder_2": ("lora_te2_",)}
    keys = list(load_file(path))

    def benign(msg):
        # diffusers' "No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'" is
        # harmless when the file really has no module for that text encoder
        if "No LoRA keys associated to" not in msg:
            return False
        for comp, pre in te_prefixes.items():
            if f"prefix='{comp}'" in msg:
                return not any(key.startswith(pre) for key in keys)
        return False

    probs = [f"logged: {one_line(m)}" for m in cap.records if not benign(m)]
    if n_loaded != n_file:
        probs.append(f"{n_file} modules in the file, {n_loaded} LoRA layers injected")
    # smoke test: the pipeline runs with the adapter attached
    try:
        with torch.no_grad():
            kw = dict(prompt="abc", num_inference_steps=2, height=8, width=8, output_type="latent",
                      guidance_scale=1.0)
            pipe(**kw)
    except Exception as e:  # noqa: BLE001
        probs.append(f"pipeline call with the LoRA failed: {type(e).__name__}: {str(e)[:200]}")
    n_logged = len(cap.records)
    with cap.active():
        pipe.fuse_lora(components=[c for c, _ in comps], lora_scale=1.0, adapter_names=["mood"])
        pipe.unload_lora_weights()
    probs += [f"logged while fusing: {one_line(m)}" for m in cap.records[n_logged:]]
    if count_lora_layers(pipe.unet) or count_lora_layers(pipe.text_encoder):
        probs.append("LoRA layers left after unload")
    got = tm.to_single_file(family, models["unet"], models["te1"], models["te2"])
    ok, r.max_rel, r.delta_rel, r.n_cmp, r.n_changed, p2 = compare(got, bake, base)
    probs += p2
    r.notes = probs
    r.ok = not probs
    return r


# ------------------------------------------------------------------------------------------------
# kohya sd-scripts
# ------------------------------------------------------------------------------------------------

def kohya_models(family):
    m = tm.make_models(family)
    if family == "sdxl":
        m["unet"] = tm.make_kohya_sdxl_unet(load_from=m["unet"])
    tes = [m["te1"], m["te2"]] if family == "sdxl" else m["te1"]
    return m, tes


def reset_kohya_targets(k):
    # kohya quirk: LoRANetwork.__init__ does `target_modules += ...CONV2D_3X3` on the class attribute
    k.lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE = ["Transformer2DModel"]


def without_modules(path, mods, out):
    from safetensors.torch import save_file

    sd = load_file(path)
    with safe_open(path, "pt") as f:
        md = f.metadata() or {}
    save_file({key: v for key, v in sd.items() if key.split(".", 1)[0] not in mods}, out, metadata=md)


def explain_kohya_unmatched(r, name, family, path, unmatched, got, base, mood, tmpdir):
    """kohya's LoRANetwork only targets Linear/Conv2d inside Transformer2DModel, ResnetBlock2D, Downsample2D and
    Upsample2D (and the CLIP attention/MLP); LyCORIS also trains conv_in, conv_out, time_embedding etc.  When
    every unmatched module is of that kind and kohya's merge equals mood's bake of the file without them, the
    failure is kohya's limitation."""
    import re

    outside = re.compile(r"^lora_unet_(conv_in|conv_out|time_embedding_linear_[12]|add_embedding_linear_[12]|"
                         r"input_blocks_0_0|out_2|time_embed_[02]|label_emb_0_[02])$")
    if not unmatched or not mood or not all(outside.match(m) for m in unmatched):
        return
    alt = os.path.join(tmpdir, name.replace(":", "_") + ".kohya_subset.safetensors")
    without_modules(path, set(unmatched), alt)
    baked, _ = bake(mood, family, alt, alt.replace(".safetensors", ".baked.safetensors"))
    ok, *_ = compare(got, baked, base)
    if ok:
        r.known = f"[kohya-targets] {', '.join(sorted(unmatched))}"


def check_kohya(name, family, path, bake, base, k, mood=None, tmpdir=None):
    r = Result(name, "kohya lora.py")
    sd = load_file(path)
    file_mods = set(lora_modules(sd))
    probs = []
    # 1) module set and strict state-dict load
    reset_kohya_targets(k)
    m, tes = kohya_models(family)
    net, wsd = k.lora.create_network_from_weights(1.0, path, None, tes, m["unet"], weights_sd=dict(sd))
    reset_kohya_targets(k)
    net_mods = {lo.lora_name for lo in net.text_encoder_loras + net.unet_loras}
    r.loaded = len(net_mods & file_mods)
    r.unmatched = len(file_mods - net_mods)
    if file_mods - net_mods:
        probs.append(f"modules kohya did not create: {sorted(file_mods - net_mods)[:3]}")
    net.apply_to(tes, m["unet"], True, True)
    info = net.load_state_dict(wsd, strict=False)
    if info.missing_keys:
        probs.append(f"missing keys {info.missing_keys[:3]}")
    if info.unexpected_keys:
        probs.append(f"unexpected keys {info.unexpected_keys[:3]}")
    # 2) merge_to on fresh models
    reset_kohya_targets(k)
    m, tes = kohya_models(family)
    net, wsd = k.lora.create_network_from_weights(1.0, path, None, tes, m["unet"], weights_sd=dict(sd),
                                                  for_inference=True)  # LoRAInfModule has merge_to
    reset_kohya_targets(k)
    net.merge_to(tes, m["unet"], wsd, torch.float32, "cpu")
    got = tm.to_single_file(family, m["unet"], m["te1"], m["te2"])
    ok, r.max_rel, r.delta_rel, r.n_cmp, r.n_changed, p2 = compare(got, bake, base)
    probs += p2
    r.notes, r.ok = probs, not probs
    if not r.ok:
        explain_kohya_unmatched(r, name, family, path, sorted(file_mods - net_mods), got, base, mood, tmpdir)
    return r


def check_kohya_merge_script(name, family, path, bake, base, k, mood=None, tmpdir=None):
    r = Result(name, "kohya merge_lora.py" if family != "sdxl" else "kohya sdxl_merge_lora.py")
    m = tm.make_models(family)
    if family == "sdxl":
        m["unet"] = tm.make_kohya_sdxl_unet(load_from=m["unet"])
    mod = k.sdxl_merge_lora if family == "sdxl" else k.merge_lora
    lines = []

    class H(logging.Handler):
        def emit(self, rec):
            lines.append(rec.getMessage())

    h = H(logging.INFO)
    lg = mod.logger
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    try:
        reset_kohya_targets(k)
        if family == "sdxl":
            mod.merge_to_sd_model(m["te1"], m["te2"], m["unet"], [path], [1.0], [], torch.float32)
        else:
            mod.merge_to_sd_model(m["te1"], m["unet"], [path], [1.0], torch.float32)
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)
    nomod = [ln for ln in lines if "no module found" in ln]
    n_file = len(lora_modules(load_file(path)))
    r.loaded, r.unmatched = n_file - len(nomod), len(nomod)
    probs = [f"kohya: {ln}" for ln in nomod[:3]]
    got = tm.to_single_file(family, m["unet"], m["te1"], m["te2"])
    ok, r.max_rel, r.delta_rel, r.n_cmp, r.n_changed, p2 = compare(got, bake, base)
    probs += p2
    r.notes, r.ok = probs, not probs
    if not r.ok:
        unmatched = sorted({ln.split("LoRA weight: ")[1].split(".")[0] for ln in nomod})
        explain_kohya_unmatched(r, name, family, path, unmatched, got, base, mood, tmpdir)
    return r


def check_stack_vs_inputs(name, family, path, inputs, k):
    """End to end, without mood's bake: kohya's merge script applied to the stack file at 1.0 must equal kohya's
    merge script applied to the input files one after the other with their weights (kohya inputs only)."""
    r = Result(name, "kohya: stack == inputs")
    mod = k.sdxl_merge_lora if family == "sdxl" else k.merge_lora

    def merged(files, ratios):
        m = tm.make_models(family)
        if family == "sdxl":
            m["unet"] = tm.make_kohya_sdxl_unet(load_from=m["unet"])
        reset_kohya_targets(k)
        if family == "sdxl":
            mod.merge_to_sd_model(m["te1"], m["te2"], m["unet"], files, ratios, [], torch.float32)
        else:
            mod.merge_to_sd_model(m["te1"], m["unet"], files, ratios, torch.float32)
        return tm.to_single_file(family, m["unet"], m["te1"], m["te2"])

    got = merged([path], [1.0])
    ref = merged([f for f, _ in inputs], [w for _, w in inputs])
    base = tm.to_single_file(family, **{c: v for c, v in zip(("unet", "te1", "te2"), _kohya_base(family, k))})
    ok, r.max_rel, r.delta_rel, r.n_cmp, r.n_changed, probs = compare(got, ref, base)
    with safe_open(path, "pt") as f:
        dts = {str(f.get_slice(key).get_dtype()) for key in f.keys()}
    if not ok and dts <= {"F16"} and r.delta_rel <= F16_DELTA_TOL and len(probs) == 1 and "differ" in probs[0]:
        # the stack's factors are rounded to F16 once: compare the change, not the weights
        ok, probs = True, []
        r.notes.append(f"F16 factors: compared on the change, tolerance {F16_DELTA_TOL:g}")
    r.loaded = len(lora_modules(load_file(path)))
    r.notes, r.ok = r.notes + probs, ok
    return r


def _kohya_base(family, k):
    m = tm.make_models(family)
    if family == "sdxl":
        m["unet"] = tm.make_kohya_sdxl_unet(load_from=m["unet"])
    return m["unet"], m["te1"], m["te2"]


# ------------------------------------------------------------------------------------------------
# LyCORIS (kohya integration)
# ------------------------------------------------------------------------------------------------

def check_lycoris(name, family, path, bake, base):
    from lycoris.kohya import LycorisNetworkKohya, create_network_from_weights

    # create_network_from_weights first builds a LycorisNetworkKohya with the class-level preset and then
    # empties it; lycoris-lora 4.1.3's default ("full") preset fails on SD U-Nets with "duplicated lora name:
    # lora_unet_time_embedding_linear_1" (it lists both the class TimestepEmbedding and the names
    # time_embedding.linear_1/2), so target nothing there.
    LycorisNetworkKohya.apply_preset({"unet_target_module": [], "unet_target_name": [],
                                      "text_encoder_target_module": [], "text_encoder_target_name": []})
    r = Result(name, "lycoris kohya")
    sd = load_file(path)
    file_mods = set(lora_modules(sd))
    m = tm.make_models(family)
    tes = [m["te1"], m["te2"]] if family == "sdxl" else m["te1"]
    unet = m["unet"]
    if family == "sdxl":
        # LyCORIS names U-Net modules from the model it is given: SGM names need kohya's SGM U-Net
        unet = tm.make_kohya_sdxl_unet(load_from=m["unet"])
    net, wsd = create_network_from_weights(1.0, path, None, tes, unet, weights_sd=dict(sd))
    mods = {lo.lora_name for lo in net.text_encoder_loras + net.unet_loras}
    kinds = sorted({type(lo).__name__ for lo in net.text_encoder_loras + net.unet_loras})
    r.loaded, r.unmatched = len(mods & file_mods), len(file_mods - mods)
    probs = []
    if file_mods - mods:
        probs.append(f"modules LyCORIS did not load: {sorted(file_mods - mods)[:3]}")
    net.merge_to(tes, unet, wsd, torch.float32, "cpu")
    got = tm.to_single_file(family, unet if family == "sdxl" else m["unet"], m["te1"], m["te2"])
    ok, r.max_rel, r.delta_rel, r.n_cmp, r.n_changed, p2 = compare(got, bake, base)
    probs += p2
    if kinds != ["LoConModule"]:
        probs.append(f"module classes {kinds} (expected LoConModule)")
    r.notes = probs
    r.ok = not probs
    return r


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def run_mood(mood, args, out):
    p = subprocess.run([mood] + args + ["-o", out], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"mood {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return (p.stdout + p.stderr).strip()


def bake(mood, family, lora, out):
    p = subprocess.run([mood, "bake", "--model", tm.base_path(family), "--lora", lora, "-o", out],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"mood bake failed ({p.returncode}): {p.stderr.strip()}")
    import re

    warn = [ln for ln in (p.stdout + p.stderr).splitlines()
            if "warn" in ln.lower() or any(int(x) for x in re.findall(r"(\d+) unmatched", ln))]
    return load_file(out), warn


def mood_version(mood):
    try:
        return subprocess.check_output([mood, "info"], text=True).splitlines()[0].strip()
    except Exception:  # noqa: BLE001
        return "version unknown"


def git_head():
    try:
        head = subprocess.check_output(["git", "-C", REPO, "rev-parse", "--short=8", "HEAD"], text=True).strip()
        dirty = subprocess.check_output(["git", "-C", REPO, "status", "--short", "--", "lora"], text=True).split()
        return head + (f" (+ uncommitted changes in {', '.join(x for x in dirty if '/' in x)})" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def versions(sd_scripts):
    import importlib.metadata as im

    v = {}
    for d in ("torch", "diffusers", "transformers", "peft", "lycoris-lora", "safetensors"):
        try:
            v[d] = im.version(d)
        except im.PackageNotFoundError:
            v[d] = "missing"
    try:
        v["sd-scripts"] = subprocess.check_output(["git", "-C", sd_scripts, "rev-parse", "--short=8", "HEAD"],
                                                  text=True).strip()
    except Exception:  # noqa: BLE001
        v["sd-scripts"] = "unknown"
    return v


def table(rows, header):
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(n) for x, n in zip(r, w)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (n + 2) for n in w) + "|"] + [line(r) for r in rows])


def stack_inputs(args):
    """[(file, weight)] of a `lora stack` command whose inputs are all kohya fixtures with one weight each."""
    if args[:2] != ["lora", "stack"]:
        return None
    res = []
    for a in args[2:]:
        if a.startswith("--"):
            return None if a != "--dtype" else res
        parts = a.split(":")
        if os.sep + "kohya" + os.sep not in parts[0] or len(parts) != 2:
            return None
        res.append((parts[0], float(parts[1])))
    return res


def run_checks(name, family, out, baked, base, k, tmpdir, mood, with_metadata=True, args=None):
    checks = [
        ("metadata", lambda: check_metadata(name, family, out, k)),
        ("diffusers", lambda: check_diffusers(name, family, out, baked, base, tmpdir)),
        ("kohya lora.py", lambda: check_kohya(name, family, out, baked, base, k, mood, tmpdir)),
        ("kohya merge script", lambda: check_kohya_merge_script(name, family, out, baked, base, k, mood, tmpdir)),
        ("lycoris kohya", lambda: check_lycoris(name, family, out, baked, base)),
    ]
    ins = stack_inputs(args or [])
    if ins:
        checks.append(("kohya: stack == inputs", lambda: check_stack_vs_inputs(name, family, out, ins, k)))
    res = []
    for label, fn in checks:
        if label == "metadata" and not with_metadata:
            continue
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001
            r = Result(name, label)
            r.notes = [f"exception {type(e).__name__}: {str(e)[:300]}"]
            traceback.print_exc()
        res.append(r)
        if label == "diffusers" and not r.ok:
            try:
                w = check_diffusers_workaround(name, family, out, baked, base, tmpdir)
            except Exception as e:  # noqa: BLE001
                w = Result(name, "diffusers (bugs sidestepped)")
                w.notes = [f"exception {type(e).__name__}: {str(e)[:300]}"]
            res.append(w)
            if w.ok:
                text = " ".join(r.notes)
                sigs = {"alpha": ("alpha_pattern keys did not match",),
                        "format": ("to_q_lora", "to_k_lora", "to_v_lora")}
                bugs = [DIFFUSERS_BUGS[b] for b, sig in sigs.items() if any(x in text for x in sig) and
                        (b != "format" or "UNEXPECTED" in text)]
                r.known = " ".join(b.split("]")[0] + "]" for b in bugs) if bugs else None
        print(f"   {r.loader:26s} {r.verdict}  loaded {r.loaded} unmatched {r.unmatched} "
              f"max rel {r.max_rel} delta rel {r.delta_rel}" + ("".join(f"\n      - {n}" for n in r.notes)),
              flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mood", default=os.path.join(REPO, "build-verify", "mood"))
    ap.add_argument("--sd-scripts", default=tm._SD_SCRIPTS)
    ap.add_argument("--keep", help="write mood's outputs and bakes to this folder and keep them")
    ap.add_argument("--no-report", action="store_true", help="do not write tests/fixtures/verify_report.md")
    ap.add_argument("--only", help="comma-separated output names to check")
    ap.add_argument("--no-controls", action="store_true", help="skip the kohya-written control files")
    ap.add_argument("--file", action="append", default=[], metavar="PATH:FAMILY",
                    help="also check an existing LoRA file (family sd1|sd2|sdxl) as if mood had written it")
    ap.add_argument("--strict", action="store_true",
                    help="also fail on KNOWN (reference-tool bugs/limitations proven by a rerun)")
    a = ap.parse_args(argv)
    mood = os.path.abspath(a.mood)
    tm.set_sd_scripts(a.sd_scripts)
    k = tm.kohya()
    import diffusers

    diffusers.utils.logging.set_verbosity_warning()
    logging.getLogger("peft").setLevel(logging.WARNING)
    torch.manual_seed(0)

    bases = {fam: load_file(tm.base_path(fam)) for fam in tm.FAMILIES}
    results, produced, ctl_results = [], [], []
    tmp_ctx = tempfile.TemporaryDirectory(prefix="mood-verify-")
    tmpdir = a.keep or tmp_ctx.name
    os.makedirs(tmpdir, exist_ok=True)
    only = set(a.only.split(",")) if a.only else None
    for name, family, args, desc in outputs():
        if only and name not in only:
            continue
        out = os.path.join(tmpdir, name + ".safetensors")
        print(f"== {name}: mood {' '.join(os.path.relpath(x, REPO) if x.startswith(REPO) else x for x in args)}",
              flush=True)
        try:
            run_mood(mood, args, out)
            baked, bake_warn = bake(mood, family, out, os.path.join(tmpdir, name + ".baked.safetensors"))
        except Exception as e:  # noqa: BLE001
            r = Result(name, "mood")
            r.notes = [str(e)]
            results.append(r)
            continue
        produced.append((name, desc))
        if bake_warn:
            r = Result(name, "mood bake")
            r.notes = bake_warn
            results.append(r)
        results += run_checks(name, family, out, baked, bases[family], k, tmpdir, mood, args=args)
    for spec in a.file:
        path, family = spec.rsplit(":", 1)
        name = os.path.basename(path)
        print(f"== file {path} ({family})", flush=True)
        baked, bake_warn = bake(mood, family, path, os.path.join(tmpdir, name + ".baked.safetensors"))
        produced.append((name, f"existing file {path}"))
        if bake_warn:
            r = Result(name, "mood bake")
            r.notes = bake_warn
            results.append(r)
        results += run_checks(name, family, path, baked, bases[family], k, tmpdir, mood)
    if not a.no_controls:
        for name, family, path, desc in controls():
            if only and name not in only and "controls" not in only:
                continue
            print(f"== control {name}: {os.path.relpath(path, REPO)}", flush=True)
            baked, _ = bake(mood, family, path, os.path.join(tmpdir, name.replace(":", "_") + ".baked.safetensors"))
            ctl_results += run_checks(name, family, path, baked, bases[family], k, tmpdir, mood, with_metadata=False)

    header = ["output", "loader", "modules loaded", "unmatched", "tensors compared (changed)", "max rel diff vs bake",
              "delta rel diff", "verdict"]
    tab = table([r.row() for r in results], header)
    ctab = table([r.row() for r in ctl_results], header) if ctl_results else ""
    fails = [r for r in results if r.verdict == "FAIL" or (a.strict and not r.ok)]
    known = [r for r in results if r.verdict == "KNOWN"]
    print()
    print(tab)
    def note(r):
        return f"* {r.out} / {r.loader}: " + ("KNOWN " + r.known + ": " if r.known else "") + \
            one_line("; ".join(r.notes), 240)

    notes = [note(r) for r in results if r.notes or r.known]
    cnotes = [note(r) for r in ctl_results if r.notes or r.known]
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    if ctab:
        print("\ncontrols (files written by kohya sd-scripts, not by mood; not counted in the exit status):\n" + ctab)
        if cnotes:
            print("\n".join(cnotes))
    summary = (f"{sum(r.ok for r in results)} of {len(results)} checks of mood outputs passed, {len(known)} KNOWN "
               f"(reference-tool bug or limitation, explained and proven by a rerun), "
               f"{sum(r.verdict == 'FAIL' for r in results)} FAIL")
    print("\n" + summary)
    if not a.no_report:
        v = versions(a.sd_scripts)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines = ["# mood-written LoRAs in the reference tools", "",
                 f"Written by `tools/verify_mood_loras.py` on {now}: `tools/.venv/bin/python tools/verify_mood_loras.py "
                 "--mood build-verify/mood --sd-scripts /tmp/sd-scripts`.", "",
                 "Versions: " + ", ".join(f"{d} {x}" for d, x in v.items()) + ".", "",
                 f"mood: `{os.path.relpath(mood, REPO) if mood.startswith(REPO) else mood}`, {mood_version(mood)}, "
                 f"repository at {git_head()}.", "",
                 "Each output is written by mood from committed fixtures, loaded by each tool, merged at strength 1, "
                 "and every tensor compared with `mood bake` of the same file on `tests/fixtures/bases/<family>_base`"
                 f" (per element |a-b| <= {ATOL:g} + {RTOL:g}·|b|). \"max rel\" = max over tensors of max|a-b|/max|b|; "
                 "\"delta rel\" = the same on the change against the base. \"modules loaded\" counts LoRA modules "
                 "(diffusers: PEFT layers injected; metadata: modules in the file).", "",
                 "Outputs:", ""]
        lines += [f"* `{n}`: {d}" for n, d in produced]
        lines += ["", tab, "", "Verdicts: PASS; FAIL (counted in the exit status); KNOWN = a reference-tool bug or "
                  "limitation listed below, proven by a rerun that sidesteps it (not counted unless --strict).", "",
                  "Known reference-tool issues:", ""] + [f"* {x}" for x in KNOWN_ISSUES] + [""]
        if notes:
            lines += ["Notes:", ""] + notes + [""]
        if ctab:
            lines += ["Controls: files written by kohya sd-scripts itself (committed fixtures), same loaders, not "
                      "counted in the exit status.", "", ctab, ""]
            if cnotes:
                lines += cnotes + [""]
        lines.append(summary + ".")
        with open(REPORT, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {os.path.relpath(REPORT, REPO)}")
    tmp_ctx.cleanup()
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
