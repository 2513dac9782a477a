"""Reference "bake" fixtures computed by kohya sd-scripts itself -> tests/fixtures/kohya/

Produces
    tests/fixtures/kohya/<lora>.safetensors           kohya LoRA / LoCon files (networks/lora.py create_network
                                                      + LoRANetwork.save_weights, kohya names + ss_/sshs_/modelspec metadata)
    tests/fixtures/kohya/<case>.expected.safetensors  tensors of the merged single-file checkpoint that differ
                                                      from the base (kohya networks/merge_lora.py merge_to_sd_model,
                                                      networks/sdxl_merge_lora.py merge_to_sd_model, float32)
    tests/fixtures/kohya/cases.json                   case list (schema in tests/fixtures/README.md "## kohya")

Bases come from tools/tiny_models.py (tests/fixtures/bases/, written by that script).

Run (from the repository root):
    git clone SD_SCRIPTS_REPO /tmp/sd-scripts  # kohya-ss/sd-scripts, commit 48d368fa
    tools/.venv/bin/python tools/make_fixtures_kohya.py --sd-scripts /tmp/sd-scripts

Deterministic: model weights and LoRA factors come from generators seeded by crc32 of names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TZ", "UTC")  # kohya's modelspec.date uses local time
os.environ.setdefault("TQDM_DISABLE", "1")  # sdxl_merge_lora progress bars
if hasattr(time, "tzset"):
    time.tzset()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_models as tm  # noqa: E402

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

OUT_DIR = os.path.join(tm.REPO_ROOT, "tests", "fixtures", "kohya")
TIMESTAMP = 1767225600.0  # 2026-01-01T00:00:00Z, fixed for modelspec.date

# ------------------------------------------------------------------------------------------
# LoRA files: name -> recipe
#   dim/alpha: Linear + 1x1 conv rank/alpha;  conv_dim/conv_alpha: 3x3 conv (LoCon) or None
#   block_dims/block_alphas: kohya per-block ranks/alphas (network_args), 0 = block skipped
#   modules: instead of create_network, build kohya's LoRANetwork with modules_dim/modules_alpha
#            (the create_network_from_weights path) for the modules whose name matches one of the
#            regexes; value = (rank, alpha) for Linear/1x1 and for 3x3 convs
#   te/unet: LoRANetwork.apply_to(apply_text_encoder, apply_unet) (train_network.py
#            --network_train_unet_only / --network_train_text_encoder_only)
#   save_dtype: dtype passed to save_weights (None keeps F32 factors; an int alpha stays I64)
# ------------------------------------------------------------------------------------------
SD1_BLOCKS = 25   # kohya networks/lora.py: NUM_OF_BLOCKS*2 + NUM_OF_MID_BLOCKS (index 0 unused)
SDXL_BLOCKS = 23  # 1 + 9 + 3 + 9 + 1


def blocks(n, values, default=0):
    v = [default] * n
    for i, x in values.items():
        v[i] = x
    return ",".join(str(x) for x in v)


LORAS = {
    # full attention coverage (all 16 Transformer2DModel blocks + TE), F32
    "sd1_lora": dict(family="sd1", dim=4, alpha=2.0, save_dtype=None),
    # LoCon: conv_dim 2 / conv_alpha 1 on every 3x3 conv (resnets, downsamplers, upsamplers); Linear/1x1
    # modules only in 4 blocks with different ranks and alphas (IN01 r4 a2, MID r2 a1, OUT03 r4 a8, OUT11 r1 a0.5)
    "sd1_locon_fp16": dict(family="sd1", dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0, save_dtype=torch.float16,
                           block_dims=blocks(SD1_BLOCKS, {1: 4, 12: 2, 16: 4, 24: 1}),
                           block_alphas=blocks(SD1_BLOCKS, {1: 2.0, 12: 1.0, 16: 8.0, 24: 0.5}, 1.0)),
    # attention LoRA in a few blocks only (IN02, IN07, MID, OUT07), BF16
    "sd1_lora_bf16": dict(family="sd1", dim=4, alpha=1.0, save_dtype=torch.bfloat16,
                          block_dims=blocks(SD1_BLOCKS, {2: 4, 7: 4, 12: 4, 20: 2}),
                          block_alphas=blocks(SD1_BLOCKS, {}, 1.0)),
    # kohya LoRANetwork(modules_dim=..., modules_alpha=...) with *int* alphas -> I64 `alpha` tensors
    "sd2_locon": dict(family="sd2", save_dtype=None, modules={
        r"^lora_te_": ((4, 2), None),
        r"^lora_unet_down_blocks_1_attentions_0_": ((4, 2), None),
        r"^lora_unet_down_blocks_1_resnets_0_": ((4, 2), (2, 1)),
        r"^lora_unet_mid_block_": ((4, 2), (2, 1)),
        r"^lora_unet_up_blocks_2_upsamplers_": (None, (2, 1)),
        r"^lora_unet_up_blocks_3_resnets_1_": ((4, 2), (2, 1)),
        r"^lora_unet_up_blocks_3_attentions_1_": ((4, 2), None),
    }),
    # full SDXL attention coverage with lora_te1_/lora_te2_ and SGM names, F32
    "sdxl_lora": dict(family="sdxl", dim=4, alpha=2.0, save_dtype=None),
    # U-Net-only LoCon: every 3x3 conv (rank 2 alpha 1); Linear/1x1 in IN04 (r2), MID1 (r2), OUT02 (r1)
    "sdxl_locon": dict(family="sdxl", dim=2, alpha=1.0, conv_dim=2, conv_alpha=1.0, save_dtype=None, te=False,
                       block_dims=blocks(SDXL_BLOCKS, {5: 2, 11: 2, 15: 1}),
                       block_alphas=blocks(SDXL_BLOCKS, {}, 1.0)),
}

F32_TOL = dict(rtol=1e-5, atol=1e-6)
F16_TOL = dict(rtol=1e-3, atol=1e-6)  # output rounded to F16 once: allow 1 ulp

# case: (name, family, fp16 base?, [(lora, unet multiplier, te multiplier)], description)
CASES = [
    ("sd1_lora", "sd1", False, [("sd1_lora", 1.0, 1.0)],
     "SD1 attention-only LoRA (TE + all 16 attention blocks), F32 factors, rank 4 alpha 2, ratio 1.0"),
    ("sd1_locon_fp16_0.7", "sd1", False, [("sd1_locon_fp16", 0.7, 0.7)],
     "SD1 block-wise LoCon (all 3x3 convs rank 2; per-block ranks/alphas for Linear/1x1), F16 factors, ratio 0.7"),
    ("sd1_bf16_unet0.8_te0.5", "sd1", False, [("sd1_lora_bf16", 0.8, 0.5)],
     "BF16 LoRA, U-Net multiplier 0.8 and text-encoder multiplier 0.5 (kohya merge called once per part)"),
    ("sd1_fp16base_locon", "sd1", True, [("sd1_locon_fp16", 1.0, 1.0)],
     "F16 base: upcast to F32, merge in F32, cast once to F16 (kohya merge_lora --precision float --save_precision fp16)"),
    ("sd2_locon", "sd2", False, [("sd2_locon", 1.0, 1.0)],
     "SD2 LoRA/LoCon subset with I64 alphas; OpenCLIP text encoder (q/k/v deltas land in fused in_proj_weight rows), "
     "Linear proj_in/proj_out"),
    ("sdxl_two_loras_neg", "sdxl", False, [("sdxl_lora", 0.7, 0.7), ("sdxl_locon", -0.5, -0.5)],
     "two LoRAs merged in sequence: attention LoRA at 0.7, then a U-Net-only LoCon at -0.5 (negative strength)"),
]


def rel(p):
    return os.path.relpath(p, tm.REPO_ROOT)


def make_train_models(family):
    """Modules kohya trains/merges on: diffusers UNet for SD1/SD2 (kohya's original_unet uses the same
    names), kohya's own SGM-named SdxlUNet2DConditionModel for SDXL."""
    m = tm.make_models(family)
    if family == "sdxl":
        m["unet"] = tm.make_kohya_sdxl_unet(load_from=m["unet"])
    return m


