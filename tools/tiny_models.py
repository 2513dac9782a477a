"""Tiny, deterministic random-weight SD1.x / SD2.x / SDXL models for mood's test fixtures.

What it produces
    tests/fixtures/bases/sd1_base.safetensors       SD1.x single-file (LDM) checkpoint, F32
    tests/fixtures/bases/sd1_base_fp16.safetensors  the same, every float tensor cast to F16
    tests/fixtures/bases/sd2_base.safetensors       SD2.x single-file (LDM + OpenCLIP text encoder), F32
    tests/fixtures/bases/sdxl_base.safetensors      SDXL single-file (SGM, two text encoders), F32
    tests/fixtures/bases/READY                      marker written last

How to run (from the repository root)
    git clone SD_SCRIPTS_REPO /tmp/sd-scripts  # kohya-ss/sd-scripts, commit 48d368fa
    tools/.venv/bin/python tools/tiny_models.py --sd-scripts /tmp/sd-scripts

As a module (other fixture generators)
    import tiny_models as tm
    tm.set_sd_scripts("/tmp/sd-scripts")          # or env MOOD_SD_SCRIPTS
    m = tm.make_models("sd1")                      # {"unet": UNet2DConditionModel, "te1": CLIPTextModel, "te2": None}
    ... apply LyCORIS / PEFT / kohya to m["unet"], m["te1"] (, m["te2"]) and merge ...
    sd = tm.to_single_file("sd1", m["unet"], m["te1"])   # dict[str, Tensor] in the base file's key layout
    changed = tm.changed_tensors(sd, tm.base_state_dict("sd1"))

The models use the real diffusers / transformers classes with the real SD block structure
(module names identical to the full-size models) but a few channels only.  All parameters are
re-initialised from a generator seeded by crc32(family/component/parameter name), so the weights
do not depend on diffusers' init code or on construction order.

The single-file layout is produced by kohya sd-scripts' own converters
(library/model_util.py convert_unet_state_dict_to_sd, convert_text_encoder_state_dict_to_sd_v2;
library/sdxl_model_util.py convert_diffusers_unet_state_dict_to_sdxl,
convert_text_encoder_2_state_dict_to_sdxl).  kohya code is imported from --sd-scripts, never copied.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import math
import os
import sys
import types
import zlib
from types import SimpleNamespace

import torch

# transformers / diffusers must be imported (and decide that torchvision is absent) BEFORE the
# import stubs for kohya are installed, otherwise they think the stubbed torchvision exists.
import diffusers  # noqa: E402
import transformers  # noqa: E402
import transformers.utils.import_utils  # noqa: E402,F401
from diffusers import UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

SD_SCRIPTS_COMMIT = "48d368fa"
_SD_SCRIPTS = os.environ.get("MOOD_SD_SCRIPTS", "/tmp/sd-scripts")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASES_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "bases")
FAMILIES = ("sd1", "sd2", "sdxl")

# --------------------------------------------------------------------------------------------
# Configurations.  Real SD block structure, tiny widths.
# --------------------------------------------------------------------------------------------

# Text encoders: CLIP-L-like (SD1, SDXL te1) and OpenCLIP-like (SD2, SDXL te2, different width
# so that te1/te2 mix-ups are caught by shape checks).
# (Widths are kept this small because every fixture must fit a 2 MB budget.)
TE_CLIP = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
               num_attention_heads=2, max_position_embeddings=8, hidden_act="quick_gelu",
               bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=16)
TE_OPENCLIP = dict(vocab_size=32, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=3, max_position_embeddings=8, hidden_act="gelu",
                   bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=24)

UNET_SD1 = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(4, 4, 4, 4), layers_per_block=2, norm_num_groups=2,
    cross_attention_dim=TE_CLIP["hidden_size"], attention_head_dim=1,  # diffusers: = number of heads
    use_linear_projection=False,
)
UNET_SD2 = dict(UNET_SD1, cross_attention_dim=TE_OPENCLIP["hidden_size"], use_linear_projection=True)
SDXL_ADD_TIME_DIM = 4
UNET_SDXL = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(4, 4, 4), layers_per_block=2, transformer_layers_per_block=(1, 1, 2),
    norm_num_groups=2,
    cross_attention_dim=TE_CLIP["hidden_size"] + TE_OPENCLIP["hidden_size"],
    attention_head_dim=(1, 1, 1), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=SDXL_ADD_TIME_DIM,
    projection_class_embeddings_input_dim=TE_OPENCLIP["projection_dim"] + 6 * SDXL_ADD_TIME_DIM,
)
UNET_CONFIGS = {"sd1": UNET_SD1, "sd2": UNET_SD2, "sdxl": UNET_SDXL}

LOGIT_SCALE = math.log(1 / 0.07)


def set_sd_scripts(path: str) -> None:
    """Set the sd-scripts checkout used for kohya's converters (default: $MOOD_SD_SCRIPTS or /tmp/sd-scripts)."""
    global _SD_SCRIPTS, _KOHYA
    if _KOHYA is not None and os.path.abspath(path) != os.path.abspath(_SD_SCRIPTS):
        raise RuntimeError("kohya modules already imported from " + _SD_SCRIPTS)
    _SD_SCRIPTS = path


