"""Reference fixtures for mood's SVD merge / resize / extract (tests/fixtures/svd/).

Every output LoRA in tests/fixtures/svd/ is written by kohya sd-scripts' own scripts
(networks/svd_merge_lora.py, networks/resize_lora.py, networks/extract_lora_from_models.py, commit
48d368fa), run as `__main__` in a subprocess with the given command-line arguments.  kohya code is
imported from --sd-scripts, never copied.  What this script does around them:

  * writes the small SD1 input LoRAs (seeded, kohya `lora_unet_*` / `lora_te_*` names of the tiny SD1
    base of tools/tiny_models.py, with `alpha`, linear + 1x1 conv + 3x3 LoCon modules, one file F16);
  * writes `extract_tuned.safetensors`: the tiny SD1 base (tests/fixtures/bases/sd1_base.safetensors)
    with a seeded structured delta added to the weights of the modules kohya's LoRA targets
    (single-file layout via tiny_models.to_single_file);
  * in the kohya subprocess: stubs imports kohya never uses on these paths (torchvision, cv2, ...,
    see tiny_models.kohya), fixes the ModelSpec timestamp (modelspec.date) and TZ=UTC so that reruns
    are byte-identical, and -- for extraction only -- replaces
    library.model_util.load_models_from_stable_diffusion_checkpoint (its U-Net/CLIP configs are
    hard-coded to full-size SD) by a loader that reads the single-file checkpoint with kohya's own
    load_checkpoint_with_text_encoder_conversion / convert_ldm_unet_checkpoint /
    convert_ldm_clip_checkpoint_v1 and loads the result (strict) into the tiny diffusers modules;
  * analyses the results (ranks, alphas, metadata, clamp / singular-vector-sign sensitivity) and
    writes tests/fixtures/svd/cases.json.

resize_lora.py's rank rules for --dynamic_method are those of kohya's PR #2194 ("fix the off by
1 problem", commit 41de9362): sv_fro and sv_cumulative keep the smallest rank that reaches the
target, where 48d368fa kept one rank more; sv_ratio keeps the count of singular values above
S[0]/ratio plus one, as before (the PR changed only its clamp). The checkout used is 48d368fa with
networks/resize_lora.py patched by `git diff 48d368fa 41de9362 -- networks/resize_lora.py`
(the three index_sv_* functions: no "+ 1" for fro/cumulative, every clamp to [0, len(S) - 1]);
the patched file is byte-identical to 41de9362's.

How to run (from the repository root; needs tests/fixtures/bases/READY from tools/tiny_models.py):
    git clone SD_SCRIPTS_REPO /tmp/sd-scripts && cd /tmp/sd-scripts && git checkout 48d368fa
    git diff 48d368fa 41de9362 -- networks/resize_lora.py | git apply   # PR #2194's rank rules
    tools/.venv/bin/python tools/make_fixtures_svd.py --sd-scripts /tmp/sd-scripts

Deterministic: all inputs are seeded, kohya runs single-threaded on CPU with a fixed timestamp.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import runpy
import subprocess
import sys
import time
import zlib

import numpy as np
import torch

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, TOOLS_DIR)
import tiny_models as tm  # noqa: E402  (imports diffusers/transformers before kohya's stubs)

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

OUT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "svd")
BASES_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "bases")
FIXED_TIMESTAMP = 1700000000.0  # 2023-11-14T22:13:20 UTC, written as modelspec.date
CLAMP_QUANTILE = 0.99  # kohya's default (svd_merge_lora.py constant, extract --clamp_quantile)
SD_SCRIPTS_COMMIT = "48d368fa"


# =============================================================================================
# kohya runner (subprocess side)
# =============================================================================================

def _tiny_sd1_loader(tm_module):
    """Replacement for library.model_util.load_models_from_stable_diffusion_checkpoint (SD1 only):
    kohya's own checkpoint reading / LDM->diffusers key conversion, tiny diffusers modules."""
    k = tm_module.kohya()
    mu = k.model_util

    def load(v2, ckpt_path, device="cpu", dtype=None, unet_use_linear_projection_in_v2=True):
        assert not v2, "fixtures use the tiny SD1 base only"
        _, state_dict = mu.load_checkpoint_with_text_encoder_conversion(ckpt_path, device)
        # convert_ldm_unet_checkpoint only reads config["layers_per_block"] for SD1
        cfg = {"layers_per_block": tm_module.UNET_CONFIGS["sd1"]["layers_per_block"]}
        unet_sd = mu.convert_ldm_unet_checkpoint(v2, state_dict, cfg)
        te_sd = mu.convert_ldm_clip_checkpoint_v1(state_dict)
        models = tm_module.make_models("sd1")
        unet, te = models["unet"], models["te1"]
        unet.load_state_dict(unet_sd, strict=True)
        missing, unexpected = te.load_state_dict(te_sd, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        assert not missing and not unexpected, (missing, unexpected)
        if dtype is not None:
            unet, te = unet.to(dtype), te.to(dtype)
        return te.to(device), None, unet.to(device)

    return load


def run_kohya_main(sd_scripts: str, script: str, argv: list) -> None:
    """Executed in the subprocess: run networks/<script> as __main__ with argv."""
    os.environ["TZ"] = "UTC"
    time.tzset()
    torch.set_num_threads(1)
    tm.set_sd_scripts(sd_scripts)
    k = tm.kohya()  # imports kohya modules with the unused heavy imports stubbed
    import library.sai_model_spec as sai_model_spec

    orig_build_metadata = sai_model_spec.build_metadata

    def build_metadata(*a, **kw):  # fixed timestamp -> reproducible modelspec.date
        a = list(a)
        if len(a) > 6:
            a[6] = FIXED_TIMESTAMP
        else:
            kw["timestamp"] = FIXED_TIMESTAMP
        return orig_build_metadata(*a, **kw)

    sai_model_spec.build_metadata = build_metadata
    if script == "extract_lora_from_models.py":
        k.model_util.load_models_from_stable_diffusion_checkpoint = _tiny_sd1_loader(tm)
    path = os.path.join(k.root, "networks", script)
    sys.argv = [path] + argv
    runpy.run_path(path, run_name="__main__")


def kohya(sd_scripts: str, script: str, argv: list) -> str:
    """Run a kohya script in a fresh interpreter; returns its stdout (checked)."""
    env = dict(os.environ, TZ="UTC", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--run-kohya", sd_scripts, script, "--"] + argv
    p = subprocess.run(cmd, cwd=OUT_DIR, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"kohya {script} failed ({p.returncode})")
    return p.stdout


# =============================================================================================
# inputs
# =============================================================================================

def target_modules(unet, te) -> dict:
    """{lora_name: weight shape} of every module kohya's networks/lora.py targets (with conv_dim)."""
    k = tm.kohya()
    net = k.lora.create_network(1.0, 4, 4, None, [te], unet, conv_dim=2, conv_alpha=2)
    return {l.lora_name: tuple(l.org_module.weight.shape) for l in net.text_encoder_loras + net.unet_loras}


def _orth(g, n, r):
    q, _ = torch.linalg.qr(torch.randn(n, max(r, 1), generator=g, dtype=torch.float64))
    return q[:, :r]


def pairing(name, n):
    """Fixed random pairing of the n (even) output rows of module `name`: (first halves, second halves)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    perm = torch.randperm(n, generator=g)
    return perm[: n // 2], perm[n // 2:]


def make_pair(name, shape, rank, g, spectrum=None, zero_up=False, paired=False, up_scale=1.0):
    """kohya-layout (lora_up, lora_down) for a module of weight `shape`.
    spectrum: singular values of up@down (needs rank <= min(out, in*kh*kw)); else random Gaussian.
    paired: rows of lora_up come in negated pairs (row b[i] = -row a[i], fixed pairing per module name),
    so every left singular vector of any combination of such LoRAs has a sign-symmetric multiset of
    entries -> kohya's signed quantile clamp does not depend on the SVD's sign convention."""
    out_dim, in_dim = shape[0], shape[1]
    ksz = shape[2:] if len(shape) == 4 else None
    flat_in = in_dim * (ksz[0] * ksz[1] if ksz else 1)
    if spectrum is not None:
        assert len(spectrum) == rank <= min(out_dim, flat_in) and not paired
        s = torch.tensor(spectrum, dtype=torch.float64).sqrt()
        up = _orth(g, out_dim, rank) * s[None, :]
        down = s[:, None] * _orth(g, flat_in, rank).T
    else:
        if ksz is not None and ksz != (1, 1):
            up_scale *= 4.0  # 3x3 LoCon: keep U*S above |Vh| (see clamp_study)
        up = torch.randn(out_dim, rank, generator=g, dtype=torch.float64) * (0.3 * up_scale)
        down = torch.randn(rank, flat_in, generator=g, dtype=torch.float64) * (1.0 / flat_in ** 0.5)
        if paired:
            a, b = pairing(name, out_dim)
            up[b] = -up[a]
    if zero_up:
        up = torch.zeros_like(up)
    if ksz is None:
        return up.float(), down.float()
    return up.float().reshape(out_dim, rank, 1, 1), down.float().reshape(rank, in_dim, *ksz)


P = "lora_unet_"
TB = "down_blocks_0_attentions_0_transformer_blocks_0_"
# (module, rank, alpha | None, spectrum | None, zero_up)
LORA_A = [  # F32; linear / 1x1: rank 8, alpha 4; 3x3 conv: rank 4, alpha 1
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 8, 4.0, None, False),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", 8, 4.0, None, False),
    ("lora_te_text_model_encoder_layers_1_mlp_fc2", 8, 4.0, None, False),
    (P + TB + "attn1_to_q", 8, 4.0, None, False),
    (P + TB + "attn2_to_k", 8, 4.0, None, False),
    (P + TB + "ff_net_0_proj", 8, 4.0, None, False),
    (P + "down_blocks_0_attentions_0_proj_in", 8, 4.0, None, False),
    (P + "up_blocks_1_resnets_0_conv_shortcut", 8, 4.0, None, False),
    (P + "down_blocks_0_resnets_0_time_emb_proj", 8, 4.0, None, False),
    (P + "down_blocks_0_resnets_0_conv1", 4, 1.0, None, False),
    (P + "mid_block_attentions_0_transformer_blocks_0_attn2_to_v", 8, 4.0, None, False),
]
LORA_B = [  # F16; linear / 1x1: rank 4, alpha 8 (alpha > rank); 3x3 conv: rank 4, alpha 3
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 4, 8.0, None, False),
    ("lora_te_text_model_encoder_layers_1_self_attn_v_proj", 4, 8.0, None, False),
    (P + TB + "attn1_to_q", 4, 8.0, None, False),
    (P + TB + "ff_net_0_proj", 4, 8.0, None, False),
    (P + "down_blocks_0_attentions_0_proj_in", 4, 8.0, None, False),
    (P + "down_blocks_0_resnets_0_conv1", 4, 3.0, None, False),
    (P + "down_blocks_1_downsamplers_0_conv", 4, 3.0, None, False),
    (P + "up_blocks_1_resnets_0_conv1", 4, 3.0, None, False),  # (4, 8, 3, 3): in != out
    (P + "up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0", 4, 8.0, None, False),
    (P + "up_blocks_3_attentions_2_proj_out", 4, 8.0, None, False),
]
LORA_C = [  # F32, resize input: designed spectra so that dynamic rank choices are far from ties
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 8, 16.0, [4.0, 2.6, 1.7, 1.1, 0.7, 0.45, 0.3, 0.2], False),
    ("lora_te_text_model_encoder_layers_0_self_attn_k_proj", 8, 4.0, [1.0, 0.96, 0.92, 0.88, 0.84, 0.8, 0.76, 0.72], False),
    ("lora_te_text_model_encoder_layers_1_mlp_fc1", 8, None, [6.0, 0.4, 0.3, 0.2, 0.15, 0.1, 0.08, 0.05], False),
    ("lora_te_text_model_encoder_layers_1_mlp_fc2", 8, 4.0, None, True),  # all-zero delta
    (P + TB + "attn2_to_k", 8, 3.0, None, False),
    (P + TB + "ff_net_0_proj", 4, 2.0, [2.0, 1.1, 0.6, 0.3], False),
    (P + "down_blocks_0_attentions_0_proj_in", 4, 1.0, [1.0, 0.6, 0.3, 0.1], False),
    (P + "up_blocks_1_resnets_0_conv_shortcut", 4, 2.0, None, False),
    (P + "down_blocks_0_resnets_0_time_emb_proj", 8, 4.0, None, False),
    (P + "down_blocks_0_resnets_0_conv1", 4, 2.0, [1.5, 0.8, 0.4, 0.1], False),
    (P + "up_blocks_1_resnets_0_conv1", 8, 4.0, None, False),
]

INPUTS = {
    "lora_a.safetensors": dict(spec=LORA_A, dtype=torch.float32, seed=101, paired=True, up_scale=12.0, metadata={
        "ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "4.0",
        "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "1.0"}),
        "ss_v2": "False", "ss_base_model_version": "sd_v1", "ss_training_comment": "mood svd fixture A"}),
    "lora_b.safetensors": dict(spec=LORA_B, dtype=torch.float16, seed=202, paired=True, up_scale=12.0, metadata={
        "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "8.0",
        "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "3.0"}),
        "ss_v2": "False", "ss_base_model_version": "sd_v1", "modelspec.title": "Fixture B"}),
    "lora_c.safetensors": dict(spec=LORA_C, dtype=torch.float32, seed=303, metadata={
        "ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "4.0",
        "ss_v2": "False", "ss_base_model_version": "sd_v1",
        "ss_training_comment": "mood resize fixture C", "ss_output_name": "lora_c"}),
}


def write_input(path, spec, dtype, seed, metadata, shapes, paired=False, up_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, rank, alpha, spectrum, zero in spec:
        up, down = make_pair(name, shapes[name], rank, g, spectrum, zero, paired, up_scale)
        sd[name + ".lora_up.weight"] = up.to(dtype).contiguous()
        sd[name + ".lora_down.weight"] = down.to(dtype).contiguous()
        if alpha is not None:
            sd[name + ".alpha"] = torch.tensor(alpha, dtype=dtype)
    save_file(sd, path, metadata=metadata)


def write_tuned(path, unet, te, modules, zero_module, seed=404):
    """Base + structured delta on the weight of every module kohya targets, except `zero_module`
    (diff exactly 0).  Delta rows come in negated pairs (see make_pair), the half block has singular
    values S0 * 0.5**i (S0 = 8 for the text encoder, 12 for the U-Net) and random singular vectors."""
    g = torch.Generator().manual_seed(seed)
    params = dict(te.named_parameters(prefix="lora_te"))
    params.update(unet.named_parameters(prefix="lora_unet"))
    by_lora = {n[: -len(".weight")].replace(".", "_"): p for n, p in params.items() if n.endswith(".weight")}
    with torch.no_grad():
        for name, shape in modules.items():
            if name == zero_module:
                continue
            w = by_lora[name]
            out_dim = shape[0]
            flat = w.numel() // out_dim
            h = out_dim // 2
            n = min(h, flat)
            s0 = 8.0 if name.startswith("lora_te") else 12.0
            s = s0 * 0.5 ** torch.arange(n, dtype=torch.float64)
            half = _orth(g, h, n) @ torch.diag(s) @ _orth(g, flat, n).T
            a, b = pairing(name, out_dim)
            d = torch.zeros(out_dim, flat, dtype=torch.float64)
            d[a], d[b] = half, -half
            w.add_(d.reshape(shape).to(w.dtype))
    sd = tm.to_single_file("sd1", unet, te)
    sd.update(tm.extra_tensors("sd1"))
    save_file(sd, path, metadata={"mood_fixture": "extract_tuned.safetensors: bases/sd1_base.safetensors + "
                                  "structured delta on kohya-targeted weights (tools/make_fixtures_svd.py)"})


# =============================================================================================
# analysis
# =============================================================================================

def read(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        keys = list(f.keys())
    return load_file(path), meta, keys


def canonical_header(path):
    """safetensors (Rust) writes __metadata__ in HashMap order, which changes from run to run.  Re-emit
    the header with the metadata keys sorted (same bytes otherwise: tensor entries, their order, the
    header length and all tensor data are unchanged), so reruns are byte-identical."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    if "__metadata__" not in hdr:
        return
    hdr["__metadata__"] = dict(sorted(hdr["__metadata__"].items()))
    new = json.dumps(hdr, separators=(",", ":"), ensure_ascii=False).encode()
    old = raw[8:8 + n]
    assert len(new) == len(old.rstrip(b" ")), path
    new = new + b" " * (n - len(new))
    with open(path, "wb") as f:
        f.write(raw[:8] + new + raw[8 + n:])
    with safe_open(path, "pt") as f:  # still readable, same metadata
        assert f.metadata() == hdr["__metadata__"]


def header_order(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
    hdr.pop("__metadata__", None)
    return sorted(hdr, key=lambda k: hdr[k]["data_offsets"][0])


def modules_of(sd):
    return sorted({k.split(".")[0] for k in sd if ".lora_down" in k})


def delta(sd, name, up_key="lora_up", down_key="lora_down"):
    """(alpha/r) * up @ down as float64 (out, in*kh*kw); alpha = rank if absent."""
    up = sd[f"{name}.{up_key}.weight"].double()
    down = sd[f"{name}.{down_key}.weight"].double()
    r = down.shape[0]
    a = sd.get(name + ".alpha")
    a = r if a is None else float(a)
    return (a / r) * (up.reshape(up.shape[0], r) @ down.reshape(r, -1))


def rel(a, b):
    nb = float(torch.linalg.norm(b))
    nd = float(torch.linalg.norm(a - b))
    if nb == 0.0:
        return 0.0 if nd == 0.0 else float("inf")
    return nd / nb


def kohya_clamp(us, vh, q=CLAMP_QUANTILE):
    dist = np.concatenate([us.ravel(), vh.ravel()])
    hi = np.quantile(dist, q)  # linear interpolation, as torch.quantile
    return np.clip(us, -hi, hi), np.clip(vh, -hi, hi)


def clamp_study(target, rank, kohya_rec):
    """target: exact float64 ΔW (flat 2-D).  Returns (clamp effect vs unclamped truncation,
    worst difference to kohya's reconstruction over all singular-vector sign patterns,
    relative gap (S[r-1]-S[r])/S[0], signal margin).  signal margin: the values at and above the
    quantile's lower interpolation point all come from U*S columns with non-negligible S and exceed
    |any other value| (Vh, null-space U*S) by this relative margin -> hi does not depend on the SVD's
    choice of signs or of null-space bases."""
    t = target.numpy()
    if not np.any(t):
        return 0.0, 0.0, None, None
    u, s, vh = np.linalg.svd(t, full_matrices=False)
    us, vr = u[:, :rank] * s[:rank], vh[:rank]
    r0 = torch.from_numpy(us @ vr)
    effect, flip = 0.0, 0.0
    for signs in itertools.product((1.0, -1.0), repeat=rank):
        sg = np.array(signs)
        cu, cv = kohya_clamp(us * sg[None, :], vr * sg[:, None])
        rec = torch.from_numpy(cu @ cv)
        effect = max(effect, rel(rec, r0))
        flip = max(flip, rel(rec, kohya_rec))
    gap = None if rank >= len(s) else float((s[rank - 1] - s[rank]) / s[0])
    sig = s[:rank] > 1e-5 * s[0]
    signal = np.sort(us[:, sig].ravel())
    other = np.concatenate([us[:, ~sig].ravel(), vr.ravel()])
    n = us.size + vr.size
    k = int(np.floor(CLAMP_QUANTILE * (n - 1)))
    need = n - k  # values at/above the lower interpolation point
    margin = (signal[-need] / np.max(np.abs(other)) - 1.0) if len(signal) >= need else -1.0
    return effect, flip, gap, float(margin)


def kohya_effect(kohya_rec, target, rank):
    t = target.numpy()
    if not np.any(t):
        return 0.0
    u, s, vh = np.linalg.svd(t, full_matrices=False)
    return rel(kohya_rec, torch.from_numpy((u[:, :rank] * s[:rank]) @ vh[:rank]))


def describe_output(path, keep_alphas=True):
    """Ranks, alphas (as stored), dtypes and metadata of a kohya output file."""
    sd, meta, _ = read(path)
    mods = modules_of(sd)
    alphas = {m: float(sd[m + ".alpha"]) for m in mods if m + ".alpha" in sd}
    ranks = {m: int(sd[m + ".lora_down.weight"].shape[0]) for m in mods}
    order = header_order(path)
    info = dict(ranks=ranks,
                alpha_dtype=sorted({str(sd[m + ".alpha"].dtype).replace("torch.", "") for m in alphas}),
                alpha_shape=sorted({tuple(sd[m + ".alpha"].shape) for m in alphas}),
                weight_dtype=sorted({str(sd[k].dtype).replace("torch.", "") for k in sd if k.endswith(".weight")}),
                alpha_equals_rank=all(alphas.get(m) == ranks[m] for m in mods),
                tensor_order_sorted_by_name=order == sorted(order),
                metadata=dict(sorted(meta.items())))
    if keep_alphas or not info["alpha_equals_rank"]:
        info["alphas"] = alphas
    return sd, meta, info


def tolerance(x):
    """max(1e-4, 1.25*x + 1e-5) rounded up to 2 significant digits.  The 1e-4 floor leaves room for a
    float32 SVD other than LAPACK's gesdd (Jacobi, Gram-matrix eigen...); it is far below every clamp
    effect the SVD cases contain, so a missing or different clamp still fails."""
    t = max(1e-4, 1.25 * x + 1e-5)
    e = 10 ** (np.floor(np.log10(t)) - 1)
    return float("%.2g" % (np.ceil(t / e - 1e-9) * e))


# ---------------------------------------------------------------------------------------------

def exact_merge(inputs, ratios):
    acc = {}
    for path, ratio in zip(inputs, ratios):
        sd = {k: v.float() for k, v in load_file(path).items()}
        for m in modules_of(sd):
            d = ratio * delta(sd, m)
            acc[m] = acc[m] + d if m in acc else d
    return acc


def resize_choices(sd, method, param, cap, conv_cap):
    """Margins of kohya's dynamic rank criteria on the (unscaled) up@down product, float64.
    Only used to check that the fixture is far from ties; the ranks recorded are kohya's."""
    margins = {}
    for m in modules_of(sd):
        up = sd[m + ".lora_up.weight"].double()
        down = sd[m + ".lora_down.weight"].double()
        r = down.shape[0]
        s = torch.linalg.svdvals(up.reshape(up.shape[0], r) @ down.reshape(r, -1)).numpy()
        if s[0] <= 1e-6:
            continue
        sig = s[s > 1e-5 * s[0]]
        if method == "sv_ratio":
            mg = np.min(np.abs(sig / (s[0] / param) - 1.0))
        elif method == "sv_fro":
            c = np.cumsum(s ** 2) / np.sum(s ** 2)
            mg = np.min(np.abs(c[: len(sig)] - param ** 2))
        elif method == "sv_cumulative":
            c = np.cumsum(s) / np.sum(s)
            mg = np.min(np.abs(c[: len(sig)] - param))
        else:
            k = cap if down.dim() == 2 else conv_cap
            mg = 1.0 if k >= len(sig) else (s[k - 1] - s[k]) / s[0]
        margins[m] = float(mg)
    return margins


VERBOSE_RE = re.compile(r"^(\S+)\s+\| sum\(S\) retained: .*?(?:, dynamic \| dim: (\d+), alpha: (\S+))?$")


def parse_verbose(stdout):
    out = {}
    for line in stdout.splitlines():
        m = VERBOSE_RE.match(line.strip())
        if m:
            out[m.group(1)] = dict(line=line.strip(), dim=None if m.group(2) is None else int(m.group(2)),
                                   alpha=None if m.group(3) is None else float(m.group(3)))
    return out


# =============================================================================================
# main
# =============================================================================================

def versions(sd_scripts):
    import diffusers
    import safetensors
    import transformers
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=sd_scripts, capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    return {"sd-scripts": rev or SD_SCRIPTS_COMMIT, "torch": torch.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0]}


def wait_ready(bases):
    ready = os.path.join(bases, "READY")
    while not os.path.exists(ready):
        print("waiting for", ready, flush=True)
        time.sleep(30)


def main(argv=None):
    global OUT_DIR
    ap = argparse.ArgumentParser(description="mood SVD merge/resize/extract fixtures from kohya sd-scripts")
    ap.add_argument("--sd-scripts", required=True, help="kohya sd-scripts checkout (commit 48d368fa)")
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--bases", default=BASES_DIR)
    a = ap.parse_args(argv)
    OUT_DIR = os.path.abspath(a.out)
    sd_scripts = os.path.abspath(a.sd_scripts)
    os.makedirs(OUT_DIR, exist_ok=True)
    wait_ready(a.bases)
    tm.set_sd_scripts(sd_scripts)
    tm.kohya()
    torch.set_num_threads(1)
    for f in os.listdir(OUT_DIR):  # start clean (only our own folder)
        if f.endswith(".safetensors") or f == "cases.json":
            os.remove(os.path.join(OUT_DIR, f))

    # ---- base model, targeted modules --------------------------------------------------------
    base_file = os.path.join(a.bases, "sd1_base.safetensors")
    models = tm.make_models("sd1")
    unet, te = models["unet"], models["te1"]
    ref = tm.to_single_file("sd1", unet, te)
    ref.update(tm.extra_tensors("sd1"))
    on_disk = load_file(base_file)
    assert set(ref) == set(on_disk) and not tm.changed_tensors(ref, on_disk), "bases/sd1_base differs from tiny_models"
    shapes = target_modules(unet, te)

    # ---- inputs ------------------------------------------------------------------------------
    for fname, cfg in INPUTS.items():
        write_input(os.path.join(OUT_DIR, fname), cfg["spec"], cfg["dtype"], cfg["seed"], cfg["metadata"], shapes,
                    cfg.get("paired", False), cfg.get("up_scale", 1.0))
    p = lambda f: os.path.join(OUT_DIR, f)  # noqa: E731

    cases = {"generator": "tools/make_fixtures_svd.py (kohya sd-scripts networks/svd_merge_lora.py, "
                          "resize_lora.py, extract_lora_from_models.py)",
             "versions": versions(sd_scripts),
             "notes": {
                 "compare": "per module: D = (alpha/rank) * lora_up.flat(out,r) @ lora_down.flat(r,-1); "
                            "rel_fro = ||D_mood - D_kohya||_F / ||D_kohya||_F <= tol_rel_fro "
                            "(if ||D_kohya|| == 0: ||D_mood|| must be ~0)",
                 "max_rel_fro_clamp_effect": "max over modules and over all 2^rank sign patterns of the kept "
                                             "singular vectors of ||clamp99(U S, Vh) - (U S Vh)_rank|| / ||(U S Vh)_rank|| "
                                             "(float64 simulation of kohya's signed 0.99-quantile clamp)",
                 "max_rel_fro_sign_flip": "max over modules and sign patterns of ||clamped reconstruction(signs) - "
                                          "kohya output|| / ||kohya output||: what a different LAPACK sign convention costs",
                 "kohya_rel_fro_vs_best_rank": "max over modules of ||kohya output - exact best rank-r approx|| / ||best||",
                 "tol_rel_fro": "max(1e-4, 1.25 * max_rel_fro_sign_flip + 1e-5) (SVD cases), "
                                "max(1e-4, 1.25 * kohya_rel_fro_vs_best_rank + 1e-5) (resize: no clamp)",
                 "design": "kohya's clamp uses the signed 0.99 quantile (linear interpolation) of "
                           "concat(flat(U*S), flat(Vh)), clamps both to [-hi, hi]; on modules this small "
                           "that is ~the top 2-5 values, so for generic random inputs the result depends on "
                           "the SVD's singular-vector signs (measured 0.26 rel. Frobenius for a random "
                           "2-LoRA merge, 0.85 for a random extraction). Inputs of the SVD cases are "
                           "therefore built with lora_up rows / delta rows in negated pairs (fixed pairing "
                           "per module) and large singular values: every left singular vector with S>0 "
                           "has a sign-symmetric multiset of entries and the values that fix hi all come "
                           "from U*S (min_clamp_signal_margin > 0.05), so kohya's output is independent "
                           "of the SVD's signs / null-space basis (max_rel_fro_sign_flip ~1e-6) while "
                           "the clamp still changes the result a lot (max_rel_fro_clamp_effect).",
                 "reference": "exact float64 sum_i ratio_i*(alpha_i/r_i)*up_i@down_i per module (key <module>.diff, "
                              "F32, flattened (out, in*kh*kw)), computed by this script, not by kohya",
                 "timestamp": f"kohya ran with time fixed to {FIXED_TIMESTAMP} and TZ=UTC (modelspec.date)",
             },
             "inputs": {}, "merge": [], "resize": [], "extract": []}
    for fname, cfg in INPUTS.items():
        sd = load_file(p(fname))
        cases["inputs"][fname] = {
            "dtype": str(cfg["dtype"]).replace("torch.", ""),
            "modules": {m: {"shape": list(shapes[m]), "rank": int(sd[m + ".lora_down.weight"].shape[0]),
                            "alpha": None if m + ".alpha" not in sd else float(sd[m + ".alpha"])}
                        for m in modules_of(sd)},
            "metadata": cfg["metadata"]}

    # ---- SVD merge ---------------------------------------------------------------------------
    merge_cases = [
        dict(name="svd_merge_ab", inputs=[("lora_a.safetensors", 0.7), ("lora_b.safetensors", -0.4)],
             rank=4, conv_rank=2),
        dict(name="svd_merge_a_rank6", inputs=[("lora_a.safetensors", 0.8)], rank=6, conv_rank=None),
    ]
    for c in merge_cases:
        exp = c["name"] + ".safetensors"
        argv = ["--save_to", exp, "--models"] + [f for f, _ in c["inputs"]] + \
               ["--ratios"] + [str(r) for _, r in c["inputs"]] + \
               ["--new_rank", str(c["rank"]), "--device", "cpu", "--precision", "float", "--save_precision", "float"]
        if c["conv_rank"] is not None:
            argv += ["--new_conv_rank", str(c["conv_rank"])]
        kohya(sd_scripts, "svd_merge_lora.py", argv)
        acc = exact_merge([p(f) for f, _ in c["inputs"]], [r for _, r in c["inputs"]])
        refname = c["name"] + "_reference.safetensors"
        save_file({m + ".diff": v.float().contiguous() for m, v in acc.items()}, p(refname),
                  metadata={"mood_fixture": "exact float64 sum ratio*(alpha/r)*up@down, flattened (out, in*kh*kw)"})
        sd, meta, info = describe_output(p(exp), keep_alphas=False)
        eff = flip = best = 0.0
        gaps, margins, per_module = {}, {}, {}
        for m in modules_of(sd):
            rec = delta(sd, m)
            e, f_, gap, mg = clamp_study(acc[m], info["ranks"][m], rec)
            per_module[m] = e
            eff, flip = max(eff, e), max(flip, f_)
            if mg is not None:
                margins[m] = mg
            best = max(best, kohya_effect(rec, acc[m], info["ranks"][m]))
            if gap is not None:
                gaps[m] = gap
        cases["merge"].append(dict(
            name=c["name"], inputs=[{"file": f, "ratio": r} for f, r in c["inputs"]],
            rank=c["rank"], conv_rank=c["conv_rank"], expected=exp, reference=refname,
            command="networks/svd_merge_lora.py " + " ".join(argv),
            tol_rel_fro=tolerance(flip), max_rel_fro_clamp_effect=eff, max_rel_fro_sign_flip=flip,
            kohya_rel_fro_vs_best_rank=best, min_rel_singular_gap=min(gaps.values()) if gaps else None,
            min_clamp_signal_margin=min(margins.values()), rel_fro_clamp_effect=per_module, **info))
        bad = {m: v for m, v in margins.items() if v < 0.05}
        assert not bad and (not gaps or min(gaps.values()) > 1e-3), (c["name"], bad, gaps)

    # ---- resize ------------------------------------------------------------------------------
    resize_cases = [
        dict(name="resize_c_fixed2", rank=2, conv_rank=None, dynamic=None),
        dict(name="resize_c_fixed3_conv1", rank=3, conv_rank=1, dynamic=None),
        dict(name="resize_c_sv_ratio4", rank=8, conv_rank=None, dynamic={"method": "sv_ratio", "param": 4.0}),
        dict(name="resize_c_sv_fro09", rank=8, conv_rank=None, dynamic={"method": "sv_fro", "param": 0.9}),
        dict(name="resize_c_sv_cumulative09", rank=8, conv_rank=None,
             dynamic={"method": "sv_cumulative", "param": 0.9}),
    ]
    c_sd = load_file(p("lora_c.safetensors"))
    c_sd = {k: v.float() for k, v in c_sd.items()}
    for c in resize_cases:
        exp = c["name"] + ".safetensors"
        argv = ["--model", "lora_c.safetensors", "--save_to", exp, "--new_rank", str(c["rank"]),
                "--save_precision", "float", "--device", "cpu", "--verbose"]
        if c["conv_rank"] is not None:
            argv += ["--new_conv_rank", str(c["conv_rank"])]
        if c["dynamic"]:
            argv += ["--dynamic_method", c["dynamic"]["method"], "--dynamic_param", str(c["dynamic"]["param"])]
        stdout = kohya(sd_scripts, "resize_lora.py", argv)
        verbose = parse_verbose(stdout)
        sd, meta, info = describe_output(p(exp))
        assert set(verbose) == set(info["ranks"]), (sorted(verbose), sorted(info["ranks"]))
        if c["dynamic"]:
            for m, v in verbose.items():
                assert v["dim"] == info["ranks"][m] and abs(v["alpha"] - info["alphas"][m]) < 1e-6, (m, v)
        worst = 0.0
        for m in modules_of(sd):
            k = info["ranks"][m]
            t = delta(c_sd, m).numpy()
            if not np.any(t):
                continue
            u, s, vh = np.linalg.svd(t, full_matrices=False)
            worst = max(worst, rel(delta(sd, m), torch.from_numpy((u[:, :k] * s[:k]) @ vh[:k])))
        margins = resize_choices(c_sd, c["dynamic"]["method"] if c["dynamic"] else None,
                                 c["dynamic"]["param"] if c["dynamic"] else None, c["rank"],
                                 c["conv_rank"] if c["conv_rank"] is not None else c["rank"])
        assert min(margins.values()) > 1e-3, margins
        cases["resize"].append(dict(
            name=c["name"], input="lora_c.safetensors", rank=c["rank"], conv_rank=c["conv_rank"],
            dynamic=c["dynamic"], expected=exp, command="networks/resize_lora.py " + " ".join(argv),
            tol_rel_fro=tolerance(worst), kohya_rel_fro_vs_best_rank=worst,
            min_decision_margin=min(margins.values()),
            verbose={m: v["line"] for m, v in sorted(verbose.items())}, **info))

    # ---- extract -----------------------------------------------------------------------------
    zero_module = P + "mid_block_attentions_0_proj_out"
    m2 = tm.make_models("sd1")
    write_tuned(p("extract_tuned.safetensors"), m2["unet"], m2["te1"], shapes, zero_module)
    base_rel = os.path.relpath(base_file, OUT_DIR)
    # exact diffs per kohya module, through the same loader kohya uses in the subprocess
    loader = _tiny_sd1_loader(tm)
    te_b, _, un_b = loader(False, base_file)
    te_t, _, un_t = loader(False, p("extract_tuned.safetensors"))
    wb = {n: q for n, q in itertools.chain(te_b.named_parameters(prefix="lora_te"), un_b.named_parameters(prefix="lora_unet"))}
    wt = {n: q for n, q in itertools.chain(te_t.named_parameters(prefix="lora_te"), un_t.named_parameters(prefix="lora_unet"))}
    diffs = {}
    for n in wb:
        if n.endswith(".weight"):
            ln = n[: -len(".weight")].replace(".", "_")
            if ln in shapes:
                d = (wt[n].detach() - wb[n].detach()).double()
                diffs[ln] = d.reshape(d.shape[0], -1)
    te_max = max(float(d.abs().max()) for m, d in diffs.items() if m.startswith("lora_te_"))
    extract_cases = [
        dict(name="extract_dim4_conv2", dim=4, conv_dim=2, min_diff=0.01),
        dict(name="extract_dim4_noconv_te_skipped", dim=4, conv_dim=None, min_diff=round(te_max * 1.5, 3)),
    ]
    for c in extract_cases:
        exp = c["name"] + ".safetensors"
        argv = ["--model_org", base_rel, "--model_tuned", "extract_tuned.safetensors", "--save_to", exp,
                "--dim", str(c["dim"]), "--save_precision", "float", "--device", "cpu", "--min_diff", str(c["min_diff"])]
        if c["conv_dim"] is not None:
            argv += ["--conv_dim", str(c["conv_dim"])]
        kohya(sd_scripts, "extract_lora_from_models.py", argv)
        sd, meta, info = describe_output(p(exp), keep_alphas=False)
        eff = flip = best = 0.0
        gaps, margins, per_module = {}, {}, {}
        for m in modules_of(sd):
            rec = delta(sd, m)
            e, f_, gap, mg = clamp_study(diffs[m], info["ranks"][m], rec)
            eff, flip = max(eff, e), max(flip, f_)
            if mg is not None:
                margins[m] = mg
            best = max(best, kohya_effect(rec, diffs[m], info["ranks"][m]))
            if gap is not None:
                gaps[m] = gap
        cases["extract"].append(dict(
            name=c["name"], base=base_rel, tuned="extract_tuned.safetensors", rank=c["dim"],
            conv_rank=c["conv_dim"], min_diff=c["min_diff"], expected=exp,
            command="networks/extract_lora_from_models.py " + " ".join(argv),
            te_max_abs_diff=te_max, te_extracted=any(m.startswith("lora_te_") for m in modules_of(sd)),
            zero_diff_module=zero_module,
            tol_rel_fro=tolerance(flip), max_rel_fro_clamp_effect=eff, max_rel_fro_sign_flip=flip,
            kohya_rel_fro_vs_best_rank=best, min_rel_singular_gap=min(gaps.values()) if gaps else None,
            min_clamp_signal_margin=min(margins.values()), **info))
        bad = {m: v for m, v in margins.items() if v < 0.05}
        assert not bad and (not gaps or min(gaps.values()) > 1e-3), (c["name"], bad, gaps)

    with open(p("cases.json"), "w") as f:
        json.dump(cases, f, indent=1, sort_keys=False)
        f.write("\n")
    for x in os.listdir(OUT_DIR):
        if x.endswith(".safetensors"):
            canonical_header(p(x))
        os.chmod(p(x), 0o644)
    total = sum(os.path.getsize(p(x)) for x in os.listdir(OUT_DIR))
    print(f"wrote {OUT_DIR}: {len(os.listdir(OUT_DIR))} files, {total} bytes")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--run-kohya":
        sep = sys.argv.index("--")
        run_kohya_main(sys.argv[2], sys.argv[3], sys.argv[sep + 1:])
    else:
        main()