def text_encoders(m):
    return [m["te1"], m["te2"]] if m["te2"] is not None else m["te1"]


def _all_lora_names(family):
    """(name, is_3x3_conv) of every module kohya can target (LoCon network on throwaway models)."""
    lora = tm.kohya().lora
    m = make_train_models(family)
    lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE = ["Transformer2DModel"]
    net = lora.create_network(1.0, 1, 1.0, None, text_encoders(m), m["unet"], conv_dim="1", conv_alpha="1")
    lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE = ["Transformer2DModel"]
    out = []
    for mod in net.text_encoder_loras + net.unet_loras:
        is_conv3 = isinstance(mod.lora_down, torch.nn.Conv2d) and mod.lora_down.kernel_size != (1, 1)
        out.append((mod.lora_name, is_conv3))
    return out


def build_lora(name, r):
    import re

    k = tm.kohya()
    lora = k.lora
    family = r["family"]
    is_sdxl = family == "sdxl"
    m = make_train_models(family)
    # kohya quirk: LoRANetwork.__init__ does `target_modules += UNET_TARGET_REPLACE_MODULE_CONV2D_3X3` on the
    # class attribute list, so after one LoCon network every later network in the same process also targets
    # ResnetBlock2D etc. Reset it so each file is what a fresh `train_network.py` process would write.
    lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE = ["Transformer2DModel"]
    net_kwargs = {}
    if "modules" in r:
        dims, alphas = {}, {}
        for lname, is_conv3 in _all_lora_names(family):
            for pat, (lin, conv) in r["modules"].items():
                spec = conv if is_conv3 else lin
                if re.search(pat, lname) and spec is not None:
                    dims[lname], alphas[lname] = spec
                    break
        lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE = ["Transformer2DModel"]
        net = lora.LoRANetwork(text_encoders(m), m["unet"], multiplier=1.0, modules_dim=dims, modules_alpha=alphas,
                               is_sdxl=is_sdxl)
        dim_md, alpha_md = "Dynamic", "Dynamic"
    else:
        for key in ("conv_dim", "conv_alpha", "block_dims", "block_alphas"):
            if r.get(key) is not None:
                net_kwargs[key] = str(r[key])
        net = lora.create_network(1.0, r["dim"], r["alpha"], None, text_encoders(m), m["unet"], **net_kwargs)
        dim_md, alpha_md = str(r["dim"]), str(r["alpha"])
    lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE = ["Transformer2DModel"]
    net.apply_to(text_encoders(m), m["unet"], r.get("te", True), r.get("unet", True))
    with torch.no_grad():
        for mod in net.text_encoder_loras + net.unet_loras:
            for part in ("lora_down", "lora_up"):
                w = getattr(mod, part).weight
                g = torch.Generator().manual_seed(tm._seed_for(f"{name}/{mod.lora_name}/{part}"))
                w.copy_(0.1 * torch.randn(w.shape, generator=g))
    md = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": dim_md,
        "ss_network_alpha": alpha_md,
        "ss_network_args": json.dumps(net_kwargs) if net_kwargs else "None",
        "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[family],
        "ss_v2": str(family == "sd2"),
        "ss_output_name": name,
        "ss_training_comment": "mood fixture: random factors, not trained",
    }
    import library.sai_model_spec as sai_model_spec

    md.update(sai_model_spec.build_metadata(None, family == "sd2", False, is_sdxl, True, False, TIMESTAMP, title=name))
    md["modelspec.implementation_version"] = "sd-scripts/" + tm.SD_SCRIPTS_COMMIT
    path = os.path.join(OUT_DIR, name + ".safetensors")
    net.save_weights(path, r["save_dtype"], md)  # adds sshs_model_hash / sshs_legacy_hash
    sort_metadata_keys(path)
    n_te, n_un = len(net.text_encoder_loras), len(net.unet_loras)
    print(f"wrote {rel(path)}: {n_te} TE + {n_un} U-Net modules, {os.path.getsize(path)} bytes")
    return path, n_te, n_un