# --------------------------------------------------------------------------------------------
# Importing kohya sd-scripts without its heavy optional dependencies
# --------------------------------------------------------------------------------------------

# Modules kohya imports but never uses on the code paths we call (image I/O, pipelines).
_STUB_TOPLEVEL = {"torchvision", "cv2", "imagesize"}
_STUB_EXACT = {"library.lpw_stable_diffusion", "library.sdxl_lpw_stable_diffusion"}


class _Any:
    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return _Any()

    def __getattr__(self, name):
        return _Any()

    def __mro_entries__(self, bases):
        return (object,)


class _StubModule(types.ModuleType):
    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any()


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name in _STUB_EXACT or name.split(".")[0] in _STUB_TOPLEVEL:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


_KOHYA = None


def kohya(sd_scripts: str | None = None) -> SimpleNamespace:
    """Import kohya sd-scripts modules (model_util, sdxl_model_util, sdxl_original_unet, lora,
    merge_lora, sdxl_merge_lora, train_util) from the checkout.  Unused image/pipeline imports are stubbed."""
    global _KOHYA
    if sd_scripts is not None:
        set_sd_scripts(sd_scripts)
    if _KOHYA is not None:
        return _KOHYA
    root = os.path.abspath(_SD_SCRIPTS)
    if not os.path.isfile(os.path.join(root, "networks", "lora.py")):
        raise FileNotFoundError(f"kohya sd-scripts not found at {root} (use --sd-scripts)")
    for p in (os.path.join(root, "networks"), root):
        if p not in sys.path:
            sys.path.insert(0, p)
    finder = _StubFinder()
    sys.meta_path.insert(0, finder)
    try:
        import library.model_util as model_util
        import library.sdxl_model_util as sdxl_model_util
        import library.sdxl_original_unet as sdxl_original_unet
        import library.train_util as train_util
        import lora
        import merge_lora
        import sdxl_merge_lora
    finally:
        sys.meta_path.remove(finder)
        # drop the stubs so that later `import torchvision` etc. fail normally
        for name in list(sys.modules):
            if name in _STUB_EXACT or name.split(".")[0] in _STUB_TOPLEVEL:
                if isinstance(sys.modules[name], _StubModule):
                    del sys.modules[name]
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # kohya's setup_logging is chatty
    _KOHYA = SimpleNamespace(model_util=model_util, sdxl_model_util=sdxl_model_util,
                             sdxl_original_unet=sdxl_original_unet, train_util=train_util,
                             lora=lora, merge_lora=merge_lora, sdxl_merge_lora=sdxl_merge_lora, root=root)
    return _KOHYA


# --------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------

def _seed_for(tag: str) -> int:
    return zlib.crc32(tag.encode("utf-8"))


