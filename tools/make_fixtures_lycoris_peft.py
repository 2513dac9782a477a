"""Reference fixtures for LyCORIS (kohya integration) and diffusers/PEFT LoRA files.

Writes tests/fixtures/lycoris/ and tests/fixtures/peft/: adapter files saved by the reference
libraries themselves, the merged checkpoint tensors that differ from the base
(`<case>.expected.safetensors`) and `cases.json` (see tests/fixtures/README.md, sections
"## lycoris" and "## peft").

How to run (from the repository root, after tools/tiny_models.py has written tests/fixtures/bases/):

    git clone SD_SCRIPTS_REPO /tmp/sd-scripts  # kohya-ss/sd-scripts, kohya converters, commit 48d368fa
    tools/.venv/bin/python tools/make_fixtures_lycoris_peft.py --sd-scripts /tmp/sd-scripts \
        [--comfyui /tmp/comfy_ref] [--only lycoris|peft]

    --comfyui DIR: a directory holding ComfyUI's comfy/weight_adapter/base.py (commit 9c0cf36c) and
    comfy/weight_adapter/lora.py (commit 6fd406fb), e.g. a ComfyUI checkout.  Only those two files
    are loaded (comfy.model_management is replaced by a stub providing cast_to_device).  They are the
    reference for the DoRA strength-0.5 case; without them that case is skipped (with a warning).

Python environment: tools/.venv (torch, diffusers, transformers, peft, lycoris-lora, safetensors).
Everything runs on the CPU; the output is deterministic (fixed seeds, no timestamps) and the script
can be re-run (it rewrites both folders completely).

Method (per case)
  1. tiny_models.make_models(family) builds the tiny SD model (weights identical to
     tests/fixtures/bases/<family>_base.safetensors; checked once per family).
  2. The adapter is attached with the reference library (lycoris.kohya.create_network /
     diffusers add_adapter + peft.inject_adapter_in_model), every adapter parameter is overwritten
     with seeded random values (the libraries initialise some factors to zero), rounded to the
     dtype the file is saved in, and the file is written by the library's own save routine
     (LycorisNetworkKohya.save_weights / StableDiffusion[XL]Pipeline.save_lora_weights).
  3. The merged weights are computed by the library's own code, on a float64 copy of the model
     (same code path, less rounding noise in the reference):
       LyCORIS: LycorisBaseModule.get_merged_weight(multiplier) (what merge_to writes), verified per
                module against the module's forward() (rebuild mode) on a random input; where they
                disagree (LoHa/LoKr: get_merged_weight applies alpha/r twice in lycoris-lora 4.1.3)
                the effective weight of the training forward pass is used (captured from forward()).
       PEFT:    diffusers UNet2DConditionModel.fuse_lora(lora_scale) and
                diffusers.loaders.lora_base.fuse_text_encoder_lora(te, lora_scale).
  4. The merged float64 weights are rounded to float32, loaded into a fresh model, converted with
     tiny_models.to_single_file (kohya's converters) and only the tensors that differ from the base
     are stored.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import types
import zlib

import torch
import torch.nn.functional as F

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TOOLS)
import tiny_models as tm  # noqa: E402

import diffusers  # noqa: E402,F401
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from diffusers.loaders.lora_base import fuse_text_encoder_lora  # noqa: E402
from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers  # noqa: E402
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import lycoris  # noqa: E402,F401
from lycoris.kohya import create_network, create_network_from_weights  # noqa: E402

REPO = os.path.dirname(TOOLS)
FIXTURES = os.path.join(REPO, "tests", "fixtures")
OUT_LYCO = os.path.join(FIXTURES, "lycoris")
OUT_PEFT = os.path.join(FIXTURES, "peft")
GENERATOR = "tools/make_fixtures_lycoris_peft.py"
RTOL, ATOL = 1e-5, 1e-6
CDT = torch.float64  # compute dtype of the references (float32 for OFT/BOFT, see OFT_NOTE)


def check_tol():
    """max relative forward-vs-merged difference accepted when verifying a reference"""
    return 1e-9 if CDT == torch.float64 else 2e-6

# Module subset.  The tiny models have ~300 adaptable layers; adapting all of them would make every
# case ~300 KB (the 2 MB budget covers both folders), so every case targets the same representative
# subset, chosen to cover each kind of layer and each LDM/SGM name-mapping rule: a whole attention
# block (norm, 1x1-conv (SD1) or Linear (SD2/SDXL) proj_in/proj_out, attn1/attn2 q/k/v/out, ff), a
# resnet with conv_shortcut (up path, skip-concatenated input: conv1/conv2 3x3, time_emb_proj,
# conv_shortcut 1x1, norm1/norm2 -> output_blocks.4.0.in_layers.2/out_layers.3/emb_layers.1/skip_connection), a
# downsampler, an upsampler (SD1 output_blocks.2.1.conv / SDXL output_blocks.2.2.conv), mid-block
# attn2, an up-path proj_out, conv_in/conv_out/time_embedding (SDXL: add_embedding), and one whole
# text-encoder layer (q/k/v/out_proj, fc1/fc2, layer norms) per text encoder.
# Regexes on module paths (re.match, as LyCORIS' *_target_name; PEFT gets the expanded name list).
SUBSET_UNET = {
    "sd1": [r"down_blocks\.1\.attentions\.0\..*", r"up_blocks\.1\.resnets\.1\..*",
            r"down_blocks\.0\.downsamplers\.0\.conv$", r"up_blocks\.0\.upsamplers\.0\.conv$",
            r"mid_block\.attentions\.0\.transformer_blocks\.0\.attn2\..*", r"up_blocks\.3\.attentions\.2\.proj_out$",
            r"conv_in$", r"conv_out$", r"time_embedding\.linear_1$"],
    "sdxl": [r"down_blocks\.1\.attentions\.0\..*", r"up_blocks\.1\.resnets\.1\..*",
             r"down_blocks\.0\.downsamplers\.0\.conv$", r"up_blocks\.0\.upsamplers\.0\.conv$",
             r"mid_block\.attentions\.0\.transformer_blocks\.1\.attn2\..*", r"up_blocks\.1\.attentions\.2\.proj_out$",
             r"conv_in$", r"time_embedding\.linear_1$", r"add_embedding\.linear_1$"],
}
SUBSET_UNET["sd2"] = SUBSET_UNET["sd1"]
SUBSET_TE = [r"text_model\.encoder\.layers\.1\..*"]

# LyCORIS preset (kohya integration): only the name lists, no module classes.  (Note: lycoris-lora
# 4.1.3's built-in "full" preset cannot be used on SD U-Nets at all: it lists both the class
# "TimestepEmbedding" and the names "time_embedding.linear_1/2", and create_network() fails with
# "duplicated lora name: lora_unet_time_embedding_linear_1".)


def lyco_preset_toml(family):
    q = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    return (f"enable_conv = true\nunet_target_module = []\nunet_target_name = {q(SUBSET_UNET[family])}\n"
            f"text_encoder_target_module = []\ntext_encoder_target_name = {q(SUBSET_TE)}\n")


def subset_names(root, patterns, kinds=(torch.nn.Linear, torch.nn.Conv2d)):
    import re

    return [n for n, m in root.named_modules()
            if n and isinstance(m, kinds) and any(re.match(p, n) for p in patterns)]


BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
FILE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def log(*a):
    print(*a, flush=True)


def seed_of(tag: str) -> int:
    return zlib.crc32(tag.encode("utf-8"))


def rel(path, start):
    return os.path.relpath(path, start).replace(os.sep, "/")


# ------------------------------------------------------------------------------------------------
# models, names, bases
# ------------------------------------------------------------------------------------------------

class _TextModelHolder(torch.nn.Module):
    """Only used if a text encoder has no `text_model.` level (transformers >= 5 CLIPTextModel without
    tiny_models' wrapper): gives it the transformers-4 module names real LoRA files use."""

    def __init__(self, te):
        super().__init__()
        self.text_model = te


def named_root(te):
    if any(n.startswith("text_model.") for n, _ in te.named_modules()):
        return te
    return _TextModelHolder(te)


def components(models):
    """[(component, module)] in a fixed order; component in unet/te1/te2."""
    out = [("unet", models["unet"]), ("te1", models["te1"])]
    if models.get("te2") is not None:
        out.append(("te2", models["te2"]))
    return out


def module_index(models):
    """id(module) -> (component, module path) for every Linear/Conv/Norm of the (raw) models."""
    idx = {}
    for comp, root in components(models):
        for name, mod in root.named_modules():
            if name:
                idx[id(mod)] = (comp, name)
    return idx


_BASES = {}


def base_tensors(family):
    """The committed base file, checked once against tiny_models' in-memory models."""
    if family not in _BASES:
        path = tm.base_path(family)
        base = load_file(path)
        m = tm.make_models(family)
        sd = tm.to_single_file(family, m["unet"], m["te1"], m["te2"])
        diff = tm.changed_tensors(sd, base)
        if diff:
            raise RuntimeError(f"tiny_models.make_models({family!r}) differs from {path}: {sorted(diff)[:5]}")
        _BASES[family] = base
        log(f"[base] {family}: make_models() reproduces {rel(path, REPO)} ({len(sd)} converted tensors bit-identical)")
    return _BASES[family]


def expected_from_weights(family, new_weights):
    """new_weights: {(component, param name): float64 tensor}.  Returns the changed single-file tensors."""
    fresh = tm.make_models(family)
    params = {comp: dict(root.named_parameters()) for comp, root in components(fresh)}
    with torch.no_grad():
        for (comp, pname), t in new_weights.items():
            p = params[comp][pname]
            if p.shape != t.shape:
                t = t.reshape(p.shape)
            p.copy_(t.to(p.dtype))
    sd = tm.to_single_file(family, fresh["unet"], fresh["te1"], fresh["te2"])
    base = base_tensors(family)
    changed = tm.changed_tensors(sd, base)
    missing = [k for k in changed if k not in base]
    if missing:
        raise RuntimeError(f"converted keys not in base: {missing[:5]}")
    return changed


def canonicalize_header(path):
    """safetensors (Rust) writes the __metadata__ map in a per-process random order; rewrite the header
    with the metadata keys sorted (tensor entries, offsets and data untouched; same compact JSON and
    8-byte space padding as the writer) so that re-runs give byte-identical files."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=lambda kv: dict(kv))
    data = raw[8 + n:]
    out = {}
    if "__metadata__" in head:
        out["__metadata__"] = dict(sorted(head.pop("__metadata__").items()))
    out.update(head)
    h = json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + data)


def write_expected(path, changed, desc):
    save_file({k: v.contiguous() for k, v in sorted(changed.items())}, path, metadata={"mood_fixture": desc})
    canonicalize_header(path)


# ------------------------------------------------------------------------------------------------
# LyCORIS
# ------------------------------------------------------------------------------------------------

# per-parameter std of the seeded random values (overwrites LyCORIS' init, some factors start at 0)
LYCO_STD = {
    "locon": {"*": 0.2},
    "loha": {"*": 0.5},
    "lokr": {"lokr_w1": 0.5, "lokr_w1_a": 0.6, "lokr_w1_b": 0.6, "lokr_w2": 0.15, "*": 0.3},
    "ia3": {"*": 0.2},
    "diag-oft": {"*": 0.1},
    "boft": {"*": 0.1},
    "glora": {"*": 0.2},
}


def lyco_randomize(net, algo, seed, file_dtype):
    """Seeded values for every adapter parameter; values rounded to the file dtype (the reference is
    computed from exactly the values stored in the file)."""
    g = torch.Generator().manual_seed(seed)
    stds = LYCO_STD.get(algo, {"*": 0.2})
    with torch.no_grad():
        for lora in net.loras:
            cls = type(lora).__name__
            if cls == "FullModule":  # weight/bias hold base + diff after apply_to()
                org = lora.org_weight.to(CDT)
                d = (0.03 * torch.randn(org.shape, generator=g, dtype=CDT)).to(file_dtype).to(CDT)
                lora.weight.copy_(org + d)
                if lora.bias is not None:
                    ob = lora.org_bias[0].to(CDT)
                    db = (0.01 * torch.randn(ob.shape, generator=g, dtype=CDT)).to(file_dtype).to(CDT)
                    lora.bias.copy_(ob + db)
                continue
            for name, p in lora.named_parameters():
                leaf = name.split(".")[0]
                if leaf == "dora_scale":  # magnitude: LyCORIS' init (norms of W) times 1 + 0.1 N
                    v = p * (1 + 0.1 * torch.randn(p.shape, generator=g, dtype=CDT))
                elif cls == "NormModule":
                    v = (0.1 if leaf == "w_norm" else 0.05) * torch.randn(p.shape, generator=g, dtype=CDT)
                elif leaf == "rescale":
                    v = 1 + 0.1 * torch.randn(p.shape, generator=g, dtype=CDT)
                else:
                    v = stds.get(leaf, stds["*"]) * torch.randn(p.shape, generator=g, dtype=CDT)
                p.copy_(v.to(file_dtype).to(CDT))


def _probe_input(mod, g):
    if isinstance(mod, torch.nn.Linear):
        return torch.randn(3, mod.in_features, generator=g, dtype=CDT)
    if isinstance(mod, torch.nn.Conv2d):
        return torch.randn(2, mod.in_channels, 5, 5, generator=g, dtype=CDT)
    if isinstance(mod, torch.nn.GroupNorm):
        return torch.randn(2, mod.num_channels, 3, 3, generator=g, dtype=CDT)
    if isinstance(mod, torch.nn.LayerNorm):
        return torch.randn(3, *mod.normalized_shape, generator=g, dtype=CDT)
    raise TypeError(type(mod))


def _apply(mod, x, w, b):
    if isinstance(mod, torch.nn.Linear):
        return F.linear(x, w, b)
    if isinstance(mod, torch.nn.Conv2d):
        return F.conv2d(x, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)
    if isinstance(mod, torch.nn.GroupNorm):
        return F.group_norm(x, mod.num_groups, w, b, mod.eps)
    return F.layer_norm(x, mod.normalized_shape, w, b, mod.eps)


def _orig_weight_bias(lora, mod):
    if type(lora).__name__ == "FullModule":
        return lora.org_weight.to(CDT), (lora.org_bias[0].to(CDT) if lora.org_bias is not None else None)
    return mod.weight.detach(), (mod.bias.detach() if getattr(mod, "bias", None) is not None else None)


def _forward_effective_weight(lora, mod, x):
    """Weight/bias the module's forward() (rebuild mode) uses: base + the delta it passes to its op."""
    rec = {}
    orig_op = lora.op

    def op(inp, *a, **kw):
        rec["w"] = kw["weight"] if "weight" in kw else a[0]
        rec["b"] = kw["bias"] if "bias" in kw else (a[1] if len(a) > 1 else None)
        return orig_op(inp, *a, **kw)

    lora.op = op
    try:
        lora.forward(x)
    finally:
        lora.op = orig_op
    w0, b0 = _orig_weight_bias(lora, mod)
    if type(lora).__name__ == "FullModule" and not lora.is_diff:
        return rec["w"], rec["b"]  # full replacement weight
    w = w0 + rec["w"]
    b = b0 if rec["b"] is None else (rec["b"] if b0 is None else b0 + rec["b"])
    return w, b


def lyco_merged_weights(net, index, multiplier, seed, stats):
    """{(component, param): tensor} of the merged weights, per module from get_merged_weight, verified
    against forward(); fallback to the forward's effective weight where they disagree."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for lora in net.loras:
        lora.multiplier = multiplier
    with torch.no_grad():
        for lora in net.loras:
            mod = lora.org_module[0]
            comp, name = index[id(mod)]
            x = _probe_input(mod, g)
            y_fwd = lora.forward(x)
            w0, b0 = _orig_weight_bias(lora, mod)
            w, b = lora.get_merged_weight(multiplier, w0.shape, None)
            if b is None:
                b = b0
            y = _apply(mod, x, w, b)
            err = ((y - y_fwd).abs().max() / y_fwd.abs().max().clamp_min(1e-30)).item()
            if err > check_tol():
                w, b = _forward_effective_weight(lora, mod, x)
                y = _apply(mod, x, w, b)
                err2 = ((y - y_fwd).abs().max() / y_fwd.abs().max().clamp_min(1e-30)).item()
                if err2 > check_tol():
                    raise RuntimeError(f"{lora.lora_name}: forward-effective weight does not reproduce forward ({err2})")
                stats["fallback"] += 1
                stats["merge_err"] = max(stats["merge_err"], err)
            stats["modules"] += 1
            out[(comp, name + ".weight")] = w.detach().clone()
            if b is not None and (b0 is None or not torch.equal(b, b0)):
                out[(comp, name + ".bias")] = b.detach().clone()
            stats["rel_delta"].append(((w - w0).norm() / w0.norm()).item())
    return out


def lyco_build(family, algo, net_kw, models, network_dim, network_alpha):
    """create_network on (float64) models; returns the applied network."""
    te_roots = [named_root(models["te1"])] + ([named_root(models["te2"])] if models.get("te2") is not None else [])
    te_arg = te_roots if len(te_roots) > 1 else te_roots[0]
    preset = os.path.join(PRESET_DIR, f"{family}.toml")
    with open(preset, "w") as f:
        f.write(lyco_preset_toml(family))
    net = create_network(1.0, network_dim, network_alpha, None, te_arg, models["unet"], algo=algo,
                         preset=preset, **net_kw)
    net.apply_to(te_arg, models["unet"], True, True)
    net.to(CDT)
    return net


# name, family, algo, create_network kwargs, (dim, alpha), file dtype, multipliers, note
LYCO_CASES = [
    ("locon", "sd1", "locon", dict(conv_dim=3, conv_alpha=2.0), (2, 1.0), "F32", [1.0, 0.6],
     "LoCon: linear rank 2 (alpha 1), 1x1/3x3 convs rank 3 (alpha 2)"),
    ("locon_tucker", "sd1", "locon", dict(conv_dim=3, conv_alpha=2.0, use_tucker=True), (2, 1.0), "F16", [1.0],
     "LoCon with use_tucker: lora_mid on 3x3 convs; saved as F16"),
    ("loha", "sd1", "loha", dict(conv_dim=2, conv_alpha=1.5), (2, 1.0), "F32", [1.0, 0.6], "LoHa, convs flattened"),
    ("loha_tucker", "sd1", "loha", dict(conv_dim=2, conv_alpha=1.5, use_tucker=True), (2, 1.0), "F32", [1.0],
     "LoHa with use_tucker: hada_t1/hada_t2 on 3x3 convs (hada_w*_a transposed there)"),
    ("lokr", "sd1", "lokr", dict(conv_dim=2, conv_alpha=1.0), (2, 1.0), "F32", [1.0],
     "LoKr default: lokr_w1 full; lokr_w2 decomposed (lokr_w2_a/b, scale alpha/r) where rank < max(b,d)/2, "
     "else full (scale 1)"),
    ("lokr_decompose_both", "sd1", "lokr", dict(conv_dim=1, conv_alpha=0.5, decompose_both=True), (1, 0.5), "F32", [1.0],
     "LoKr decompose_both, rank 1: lokr_w1_a/b wherever rank < max(a,c)/2"),
    ("lokr_tucker", "sd1", "lokr", dict(conv_dim=1, conv_alpha=0.75, use_tucker=True), (1, 0.75), "F32", [1.0],
     "LoKr use_tucker, rank 1: lokr_t2 on 3x3 convs whose w2 is decomposed"),
    ("lokr_full", "sd1", "lokr", dict(conv_dim=4, conv_alpha=1.0, full_matrix=True), (4, 1.0), "F32", [1.0],
     "LoKr full_matrix: both factors full everywhere; LyCORIS stores alpha = dim (4) and uses scale 1"),
    ("lokr_factor2", "sd1", "lokr", dict(conv_dim=2, conv_alpha=1.0, factor=2), (2, 1.0), "F32", [1.0],
     "LoKr factor=2: lokr_w1 is 2x2 (or 2xc) everywhere"),
    ("locon_dora_in", "sd1", "locon", dict(conv_dim=3, conv_alpha=2.0, dora_wd=True, wd_on_output=False), (2, 1.0),
     "F32", [1.0], "LoCon + DoRA, wd_on_output=False: dora_scale (1,in) / (1,in,1,1), per-input norms"),
    ("locon_dora_out", "sd1", "locon", dict(conv_dim=3, conv_alpha=2.0, dora_wd=True, wd_on_output=True), (2, 1.0),
     "F32", [1.0], "LoCon + DoRA, wd_on_output=True (LyCORIS >= 3.2 default): dora_scale (out,1) / (out,1,1,1)"),
    ("loha_dora_in", "sd1", "loha", dict(conv_dim=2, conv_alpha=1.5, dora_wd=True, wd_on_output=False), (2, 1.0),
     "F32", [1.0], "LoHa + DoRA, per-input dora_scale"),
    ("loha_dora_out", "sd1", "loha", dict(conv_dim=2, conv_alpha=1.5, dora_wd=True, wd_on_output=True), (2, 1.0),
     "F32", [1.0], "LoHa + DoRA, per-output dora_scale"),
    ("ia3", "sd1", "ia3", dict(conv_dim=4), (4, 1.0), "F16", [1.0],
     "IA3 (on_input=0 everywhere: kohya create_network has no train_on_input); saved as F16, so on_input is an F16 scalar"),
    ("diag_oft", "sd1", "diag-oft", dict(conv_dim=2), (2, 1.0), "F32", [1.0],
     "Diag-OFT, dim 2: 2x2 blocks (block size = smaller factor of factorization(out, 2)); constraint 0 "
     "(alpha 0 = no constraint)"),
    ("diag_oft_constrained", "sd1", "diag-oft", dict(conv_dim=4, constraint=0.02, rescaled=True), (4, 1.0), "F32", [1.0],
     "Diag-OFT dim 4 (4x4 blocks; 1x1 blocks = identity where out=4) with constraint 0.02 (clamp ||Q||_F to "
     "0.02*out_dim, active on most modules) and rescale (out,1[,1,1])"),
    ("boft", "sd1", "boft", dict(conv_dim=2), (2, 1.0), "F32", [1.0], "BOFT: oft_blocks (stages, nblk, b, b)"),
    ("glora", "sd1", "glora", dict(conv_dim=2, conv_alpha=1.0), (2, 1.0), "BF16", [1.0],
     "GLoRA (current layout a1 (in,r), a2 (r,in), b1 (out,r), b2 (r,in[,kh,kw])); saved as BF16"),
    ("full", "sd1", "full", dict(conv_dim=4), (4, 1.0), "F32", [1.0], "Full: diff (+ diff_b for layers with bias)"),
    ("locon_norms", "sd1", "locon", dict(conv_dim=3, conv_alpha=2.0, train_norm=True), (2, 1.0), "F32", [1.0],
     "LoCon + train_norm: GroupNorm/LayerNorm inside the target blocks get w_norm/b_norm"),
    ("sdxl_locon", "sdxl", "locon", dict(conv_dim=3, conv_alpha=2.0), (2, 1.0), "F16", [1.0],
     "SDXL LoCon: lora_te1_/lora_te2_ and diffusers-style lora_unet_down_blocks_... names; F16"),
    ("sd2_lokr", "sd2", "lokr", dict(conv_dim=2, conv_alpha=1.0), (2, 1.0), "F32", [1.0],
     "SD2 LoKr (OpenCLIP text encoder: q/k/v deltas land in rows of in_proj_weight)"),
]

OFT_NOTE = ("reference computed in float32 (lycoris' Cayley transform (I+Q)(I-Q)^-1 uses `.float().inverse()` "
            "and fails on float64 models), all other LyCORIS cases in float64")


def lyco_case(spec, out_dir, comfy):
    global CDT
    name, family, algo, kw, (dim, alpha), fdt_name, mults, desc = spec
    # lycoris' OFT/BOFT code hard-codes a float32 inverse and fails on float64 models
    CDT = torch.float32 if algo in ("diag-oft", "boft") else torch.float64
    fdt = FILE_DTYPES[fdt_name]
    seed = seed_of("lycoris/" + name)
    torch.manual_seed(seed)
    models = tm.make_models(family)
    for _, root in components(models):
        root.to(CDT)
    index = module_index(models)
    net = lyco_build(family, algo, kw, models, dim, alpha)
    lyco_randomize(net, algo, seed, fdt)

    fname = f"{name}.safetensors"
    path = os.path.join(out_dir, fname)
    args = {k: (str(v) if not isinstance(v, str) else v) for k, v in dict(algo=algo, **kw).items()}
    metadata = {
        "ss_network_module": "lycoris.kohya",
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps(args, sort_keys=True),
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": str(family == "sd2"),
        "mood_fixture": f"{name}: {desc}. {GENERATOR}",
    }
    net.save_weights(path, fdt, metadata)
    canonicalize_header(path)

    # the saved tensors must be exactly the values the reference uses
    saved = load_file(path)
    own = {k: v for k, v in net.state_dict().items()}
    for k, v in saved.items():
        if not torch.equal(v.to(CDT), own[k].to(CDT)):
            raise RuntimeError(f"{name}: saved {k} differs from the network value")

    bakes = []
    for m in mults:
        stats = {"fallback": 0, "modules": 0, "merge_err": 0.0, "rel_delta": []}
        weights = lyco_merged_weights(net, index, m, seed + 1, stats)
        changed = expected_from_weights(family, weights)
        suffix = "" if m == 1.0 else f"_m{str(m).replace('.', '')}"
        ename = f"{name}{suffix}.expected.safetensors"
        write_expected(os.path.join(out_dir, ename), changed,
                       f"{name}{suffix}: merged tensors that differ from ../bases/{family}_base.safetensors")
        ref = "lycoris LycorisBaseModule.get_merged_weight (= merge_to), verified against module forward()"
        if stats["fallback"]:
            ref = ("lycoris module forward() (rebuild mode) effective weight; get_merged_weight/merge_to "
                   f"disagreed on {stats['fallback']}/{stats['modules']} modules (double alpha/r scaling)")
        entry = {
            "name": f"{name}{suffix}", "family": family, "algo": algo,
            "base": f"../bases/{family}_base.safetensors",
            "loras": [{"file": fname, "unet": m, "te": m}],
            "expected": ename, "reference": ref, "rtol": RTOL, "atol": ATOL,
            "file_dtype": fdt_name, "description": desc,
        }
        if algo in ("diag-oft", "boft"):
            entry["note"] = (OFT_NOTE + "; its rounding error (a few float32 ulps of |W|, well-conditioned 2x2..4x4 "
                             "blocks) is far inside the default tolerances, which are kept")
        bakes.append(entry)
        log(f"[lycoris] {name} m={m}: {len(saved)} file tensors, {stats['modules']} modules "
            f"(fallback {stats['fallback']}), {len(changed)} changed base tensors, "
            f"|dW|/|W| median {sorted(stats['rel_delta'])[len(stats['rel_delta']) // 2]:.3f}")

    # diagnostics: LyCORIS' own loader on the file (create_network_from_weights) reproduces the reference?
    try:
        rl = reload_check(family, path, weights_ref=lyco_merged_weights(net, index, 1.0, seed + 1,
                                                                        {"fallback": 0, "modules": 0, "merge_err": 0.0,
                                                                         "rel_delta": []}), seed=seed)
        log(f"[lycoris] {name}: reload via create_network_from_weights: {rl}")
    except Exception as e:  # diagnostic only
        rl = f"error: {type(e).__name__}: {e}"
        log(f"[lycoris] {name}: reload via create_network_from_weights failed: {rl}")

    # DoRA strength 0.5: ComfyUI's formula W + m (DoRA(W) - W), computed by ComfyUI's own code
    if comfy is not None and name in ("locon_dora_in", "locon_dora_out"):
        comfy_checks(name, family, path, models, index, net, bakes, out_dir, comfy)
    return bakes, {"name": name, "reload_check": rl}


def reload_check(family, path, weights_ref, seed):
    """Load the file with lycoris.kohya.create_network_from_weights into fresh float64 models, merge
    (same method as the reference), report the max relative difference to the reference."""
    models = tm.make_models(family)
    for _, root in components(models):
        root.to(CDT)
    index = module_index(models)
    te_roots = [named_root(models["te1"])] + ([named_root(models["te2"])] if models.get("te2") is not None else [])
    te_arg = te_roots if len(te_roots) > 1 else te_roots[0]
    net, _ = create_network_from_weights(1.0, path, None, te_arg, models["unet"])
    net.apply_to(te_arg, models["unet"], True, True)
    net.to(CDT)
    st = {"fallback": 0, "modules": 0, "merge_err": 0.0, "rel_delta": []}
    w = lyco_merged_weights(net, index, 1.0, seed + 1, st)
    if set(w) != set(weights_ref):
        return f"different module set ({len(w)} vs {len(weights_ref)})"
    worst = max(((w[k] - weights_ref[k]).abs().max() / weights_ref[k].abs().max()).item() for k in w)
    return f"max rel diff {worst:.2e} over {len(w)} params" + (" (MISMATCH)" if worst > 1e-6 else "")


# ------------------------------------------------------------------------------------------------
# ComfyUI reference (DoRA strength != 1)
# ------------------------------------------------------------------------------------------------

def load_comfy(path):
    """Load comfy/weight_adapter/{base,lora}.py from `path` with a stub comfy.model_management."""
    if not path:
        return None
    wa = os.path.join(path, "comfy", "weight_adapter")
    files = {n: os.path.join(wa, n + ".py") for n in ("base", "lora")}
    if not all(os.path.isfile(f) for f in files.values()):
        log(f"[comfyui] {wa}/base.py, lora.py not found: DoRA strength-0.5 case skipped")
        return None
    saved = {k: sys.modules.get(k) for k in ("comfy", "comfy.model_management", "comfy.weight_adapter",
                                             "comfy.weight_adapter.base", "comfy.weight_adapter.lora")}
    try:
        pkg = types.ModuleType("comfy")
        pkg.__path__ = [os.path.join(path, "comfy")]
        mm = types.ModuleType("comfy.model_management")
        mm.cast_to_device = lambda t, device, dtype, copy=False: t.to(device=device, dtype=dtype, copy=copy)
        sub = types.ModuleType("comfy.weight_adapter")
        sub.__path__ = [wa]
        pkg.model_management, pkg.weight_adapter = mm, sub
        sys.modules.update({"comfy": pkg, "comfy.model_management": mm, "comfy.weight_adapter": sub})
        mods = {}
        for n in ("base", "lora"):
            spec = importlib.util.spec_from_file_location(f"comfy.weight_adapter.{n}", files[n])
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            mods[n] = mod
        sha = {n + ".py": hashlib.sha256(open(f, "rb").read()).hexdigest() for n, f in files.items()}
        return {"LoRAAdapter": mods["lora"].LoRAAdapter, "sha256": sha}
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def comfy_merged(comfy, path, net, index, strength):
    """ComfyUI LoRAAdapter.calculate_weight on every module of the (LoCon+DoRA) file, float64."""
    sd = {k: v.to(CDT) for k, v in load_file(path).items()}
    out = {}
    for lora in net.loras:
        mod = lora.org_module[0]
        comp, name = index[id(mod)]
        x = lora.lora_name
        alpha = float(sd[x + ".alpha"]) if x + ".alpha" in sd else None
        adapter = comfy["LoRAAdapter"].load(x, sd, alpha, sd.get(x + ".dora_scale"))
        w = mod.weight.detach().clone().to(CDT)
        w = adapter.calculate_weight(w, name, strength, 1.0, None, lambda a: a, intermediate_dtype=CDT)
        out[(comp, name + ".weight")] = w
    return out


def comfy_checks(name, family, path, models, index, net, bakes, out_dir, comfy):
    ref1 = lyco_merged_weights(net, index, 1.0, seed_of("lycoris/" + name) + 1,
                               {"fallback": 0, "modules": 0, "merge_err": 0.0, "rel_delta": []})
    c1 = comfy_merged(comfy, path, net, index, 1.0)
    worst = max(((c1[k] - ref1[k]).abs().max() / ref1[k].abs().max()).item() for k in ref1)
    log(f"[comfyui] {name}: ComfyUI strength 1.0 vs LyCORIS multiplier 1.0: max rel diff {worst:.2e}")
    COMFY_DIAG[name] = worst
    if name != "locon_dora_in":
        return
    if worst > 1e-6:
        raise RuntimeError("ComfyUI and LyCORIS disagree at strength 1 for per-input DoRA")
    m = 0.5
    w = comfy_merged(comfy, path, net, index, m)
    changed = expected_from_weights(family, w)
    ename = f"{name}_m05_comfyui.expected.safetensors"
    write_expected(os.path.join(out_dir, ename), changed,
                   f"{name} at strength 0.5, ComfyUI formula W + m*(DoRA(W) - W)")
    bakes.append({
        "name": f"{name}_m05_comfyui", "family": family, "algo": "locon",
        "base": f"../bases/{family}_base.safetensors",
        "loras": [{"file": os.path.basename(path), "unet": m, "te": m}],
        "expected": ename,
        "reference": "ComfyUI comfy/weight_adapter lora.py LoRAAdapter.calculate_weight + base.py weight_decompose "
                     "(strength 0.5, float64)",
        "rtol": RTOL, "atol": ATOL, "file_dtype": "F32",
        "note": "DoRA at strength != 1: the project implements the ComfyUI/A1111 formula W' = W + m*(DoRA(W) - W) "
                "(lora-formats.md 3.5); LyCORIS' own merge would give W_c*(m*(sigma-1)+1) instead. Per-input "
                "dora_scale because ComfyUI's per-output branch normalises by ||W|| (not ||W + s*dW||).",
    })
    log(f"[comfyui] {name}: wrote {ename} ({len(changed)} changed tensors)")


COMFY_DIAG = {}


# ------------------------------------------------------------------------------------------------
# PEFT / diffusers
# ------------------------------------------------------------------------------------------------

TE_COMPONENT = {"te1": "text_encoder", "te2": "text_encoder_2"}

# name, family, unet LoraConfig kwargs, te LoraConfig kwargs, lora_scale, note
PEFT_CASES = [
    ("peft_plain", "sd1", dict(r=2, lora_alpha=4), dict(r=2, lora_alpha=1), 0.8,
     "UNet r=2 lora_alpha=4 (scale 2), TE r=2 lora_alpha=1 (scale 0.5)"),
    ("peft_rank_pattern", "sd1",
     dict(r=2, lora_alpha=3, rank_pattern={"attn2.to_k": 1, "conv1": 3, "ff.net.2": 4},
          alpha_pattern={"proj_out": 5, "attn1.to_v": 1}),
     dict(r=2, lora_alpha=1, rank_pattern={"fc1": 3}, alpha_pattern={"out_proj": 2}), 0.8,
     "per-module ranks/alphas via rank_pattern/alpha_pattern (recorded in lora_adapter_metadata)"),
    ("peft_alpha_regex", "sd1",
     dict(r=2, lora_alpha=3, alpha_pattern={r"attn\d\.to_(q|v)": 7, r"down_blocks.*proj_out": 5}),
     dict(r=2, lora_alpha=1, alpha_pattern={r"(k|q)_proj": 3}), 0.8,
     "alpha_pattern keys as regular expressions (PEFT's get_pattern_key: re.match(rf'(.*\\.)?({key})$'))"),
    ("peft_dora", "sd1", dict(r=2, lora_alpha=4, use_dora=True), dict(r=2, lora_alpha=1, use_dora=True), 1.0,
     "use_dora=True: lora_magnitude_vector, per-output norm; Linear (out,), Conv2d (1,out,1,1)"),
    ("peft_rslora", "sd1", dict(r=4, lora_alpha=3, use_rslora=True), dict(r=4, lora_alpha=2, use_rslora=True), 0.8,
     "use_rslora=True: scale lora_alpha/sqrt(r) (UNet 1.5, TE 1.0); recorded as use_rslora in lora_adapter_metadata"),
    ("sdxl_peft_plain", "sdxl", dict(r=2, lora_alpha=4), dict(r=2, lora_alpha=1), 0.8,
     "SDXL: unet., text_encoder., text_encoder_2. prefixes"),
]


def peft_randomize(layers, seed, file_dtype):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in layers:
            for pname, p in sorted(layer.named_parameters(), key=lambda kv: kv[0]):
                if "base_layer" in pname:
                    continue
                if "lora_magnitude_vector" in pname:
                    v = p * (1 + 0.1 * torch.randn(p.shape, generator=g, dtype=CDT))
                elif "lora_A" in pname or "lora_B" in pname:
                    v = 0.2 * torch.randn(p.shape, generator=g, dtype=CDT)
                else:
                    continue
                p.copy_(v.to(file_dtype).to(CDT))


def tuner_layers(root):
    return [(n, m) for n, m in root.named_modules() if isinstance(m, BaseTunerLayer)]


def peft_case(spec, out_dir):
    global CDT
    name, family, ucfg, tcfg, scale, desc = spec
    CDT = torch.float64
    seed = seed_of("peft/" + name)
    torch.manual_seed(seed)
    models = tm.make_models(family)
    for _, root in components(models):
        root.to(CDT)
    index = module_index(models)
    unet = models["unet"]
    unet_config = LoraConfig(target_modules=subset_names(unet, SUBSET_UNET[family]), **ucfg)
    unet.add_adapter(unet_config)
    te_roots, te_configs = {}, {}
    for comp in ("te1", "te2"):
        if models.get(comp) is None:
            continue
        # transformers' PreTrainedModel.add_adapter is inject_adapter_in_model(config, model); it is called
        # on a plain holder of the CLIP text transformer so that the module tree (and the keys) are the
        # transformers-4 ones, text_model.encoder.layers... (transformers 5 dropped that level, and PEFT's
        # transformers-5 conversion hooks reject tiny_models' wrapper).
        root = _TextModelHolder(named_root(models[comp]).text_model)
        cfg = LoraConfig(target_modules=subset_names(root, SUBSET_TE), **tcfg)
        inject_adapter_in_model(cfg, root, adapter_name="default")
        te_roots[comp], te_configs[comp] = root, cfg
    all_layers = tuner_layers(unet) + [l for r in te_roots.values() for l in tuner_layers(r)]
    peft_randomize(all_layers, seed, torch.float32)

    # ---- save as diffusers does
    unet_sd = {k: v.to(torch.float32) for k, v in get_peft_model_state_dict(unet).items()}
    te_sds = {c: {k: v.to(torch.float32) for k, v in get_peft_model_state_dict(r).items()} for c, r in te_roots.items()}
    def cfg_dict(cfg):  # LoraConfig.to_dict(); its target_modules set -> sorted list (diffusers writes a list)
        d = cfg.to_dict()
        d["target_modules"] = sorted(d["target_modules"])
        return d

    meta_u = cfg_dict(unet.peft_config["default"])
    meta_t = {c: cfg_dict(te_configs[c]) for c in te_roots}
    pipe_cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline

    def save(fname, usd, tsds, mu, mt):
        tmpd = tempfile.mkdtemp()
        try:
            kw = dict(unet_lora_layers=usd, text_encoder_lora_layers=tsds["te1"],
                      unet_lora_adapter_metadata=mu, text_encoder_lora_adapter_metadata=mt and mt["te1"])
            if family == "sdxl":
                kw.update(text_encoder_2_lora_layers=tsds["te2"], text_encoder_2_lora_adapter_metadata=mt and mt["te2"])
            pipe_cls.save_lora_weights(tmpd, weight_name=fname, safe_serialization=True, **kw)
            shutil.move(os.path.join(tmpd, fname), os.path.join(out_dir, fname))
            canonicalize_header(os.path.join(out_dir, fname))
        finally:
            shutil.rmtree(tmpd, ignore_errors=True)

    fname = f"{name}.safetensors"
    save(fname, unet_sd, te_sds, copy.deepcopy(meta_u), copy.deepcopy(meta_t))
    files = [(fname, "diffusers save_lora_weights (PEFT lora_A/lora_B keys + lora_adapter_metadata)")]
    if name == "peft_plain":
        # what diffusers' own training scripts save: convert_state_dict_to_diffusers(get_peft_model_state_dict(..))
        f2 = f"{name}_diffusers_fmt.safetensors"
        save(f2, convert_state_dict_to_diffusers(dict(unet_sd)),
             {c: convert_state_dict_to_diffusers(dict(s)) for c, s in te_sds.items()},
             copy.deepcopy(meta_u), copy.deepcopy(meta_t))
        files.append((f2, "diffusers convert_state_dict_to_diffusers + save_lora_weights, as diffusers' "
                          "train_*_lora.py scripts do: UNet to_q/k/v/out.0 -> .lora.down/.lora.up, TE "
                          "q/k/v/out_proj -> .lora_linear_layer.down/up, others stay lora_A/lora_B; metadata kept. "
                          "A mixed file (only because the targets go beyond attention): diffusers 0.42.1's own "
                          "loader converts .lora.down/.up only when the FIRST key lacks 'lora_A' and so drops "
                          "half of it; loaders must resolve the suffix per module (as ComfyUI does)"))
        legacy_files(name, family, unet_sd, te_sds, meta_u, meta_t, out_dir, files)

    # ---- reference: diffusers fuse
    g = torch.Generator().manual_seed(seed + 1)
    probes = []
    with torch.no_grad():
        for _, layer in all_layers:
            base = layer.get_base_layer()
            x = _probe_input(base, g)
            layer.scale_layer(scale)
            y = layer(x)
            layer.unscale_layer(scale)
            probes.append((layer, base, x, y))
        unet.fuse_lora(lora_scale=scale)
        for r in te_roots.values():
            fuse_text_encoder_lora(r, lora_scale=scale)
        worst = 0.0
        weights = {}
        for layer, base, x, y in probes:
            y2 = _apply(base, x, base.weight, base.bias)
            worst = max(worst, ((y2 - y).abs().max() / y.abs().max()).item())
            comp, pname = index[id(base)]
            weights[(comp, pname + ".weight")] = base.weight.detach().clone()
    if worst > 1e-9:
        raise RuntimeError(f"{name}: fused weights do not reproduce the adapter forward ({worst})")
    changed = expected_from_weights(family, weights)
    ename = f"{name}.expected.safetensors"
    write_expected(os.path.join(out_dir, ename), changed,
                   f"{name}: diffusers fuse_lora(lora_scale={scale}) tensors that differ from ../bases/{family}_base.safetensors")
    log(f"[peft] {name}: {len(all_layers)} adapted layers, {len(changed)} changed base tensors "
        f"(fused vs forward max rel {worst:.1e})")

    # ---- diagnostics: diffusers' loader on each written file reproduces the reference?
    rt = {}
    for f, _ in files:
        try:
            rt[f] = diffusers_roundtrip(family, os.path.join(out_dir, f), scale, weights, pipe_cls)
        except Exception as e:
            rt[f] = f"error: {type(e).__name__}: {str(e)[:200]}"
        log(f"[peft] {name}: diffusers load of {f}: {rt[f]}")

    bakes = []
    for f, how in files:
        bname = os.path.splitext(f)[0]
        entry = {
            "name": bname, "family": family, "algo": "lora (peft)" + (" + dora" if ucfg.get("use_dora") else "")
            + (" + rslora" if ucfg.get("use_rslora") else ""),
            "base": f"../bases/{family}_base.safetensors",
            "loras": [{"file": f, "unet": scale, "te": scale}],
            "expected": ename,
            "reference": f"diffusers UNet2DConditionModel.fuse_lora(lora_scale={scale}) + "
                         f"diffusers.loaders.lora_base.fuse_text_encoder_lora(lora_scale={scale}) (PEFT merge)",
            "rtol": RTOL, "atol": ATOL, "file_dtype": "F32", "description": desc, "file_origin": how,
        }
        if f != fname:
            entry["note"] = f"same adapter as {fname}; same expected output"
        if ucfg.get("use_dora"):
            entry["note"] = ("lora_scale 1.0: at other strengths PEFT (g/||W+w*s*dW||*(W+w*s*dW)) and the "
                             "project's ComfyUI/A1111 formula W+m*(DoRA(W)-W) differ by design (lora-formats.md 3.5)")
        bakes.append(entry)
    return bakes, {"name": name, "diffusers_load": rt}


def legacy_files(name, family, unet_sd, te_sds, meta_u, meta_t, out_dir, files):
    """Renamed copies of the same adapter, keys per lora-formats.md 2.3 (written by this script,
    not by a library)."""
    su = meta_u["lora_alpha"] / meta_u["r"]
    st = meta_t["te1"]["lora_alpha"] / meta_t["te1"]["r"]
    assert not meta_u["rank_pattern"] and not meta_u["alpha_pattern"] and not meta_u["use_rslora"]
    assert su == 2.0 and st == 0.5, "power-of-two scales: folding them into lora_B is exact"
    # (1) old diffusers: UNet attention processors + LoRACompatible .lora.up/.down, TE lora_linear_layer,
    #     no alpha (scale 1 convention) -> the PEFT scale is folded into the up weights.
    old = {}
    for k, v in unet_sd.items():
        path, kind = k.rsplit(".lora_", 1)  # kind: "A.weight" / "B.weight"
        updown = "down" if kind.startswith("A") else "up"
        w = v * su if updown == "up" else v
        if path.endswith(".to_out.0"):
            head, last = path[: -len(".to_out.0")], "to_out"
        else:
            head, _, last = path.rpartition(".")
        if last in ("to_q", "to_k", "to_v", "to_out") and head.rsplit(".", 1)[-1] in ("attn1", "attn2"):
            old[f"unet.{head}.processor.{last}_lora.{updown}.weight"] = w
        else:
            old[f"unet.{path}.lora.{updown}.weight"] = w
    for comp, sd in te_sds.items():
        pre = TE_COMPONENT[comp]
        s = meta_t[comp]["lora_alpha"] / meta_t[comp]["r"]
        for k, v in sd.items():
            path, kind = k.rsplit(".lora_", 1)
            updown = "down" if kind.startswith("A") else "up"
            old[f"{pre}.{path}.lora_linear_layer.{updown}.weight"] = v * s if updown == "up" else v
    f = f"{name}_legacy.safetensors"
    save_file(old, os.path.join(out_dir, f), metadata={"format": "pt", "mood_fixture":
              f"{f}: {name} renamed by {GENERATOR} (lora-formats.md 2.3 old diffusers keys; scale folded into up)"})
    canonicalize_header(os.path.join(out_dir, f))
    files.append((f, "renamed by this script (lora-formats.md 2.3): UNet attn1/attn2 to_q/to_k/to_v/to_out.0 -> "
                     "<attn>.processor.to_X_lora.down/up.weight, other UNet modules -> <path>.lora.down/up.weight, "
                     "TE -> <path>.lora_linear_layer.down/up.weight; no alpha/metadata, so the PEFT scale "
                     "(UNet 2, TE 0.5; powers of two, exact) is folded into the up weights"))
    # (2) kohya flat names with PEFT suffixes lora_A.weight / lora_B.weight (+ alpha): A1111 network_lora.py
    ko = {}
    for k, v in unet_sd.items():
        path, kind = k.rsplit(".lora_", 1)
        mn = "lora_unet_" + path.replace(".", "_")
        ko[f"{mn}.lora_{kind}"] = v
        ko[f"{mn}.alpha"] = torch.tensor(float(meta_u["lora_alpha"]), dtype=torch.float32)
    for comp, sd in te_sds.items():
        pfx = "lora_te_" if family != "sdxl" else ("lora_te1_" if comp == "te1" else "lora_te2_")
        for k, v in sd.items():
            path, kind = k.rsplit(".lora_", 1)
            mn = pfx + path.replace(".", "_")
            ko[f"{mn}.lora_{kind}"] = v
            ko[f"{mn}.alpha"] = torch.tensor(float(meta_t[comp]["lora_alpha"]), dtype=torch.float32)
    f = f"{name}_kohya_ab.safetensors"
    save_file(ko, os.path.join(out_dir, f), metadata={"mood_fixture":
              f"{f}: {name} renamed by {GENERATOR} (kohya module names, lora_A/lora_B suffixes, alpha = lora_alpha)"})
    canonicalize_header(os.path.join(out_dir, f))
    files.append((f, "renamed by this script (lora-formats.md 2.3, A1111 network_lora.py): kohya flat module names "
                     "(lora_unet_<diffusers path>, lora_te_text_model_...) with .lora_A.weight/.lora_B.weight and "
                     ".alpha = lora_alpha (F32 scalar)"))


def diffusers_roundtrip(family, path, scale, weights_ref, pipe_cls):
    """diffusers' loader (lora_state_dict + load_lora_into_unet/text_encoder) + fuse on fresh float64
    models; max rel diff to the reference per component."""
    models = tm.make_models(family)
    for _, root in components(models):
        root.to(CDT)
    index = module_index(models)
    sd, alphas, meta = pipe_cls.lora_state_dict(path, return_lora_metadata=True)
    pipe_cls.load_lora_into_unet(sd, network_alphas=alphas, unet=models["unet"], adapter_name="rt", metadata=meta)
    models["unet"].fuse_lora(lora_scale=scale)
    res = {}
    got = {}
    for _, layer in tuner_layers(models["unet"]):
        b = layer.get_base_layer()
        got[index[id(b)]] = b.weight.detach()
    ref = {k: v for k, v in weights_ref.items() if k[0] == "unet"}
    res["unet"] = _cmp(got, ref)
    for comp in ("te1", "te2"):
        if models.get(comp) is None:
            continue
        te = models[comp]
        inner = te.text_model if hasattr(te, "text_model") and not hasattr(te, "load_adapter") else te
        kw = dict(network_alphas=alphas, text_encoder=inner, adapter_name="rt", metadata=meta)
        if comp == "te2":
            kw["prefix"] = "text_encoder_2"
        try:
            pipe_cls.load_lora_into_text_encoder(sd, **kw)
            fuse_text_encoder_lora(inner, lora_scale=scale)
            got = {}
            for _, layer in tuner_layers(inner):
                b = layer.get_base_layer()
                got[index[id(b)]] = b.weight.detach()
            res[comp] = _cmp(got, {k: v for k, v in weights_ref.items() if k[0] == comp})
        except Exception as e:
            if type(e).__name__ == "NoMatchingPeftModuleError" and inner is not te:
                res[comp] = ("not checked: diffusers loads into the transformers-5 CLIPTextModel, which has no "
                             "text_model level (the file's keys have it)")
            else:
                res[comp] = f"error: {type(e).__name__}: {str(e)[:160]}"
    return res


def _cmp(got, ref):
    got = {(c, n + ".weight"): v for (c, n), v in got.items()}
    if set(got) != set(ref):
        return f"module set differs ({len(got)} loaded vs {len(ref)} reference)"
    worst = max(((got[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)
    return f"ok, max rel diff {worst:.1e}" if worst < 1e-6 else f"MISMATCH max rel diff {worst:.2e}"


# ------------------------------------------------------------------------------------------------
# file inventory, cases.json
# ------------------------------------------------------------------------------------------------

def versions(comfy):
    v = {}
    for dist in ("torch", "numpy", "safetensors", "diffusers", "peft", "transformers", "lycoris-lora", "accelerate"):
        try:
            v[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    v["python"] = sys.version.split()[0]
    v["kohya-ss/sd-scripts"] = tm.SD_SCRIPTS_COMMIT + " (single-file converters via tools/tiny_models.py)"
    if comfy is not None:
        v["ComfyUI comfy/weight_adapter"] = {"base.py": "9c0cf36c", "lora.py": "6fd406fb", "sha256": comfy["sha256"]}
    return v


def inventory(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(folder, f), "pt") as s:
            keys = list(s.keys())
            meta = s.metadata() or {}
            shapes = {}
            for k in keys:
                sl = s.get_slice(k)
                shapes[k] = (sl.get_dtype(), sl.get_shape())
        out[f] = (keys, meta, shapes, os.path.getsize(os.path.join(folder, f)))
    return out


def write_cases(folder, bakes, comfy, extra):
    doc = {"generator": GENERATOR, "versions": versions(comfy), "bake": bakes}
    doc.update(extra)
    with open(os.path.join(folder, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")


def reset_dir(d):
    if os.path.isdir(d):
        for f in os.listdir(d):
            if f.endswith(".safetensors") or f == "cases.json":
                os.remove(os.path.join(d, f))
    os.makedirs(d, exist_ok=True)


PRESET_DIR = None


def main(argv=None):
    global PRESET_DIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd-scripts", default=os.environ.get("MOOD_SD_SCRIPTS", "/tmp/sd-scripts"))
    ap.add_argument("--comfyui", default="/tmp/comfy_ref", help="dir with comfy/weight_adapter/{base,lora}.py")
    ap.add_argument("--only", choices=["lycoris", "peft"])
    a = ap.parse_args(argv)
    tm.set_sd_scripts(a.sd_scripts)
    tm.kohya()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    import logging

    diffusers.utils.logging.set_verbosity_error()
    logging.getLogger().setLevel(logging.WARNING)
    for lg in ("LyCORIS", "lycoris"):
        logging.getLogger(lg).setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as td:
        PRESET_DIR = td
        comfy = load_comfy(a.comfyui)

        if a.only in (None, "lycoris"):
            reset_dir(OUT_LYCO)
            bakes, diags = [], []
            for spec in LYCO_CASES:
                b, d = lyco_case(spec, OUT_LYCO, comfy)
                bakes += b
                diags.append(d)
            write_cases(OUT_LYCO, bakes, comfy, {
                "lycoris_preset": {f: lyco_preset_toml(f) for f in ("sd1", "sd2", "sdxl")},
                "diagnostics": {
                    "reload_via_create_network_from_weights": {d["name"]: d["reload_check"] for d in diags},
                    "comfyui_strength1_vs_lycoris_m1_max_rel_diff": COMFY_DIAG,
                },
            })
        if a.only in (None, "peft"):
            reset_dir(OUT_PEFT)
            bakes, diags = [], []
            for spec in PEFT_CASES:
                b, d = peft_case(spec, OUT_PEFT)
                bakes += b
                diags.append(d)
            write_cases(OUT_PEFT, bakes, comfy, {
                "diagnostics": {"diffusers_load_and_fuse_vs_reference": {d["name"]: d["diffusers_load"] for d in diags}},
            })

    total = 0
    for d in (OUT_LYCO, OUT_PEFT):
        if os.path.isdir(d):
            s = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
            total += s
            log(f"{rel(d, REPO)}: {s} bytes")
    log(f"total {total} bytes")


if __name__ == "__main__":
    main()