def _dumps(obj):
    # serde_json (the safetensors writer) == compact json.dumps without ASCII escaping
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sort_metadata_keys(path):
    """The safetensors package writes `__metadata__` keys in a random order on every save (Rust HashMap),
    so kohya's files differ from run to run.  Rewrite the header with the metadata keys sorted: same
    length, same tensors/offsets/data, a byte sequence the writer itself can produce."""
    import struct
    from collections import OrderedDict

    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    raw = data[8:8 + n]
    hdr = json.loads(raw, object_pairs_hook=OrderedDict)
    assert _dumps(hdr).encode("utf-8") == raw.rstrip(b" "), "json.dumps does not reproduce the writer's header"
    hdr["__metadata__"] = OrderedDict(sorted(hdr["__metadata__"].items()))
    new = _dumps(hdr).encode("utf-8")
    assert len(new) == len(raw.rstrip(b" "))
    new += b" " * (n - len(new))
    with open(path, "wb") as f:
        f.write(data[:8] + new + data[8 + n:])
    os.chmod(path, 0o644)


class _Nothing(torch.nn.Module):
    """Stand-in for the part (TE or U-Net) that a merge call must not touch."""


def run_case(case):
    name, family, fp16_base, loras, desc = case
    k = tm.kohya()
    base_file = tm.base_path(family, fp16_base)
    base = load_file(base_file)
    m = make_train_models(family)
    if fp16_base:
        for key in ("unet", "te1", "te2"):
            if m[key] is not None:
                m[key].to(torch.float16)
        # the fp16 base must be exactly the stored file
        assert tm.changed_tensors(tm.to_single_file(family, m["unet"], m["te1"], m["te2"]), base) == {}
    tes = [m["te1"], m["te2"]] if family == "sdxl" else [m["te1"]]
    nothing = _Nothing()

    def merge(te_list, unet, path, ratio):
        if family == "sdxl":
            k.sdxl_merge_lora.merge_to_sd_model(te_list[0], te_list[1], unet, [path], [ratio], [], torch.float32)
        else:
            k.merge_lora.merge_to_sd_model(te_list[0], unet, [path], [ratio], torch.float32)

    for lora_name, unet_mult, te_mult in loras:
        path = os.path.join(OUT_DIR, lora_name + ".safetensors")
        if unet_mult == te_mult:
            merge(tes, m["unet"], path, unet_mult)
        else:  # kohya has one ratio per file: merge the TE part and the U-Net part separately
            merge(tes, nothing, path, te_mult)
            merge([nothing] * len(tes), m["unet"], path, unet_mult)

    merged = tm.to_single_file(family, m["unet"], m["te1"], m["te2"])
    if fp16_base:
        merged = tm.to_dtype(merged, torch.float16)
    changed = tm.changed_tensors(merged, base)
    assert set(changed) <= set(base), "merge produced keys not in the base"
    for key, t in changed.items():
        assert t.dtype == base[key].dtype and t.shape == base[key].shape, key
    exp_name = name + ".expected.safetensors"
    exp_path = os.path.join(OUT_DIR, exp_name)
    save_file(changed, exp_path, metadata={"mood_fixture": f"{name}: tensors changed by the merge ({desc})"})
    os.chmod(exp_path, 0o644)
    print(f"wrote {rel(exp_path)}: {len(changed)} of {len(base)} tensors changed, {os.path.getsize(exp_path)} bytes")
    merge_fn = "networks/sdxl_merge_lora.py" if family == "sdxl" else "networks/merge_lora.py"
    return {
        "name": name,
        "family": family,
        "base": os.path.relpath(base_file, OUT_DIR),
        "loras": [{"file": ln + ".safetensors", "unet": u, "te": t} for ln, u, t in loras],
        "expected": exp_name,
        "reference": f"kohya sd-scripts {tm.SD_SCRIPTS_COMMIT} {merge_fn} merge_to_sd_model, merge dtype float32"
                     + (", result cast to float16" if fp16_base else "")
                     + "; merged modules converted to single-file keys with kohya's converters (tools/tiny_models.py)",
        "description": desc,
        **(F16_TOL if fp16_base else F32_TOL),
    }