@torch.no_grad()
def reinit(module: torch.nn.Module, tag: str) -> torch.nn.Module:
    """Deterministically overwrite every parameter: seed = crc32(tag + '/' + name).
    weights (ndim>=2): 0.1*randn; norm weights: 1+0.1*randn; other 1-D (biases): 0.02*randn."""
    for name, p in module.named_parameters():
        g = torch.Generator().manual_seed(_seed_for(f"{tag}/{name}"))
        v = torch.randn(p.shape, generator=g, dtype=torch.float32)
        is_norm = p.ndim == 1 and name.endswith("weight") and any(
            s in name for s in ("norm", "layer_norm", "ln_"))
        if p.ndim >= 2:
            v = v * 0.1
        elif is_norm:
            v = 1.0 + 0.1 * v
        else:
            v = 0.02 * v
        p.copy_(v.to(p.dtype))
    return module


class CLIPTextModelV4Layout(torch.nn.Module):
    """transformers >= 5 dropped the `text_model` level inside CLIPTextModel (its modules are now
    `encoder.layers.N...`; checkpoints are renamed on load).  Real SD LoRAs and kohya's converters use
    the transformers 4.x tree `text_model.encoder.layers.N.self_attn.q_proj`, so the CLIP text
    encoder is wrapped to restore exactly that module/state-dict layout.  With transformers 4.x the
    wrapper is not needed (make_text_encoder then returns the plain CLIPTextModel)."""

    def __init__(self, inner):
        super().__init__()
        self.text_model = inner
        self.config = inner.config

    def forward(self, *args, **kwargs):
        return self.text_model(*args, **kwargs)


def _clip_text_model(cfg: CLIPTextConfig):
    te = CLIPTextModel(cfg)
    if any(n.startswith("text_model.") for n, _ in te.named_parameters()):
        return te  # transformers 4.x layout
    return CLIPTextModelV4Layout(te)


def _te_config(kind: str) -> CLIPTextConfig:
    cfg = TE_CLIP if kind == "clip" else TE_OPENCLIP
    return CLIPTextConfig(**cfg)


def make_unet(family: str) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(**UNET_CONFIGS[family])
    return reinit(unet.eval(), f"{family}/unet")


def make_text_encoder(family: str, index: int = 1):
    """index 1: SD1 CLIP (CLIPTextModel), SD2 OpenCLIP-as-CLIPTextModel, SDXL te1 (CLIPTextModel);
    index 2: SDXL te2 (CLIPTextModelWithProjection).
    Module names are always the transformers-4 ones (`text_model.encoder.layers.N...`), see
    CLIPTextModelV4Layout."""
    if family == "sd1" or (family == "sdxl" and index == 1):
        te = _clip_text_model(_te_config("clip"))
    elif family == "sd2":
        te = _clip_text_model(_te_config("openclip"))
    elif family == "sdxl" and index == 2:
        te = CLIPTextModelWithProjection(_te_config("openclip"))
    else:
        raise ValueError((family, index))
    return reinit(te.eval(), f"{family}/te{index}")


def make_models(family: str) -> dict:
    """Fresh deterministic diffusers/transformers modules: {"unet", "te1", "te2" (None unless sdxl)}.
    Identical weights to the stored bases/<family>_base.safetensors."""
    if family not in FAMILIES:
        raise ValueError(family)
    return {
        "unet": make_unet(family),
        "te1": make_text_encoder(family, 1),
        "te2": make_text_encoder(family, 2) if family == "sdxl" else None,
    }


@contextlib.contextmanager
def _patched(obj, **attrs):
    old = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


@contextlib.contextmanager
def _small_groupnorm():
    """kohya's SDXL blocks hard-code GroupNorm(32, C); allow C < 32 by using gcd(32, C) groups
    (number of groups is not stored in the state dict, only (C,) weight/bias)."""
    orig = torch.nn.GroupNorm.__init__

    def init(self, num_groups, num_channels, *a, **k):
        orig(self, math.gcd(num_groups, num_channels), num_channels, *a, **k)

    torch.nn.GroupNorm.__init__ = init
    try:
        yield
    finally:
        torch.nn.GroupNorm.__init__ = orig