def versions():
    import diffusers
    import safetensors
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__,
            "sd-scripts": tm.SD_SCRIPTS_COMMIT}


def describe_lora(path):
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        dt = sorted({str(f.get_slice(k).get_dtype()) for k in keys})
    return keys, dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd-scripts", default=tm._SD_SCRIPTS, help="kohya sd-scripts checkout (commit 48d368fa)")
    a = ap.parse_args(argv)
    tm.set_sd_scripts(a.sd_scripts)
    tm.kohya()
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    for fam in tm.FAMILIES:
        if not os.path.exists(tm.base_path(fam)):
            sys.exit(f"missing {rel(tm.base_path(fam))}: run tools/tiny_models.py first")
        # the stored base must be what tiny_models builds now
        assert tm.changed_tensors(tm.base_state_dict(fam), load_file(tm.base_path(fam))) == {}, fam
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.manual_seed(0)
    lora_info = {}
    for name, r in LORAS.items():
        path, n_te, n_un = build_lora(name, r)
        keys, dts = describe_lora(path)
        info = {"family": r["family"], "te_modules": n_te, "unet_modules": n_un, "keys": len(keys), "dtypes": dts}
        for key in ("dim", "alpha", "conv_dim", "conv_alpha", "block_dims", "block_alphas"):
            if r.get(key) is not None:
                info[key] = r[key]
        if "modules" in r:
            info["modules"] = {pat: {"linear": lin, "conv3x3": conv} for pat, (lin, conv) in r["modules"].items()}
        lora_info[name + ".safetensors"] = info
    bake = [run_case(c) for c in CASES]
    doc = {"generator": "tools/make_fixtures_kohya.py", "versions": versions(), "loras": lora_info, "bake": bake}
    path = os.path.join(OUT_DIR, "cases.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {rel(path)}: {len(bake)} bake cases")


if __name__ == "__main__":
    main()