def make_kohya_sdxl_unet(load_from: UNet2DConditionModel | dict | None = None):
    """kohya's own SDXL U-Net class (library/sdxl_original_unet.py SdxlUNet2DConditionModel, the
    LDM/SGM-named module tree kohya trains and merges SDXL LoRAs on), built with the tiny widths of
    UNET_SDXL by patching the module constants it reads.  If load_from is given (diffusers UNet or
    an SGM state dict without prefix) its weights are loaded with strict=True."""
    k = kohya()
    sou = k.sdxl_original_unet
    cfg = UNET_SDXL
    c0, c1, c2 = cfg["block_out_channels"]
    widths = {1: c0, 2: c1, 4: c2}

    class _Ch(int):  # kohya writes `k * self.model_channels` with k in {1, 2, 4}
        def __rmul__(self, m):
            return widths[m]

        __mul__ = __rmul__

    depth = {2: cfg["transformer_layers_per_block"][1], 10: cfg["transformer_layers_per_block"][2]}
    heads = {c1: cfg["attention_head_dim"][1], c2: cfg["attention_head_dim"][2]}
    orig_t2d = sou.Transformer2DModel

    def t2d(num_attention_heads, attention_head_dim, in_channels, num_transformer_layers,
            use_linear_projection, cross_attention_dim):
        h = heads[in_channels]
        return orig_t2d(num_attention_heads=h, attention_head_dim=in_channels // h, in_channels=in_channels,
                        cross_attention_dim=cfg["cross_attention_dim"], use_linear_projection=use_linear_projection,
                        num_transformer_layers=depth[num_transformer_layers])

    with _small_groupnorm(), _patched(sou, MODEL_CHANNELS=_Ch(c0), TIME_EMBED_DIM=4 * c0,
                                      ADM_IN_CHANNELS=cfg["projection_class_embeddings_input_dim"],
                                      CONTEXT_DIM=cfg["cross_attention_dim"], Transformer2DModel=t2d):
        unet = sou.SdxlUNet2DConditionModel()
    unet.model_channels = int(unet.model_channels)
    unet.eval()
    if load_from is not None:
        sd = load_from if isinstance(load_from, dict) else sgm_unet_state_dict(load_from)
        unet.load_state_dict(sd, strict=True)
    return unet


# --------------------------------------------------------------------------------------------
# Single-file layout
# --------------------------------------------------------------------------------------------

def sgm_unet_state_dict(unet) -> dict:
    """SDXL U-Net state dict in SGM naming (no 'model.diffusion_model.' prefix)."""
    if hasattr(unet, "input_blocks"):  # already kohya's SGM-named module
        return dict(unet.state_dict())
    return kohya().sdxl_model_util.convert_diffusers_unet_state_dict_to_sdxl(unet.state_dict())


def to_single_file(family: str, unet, te1, te2=None) -> dict:
    """Convert modules to the single-file checkpoint key layout of bases/<family>_base.safetensors,
    using kohya's converters.  unet: diffusers UNet2DConditionModel (for sdxl also kohya's
    SdxlUNet2DConditionModel).  Returns {key: contiguous detached tensor}; the pass-through extras
    of the base (see extra_tensors) are NOT included."""
    k = kohya()
    out = {}

    def put(prefix, sd):
        for name, t in sd.items():
            out[prefix + name] = t.detach().clone().contiguous()

    if family in ("sd1", "sd2"):
        v2 = family == "sd2"
        put("model.diffusion_model.", k.model_util.convert_unet_state_dict_to_sd(v2, unet.state_dict()))
        if v2:
            put("cond_stage_model.model.", k.model_util.convert_text_encoder_state_dict_to_sd_v2(te1.state_dict()))
        else:
            put("cond_stage_model.transformer.", te1.state_dict())
    elif family == "sdxl":
        if te2 is None:
            raise ValueError("sdxl needs te2")
        put("model.diffusion_model.", sgm_unet_state_dict(unet))
        put("conditioner.embedders.0.transformer.", te1.state_dict())
        put("conditioner.embedders.1.model.",
            k.sdxl_model_util.convert_text_encoder_2_state_dict_to_sdxl(te2.state_dict(), None))
    else:
        raise ValueError(family)
    return out


def extra_tensors(family: str) -> dict:
    """Tensors of the base checkpoint that are not produced by to_single_file (pass-through tests):
    a VAE decoder conv, OpenCLIP logit_scale (0-d) / text_projection, SD1 position_ids (I64)."""
    g = torch.Generator().manual_seed(_seed_for(f"{family}/extras"))
    ex = {"first_stage_model.decoder.conv_in.weight": 0.1 * torch.randn(4, 4, 3, 3, generator=g)}
    if family == "sd1":
        ex["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(
            TE_CLIP["max_position_embeddings"], dtype=torch.int64)[None]
    elif family == "sd2":
        d = TE_OPENCLIP["hidden_size"]
        ex["cond_stage_model.model.logit_scale"] = torch.tensor(LOGIT_SCALE, dtype=torch.float32)
        ex["cond_stage_model.model.text_projection"] = 0.1 * torch.randn(d, d, generator=g)
    elif family == "sdxl":
        ex["conditioner.embedders.1.model.logit_scale"] = torch.tensor(LOGIT_SCALE, dtype=torch.float32)
    return ex


def base_state_dict(family: str) -> dict:
    """Exactly the tensors stored in bases/<family>_base.safetensors (F32)."""
    m = make_models(family)
    sd = to_single_file(family, m["unet"], m["te1"], m["te2"])
    sd.update(extra_tensors(family))
    return sd


def to_dtype(sd: dict, dtype: torch.dtype) -> dict:
    """Cast floating tensors (integer tensors are kept)."""
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


def changed_tensors(new: dict, base: dict) -> dict:
    """Tensors of `new` that differ (bitwise, or in shape/dtype) from `base`; keys missing in base count too."""
    def raw(t):
        return t.detach().contiguous().reshape(-1).view(torch.uint8)

    out = {}
    for k, v in new.items():
        b = base.get(k)
        if b is None or b.shape != v.shape or b.dtype != v.dtype or not torch.equal(raw(b), raw(v)):
            out[k] = v
    return out


def base_path(family: str, fp16: bool = False) -> str:
    return os.path.join(BASES_DIR, f"{family}_base{'_fp16' if fp16 else ''}.safetensors")


def write_bases(out_dir: str = BASES_DIR) -> list:
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    ready = os.path.join(out_dir, "READY")
    if os.path.exists(ready):
        os.remove(ready)
    written = []
    for family in FAMILIES:
        sd = base_state_dict(family)
        # sanity: the SDXL SGM dict must load strictly into kohya's own SDXL U-Net class
        if family == "sdxl":
            pre = "model.diffusion_model."
            make_kohya_sdxl_unet({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)})
        variants = [(False, sd)]
        if family == "sd1":
            variants.append((True, to_dtype(sd, torch.float16)))
        for fp16, tensors in variants:
            name = os.path.basename(base_path(family, fp16))
            path = os.path.join(out_dir, name)
            desc = (f"{name}: tiny random {family} single-file checkpoint ({'F16' if fp16 else 'F32'}), "
                    f"tools/tiny_models.py, kohya sd-scripts {SD_SCRIPTS_COMMIT} converters")
            save_file(tensors, path, metadata={"mood_fixture": desc})
            os.chmod(path, 0o644)  # the safetensors writer creates 0600 files
            n = sum(t.numel() for t in tensors.values())
            print(f"wrote {os.path.relpath(path, REPO_ROOT)}: {len(tensors)} tensors, {n} elements, "
                  f"{os.path.getsize(path)} bytes")
            written.append(path)
    with open(ready, "w") as f:
        f.write("bases written by tools/tiny_models.py\n")
    print(f"wrote {os.path.relpath(ready, REPO_ROOT)}")
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd-scripts", default=_SD_SCRIPTS, help="kohya sd-scripts checkout (commit 48d368fa)")
    ap.add_argument("--out", default=BASES_DIR)
    a = ap.parse_args(argv)
    set_sd_scripts(a.sd_scripts)
    kohya()
    write_bases(a.out)


if __name__ == "__main__":
    main()
