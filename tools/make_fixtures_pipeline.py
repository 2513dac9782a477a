"""Reference fixtures for mood's txt2img pipeline (tests/fixtures/pipeline/), computed by
diffusers' own StableDiffusionPipeline.

The model: a tiny but complete random-weight SD1.x pipeline with the real architecture in
miniature and the real tokenizer vocabulary, so real prompts tokenize:
  * text encoder: transformers CLIPTextModel, vocab 49408 (bos 49406, eos = pad 49407), 77
    positions, hidden 8, 2 heads, 2 layers, MLP 32, quick_gelu (SD1's ViT-L activation). The
    token embedding is most of the fixture's size, so the width is kept this small;
  * tokenizer: CLIPTokenizer built offline from data/clip/bpe_simple_vocab_16e6.txt.gz by
    make_fixtures_tokenizer.make_tokenizer (model_max_length 77, pad "<|endoftext|>");
  * UNet2DConditionModel: block_out_channels (16, 32), CrossAttnDownBlock2D + DownBlock2D /
    UpBlock2D + CrossAttnUpBlock2D, layers_per_block 2 (SD1's, which the LDM layout's block
    numbering assumes), 2 attention heads, norm_num_groups 8, cross_attention_dim 8, 1x1 conv
    proj_in/proj_out (SD1);
  * AutoencoderKL: 4 levels (8, 16, 16, 16) so latents are 1/8 of the image, layers_per_block
    2, norm_num_groups 4, 4 latent channels, scaling_factor 0.18215;
  * scheduler: SD1.5's PNDMScheduler config (scaled_linear 0.00085..0.012, 1000 steps,
    steps_offset 1, "leading" spacing, epsilon, set_alpha_to_one false, skip_prk_steps).
Every parameter is re-randomised with a generator seeded by crc32("<part>/<param name>"):
weights randn / sqrt(fan_in), biases 0.05 randn, norm weights 1 + 0.1 randn, norm biases
0.05 randn, embeddings 0.5 randn; the VAE decoder's conv_out is scaled so that images mostly
stay inside [-1, 1]. Parameters are rounded to float16 (the stored dtype) first, so the float32
reference sees exactly what mood reads.

Files (all under tests/fixtures/pipeline/):
  tiny-sd/        save_pretrained of the pipeline in float16 (model_index.json, scheduler/,
                  text_encoder/, unet/, vae/). tokenizer/ is NOT stored (its vocab.json and
                  merges.txt are 2 MB and mood uses its own copy of the same vocabulary):
                  `--with-tokenizer` writes it, after which diffusers loads the folder as is.
  tiny-sd.safetensors
                  the same weights as one A1111-layout checkpoint (F16), written by kohya
                  sd-scripts' own library/model_util.save_stable_diffusion_checkpoint
                  (convert_unet_state_dict_to_sd, the transformers-4 text-encoder names under
                  cond_stage_model.transformer., convert_vae_state_dict under
                  first_stage_model.). Checked by loading it back with diffusers'
                  StableDiffusionPipeline.from_single_file(config=tiny-sd/): every weight equal.
  lora.safetensors
                  a kohya-format LoRA (F16 factors, F16 alpha), rank 4, alpha 2: every UNet
                  attention to_q/to_k/to_v/to_out.0, the 3x3 conv down_blocks.0.resnets.0.conv1,
                  the 1x1 conv down_blocks.0.attentions.0.proj_in, and the text encoder's
                  self_attn.q_proj, self_attn.out_proj and mlp.fc1 of both layers (out_proj:
                  without a to_out_lora key diffusers 0.42 misreads the converted kohya
                  text-encoder keys and drops q_proj without a word); kohya names
                  (lora_unet_..., lora_te_...) and kohya's metadata (ss_base_model_version
                  sd_v1), metadata keys sorted. up and down are 0.2 randn, F16.
  No SDXL LoRA is stored here: the test uses ../kohya/sdxl_lora.safetensors.
  ref.safetensors float32 references (below); manifest.json: every input and every tensor name.

References (float32, CPU, diffusers 0.42 StableDiffusionPipeline loaded from tiny-sd/ with
torch_dtype float32; generator = torch.Generator("cpu").manual_seed(seed) passed to the
pipeline, which draws the initial latents and every ancestral step's noise from it):
  * embeds.<i>: pipe.encode_prompt(prompt_i) for three prompts (77 x 8);
  * <run>.latents: the final latents (output_type="latent") of each run in manifest "runs"
    (B x 4 x 8 x 8); <run>.image for runs with "image": output_type="np" before the uint8
    conversion (B x 64 x 64 x 3, NHWC, in [0, 1] after diffusers' clamp);
  * lora runs: pipe.load_lora_weights(lora.safetensors) then the run with
    cross_attention_kwargs={"scale": m}. In diffusers 0.42 that scale multiplies BOTH the UNet's
    LoRA layers (UNet2DConditionModel.forward's apply_lora_scale) and the text encoder's
    (encode_prompt's scale_lora_layers), i.e. mood's {unet = m, te = m}; pipe.set_adapters(
    ["style"], adapter_weights=[m]) gives the same (and {"unet": a, "text_encoder": b} splits it);
  * lora.embeds: encode_prompt with the LoRA at scale m (the text encoder part alone);
  * unet.x, unet.t, unet.ctx -> unet.out (plain model) and unet.out_lora (LoRA fused with
    pipe.fuse_lora(lora_scale=m)): the UNet alone on a fixed input.
The LoRA references are checked against a model merged by hand (W + m * alpha/rank * up @ down,
3x3 convs as up @ down.flatten(1)): if diffusers dropped or rescaled a module the script stops.

Run from the repository root:
  git clone SD_SCRIPTS_REPO /tmp/sd-scripts   # kohya-ss/sd-scripts, commit 48d368fa
  tools/.venv/bin/python tools/make_fixtures_pipeline.py --sd-scripts /tmp/sd-scripts
Made with torch 2.15.0, diffusers 0.42.1, transformers 5.24.0, safetensors 0.8.0 (recorded in
manifest.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zlib

import torch

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)

import tiny_models as tm  # noqa: E402  (imports diffusers/transformers before kohya's stubs)
from make_fixtures_tokenizer import make_tokenizer  # noqa: E402

import diffusers  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "pipeline")

TE = dict(vocab_size=49408, hidden_size=8, intermediate_size=32, num_hidden_layers=2,
          num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
          layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
          projection_dim=8)
UNET = dict(sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32), layers_per_block=2, attention_head_dim=2,
            norm_num_groups=8, cross_attention_dim=TE["hidden_size"], use_linear_projection=False)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           block_out_channels=(8, 16, 16, 16), layers_per_block=2, norm_num_groups=4,
           sample_size=64, scaling_factor=0.18215)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                 steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
# Not a PNDMScheduler argument, but in SD1.5's scheduler_config.json; DDIMScheduler.from_config
# reads it (its default, True, would clip x0 to [-1, 1]).
SCHEDULER_EXTRA = {"clip_sample": False}

PROMPTS = [
    "a lighthouse at dusk, oil painting",
    "",
    "Café «naïve» über-cool! 日本の夏 :) #42 — isn't it?",
]
NEGATIVE = "blurry, low quality, watermark"
LORA_SCALE = 0.7
LORA_RANK, LORA_ALPHA = 4, 2.0

# name, scheduler class, its extra config, mood's sampler and schedule names, and the run
SCHEDULERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "ddim": (DDIMScheduler, {}),
}
MOOD_SAMPLER = {"euler": ("euler", "default"), "euler_a": ("euler_a", "default"),
                "dpmpp_2m_karras": ("dpmpp_2m", "karras"), "ddim": ("ddim", "default")}
RUNS = [
    dict(name="euler", scheduler="euler", prompt=PROMPTS[0], seed=42, image=True),
    dict(name="euler_a", scheduler="euler_a", prompt=PROMPTS[0], seed=43),
    dict(name="dpmpp_2m_karras", scheduler="dpmpp_2m_karras", prompt=PROMPTS[0], seed=44),
    dict(name="ddim", scheduler="ddim", prompt=PROMPTS[0], seed=45),
    dict(name="euler_a_batch2", scheduler="euler_a", prompt=PROMPTS[0], seed=46, batch=2),
    dict(name="euler_negative", scheduler="euler", prompt=PROMPTS[2], negative=NEGATIVE, seed=47),
    dict(name="euler_cfg1", scheduler="euler", prompt=PROMPTS[0], seed=48, cfg=1.0),
    dict(name="lora_euler", scheduler="euler", prompt=PROMPTS[0], seed=42, lora=LORA_SCALE),
    dict(name="lora_euler_a_batch2", scheduler="euler_a", prompt=PROMPTS[2], seed=49, batch=2,
         negative=NEGATIVE, lora=LORA_SCALE),
]
STEPS, CFG, SIZE = 8, 7.5, 64


# ----- the model ---------------------------------------------------------------------------

def seeded(tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(tag.encode("utf-8")))


@torch.no_grad()
def randomise(module: torch.nn.Module, part: str, out_scale: dict | None = None) -> None:
    """Every parameter from its own seeded generator, rounded to float16."""
    for name, p in module.named_parameters():
        g = seeded(f"{part}/{name}")
        v = torch.randn(p.shape, generator=g, dtype=torch.float32)
        is_norm = any(s in name for s in ("norm", "layer_norm"))
        if "embedding" in name:
            v = 0.5 * v
        elif p.ndim >= 2:
            v = v / p[0].numel() ** 0.5
        elif is_norm and name.endswith("weight"):
            v = 1 + 0.1 * v
        else:
            v = 0.05 * v
        if out_scale and name in out_scale:
            v = v * out_scale[name]
        p.copy_(v.half().float())


def make_pipeline(tokenizer) -> StableDiffusionPipeline:
    torch.manual_seed(0)  # construction inits are overwritten anyway
    te = CLIPTextModel(CLIPTextConfig(**TE)).eval()
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    randomise(te, "text_encoder")
    randomise(unet, "unet")
    randomise(vae, "vae", {"decoder.conv_out.weight": 0.5, "decoder.conv_out.bias": 0.0})
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def save_folder(pipe: StableDiffusionPipeline, path: str, with_tokenizer: bool) -> None:
    if os.path.exists(path):
        shutil.rmtree(path)
    pipe.to(torch.float16).save_pretrained(path, safe_serialization=True)
    pipe.to(torch.float32)
    if not with_tokenizer:
        shutil.rmtree(os.path.join(path, "tokenizer"))
    cfg_path = os.path.join(path, "scheduler", "scheduler_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update(SCHEDULER_EXTRA)
    with open(cfg_path, "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2)
        f.write("\n")


def save_single_file(pipe: StableDiffusionPipeline, path: str) -> None:
    """kohya's own checkpoint writer; the text encoder is wrapped to restore the transformers-4
    module tree (text_model.*) that SD1 checkpoints and kohya use."""
    k = tm.kohya()
    te = tm.CLIPTextModelV4Layout(pipe.text_encoder)
    meta = {"mood_fixture": "tiny SD1 pipeline, tools/make_fixtures_pipeline.py, kohya sd-scripts "
                            f"{tm.SD_SCRIPTS_COMMIT} save_stable_diffusion_checkpoint"}
    k.model_util.save_stable_diffusion_checkpoint(False, path, te, pipe.unet, None, 0, 0, meta,
                                                   save_dtype=torch.float16, vae=pipe.vae)


def check_single_file(path: str, folder: str, pipe: StableDiffusionPipeline) -> None:
    """diffusers reads the single file back to exactly the folder's weights."""
    sf = StableDiffusionPipeline.from_single_file(path, config=folder, torch_dtype=torch.float32,
                                                  safety_checker=None, tokenizer=pipe.tokenizer,
                                                  scheduler=pipe.scheduler)
    for part in ("unet", "vae", "text_encoder"):
        a = getattr(pipe, part).state_dict()
        b = getattr(sf, part).state_dict()
        keys = [k for k in a if "position_ids" not in k]
        assert set(keys) <= set(b), (part, sorted(set(keys) - set(b))[:5])
        for key in keys:
            assert torch.equal(a[key], b[key].to(a[key].dtype)), (part, key)


# ----- the LoRA ----------------------------------------------------------------------------

def lora_targets(pipe: StableDiffusionPipeline) -> list:
    """(kohya module name, the torch module) of every module the LoRA patches."""
    out = []
    for name, mod in pipe.unet.named_modules():
        if (name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")) or
                name in ("down_blocks.0.resnets.0.conv1", "down_blocks.0.attentions.0.proj_in")):
            out.append(("lora_unet_" + name.replace(".", "_"), mod))
    for name, mod in pipe.text_encoder.named_modules():
        # out_proj too: diffusers 0.42 recognises converted kohya text-encoder keys as its old
        # format only when a "to_out_lora" key is present, and otherwise drops q_proj silently
        if name.endswith((".self_attn.q_proj", ".self_attn.out_proj", ".mlp.fc1")):
            out.append(("lora_te_text_model_" + name.replace(".", "_"), mod))
    return out


def make_lora(pipe: StableDiffusionPipeline) -> dict:
    sd = {}
    for kname, mod in lora_targets(pipe):
        g = seeded(f"lora/{kname}")
        w = mod.weight
        if w.ndim == 4:
            down = 0.2 * torch.randn(LORA_RANK, w.shape[1], w.shape[2], w.shape[3], generator=g)
            up = 0.2 * torch.randn(w.shape[0], LORA_RANK, 1, 1, generator=g)
        else:
            down = 0.2 * torch.randn(LORA_RANK, w.shape[1], generator=g)
            up = 0.2 * torch.randn(w.shape[0], LORA_RANK, generator=g)
        sd[f"{kname}.lora_down.weight"] = down.half()
        sd[f"{kname}.lora_up.weight"] = up.half()
        sd[f"{kname}.alpha"] = torch.tensor(LORA_ALPHA, dtype=torch.float16)
    return sd


LORA_META = {"ss_network_module": "networks.lora", "ss_network_dim": str(LORA_RANK),
             "ss_network_alpha": str(LORA_ALPHA), "ss_base_model_version": "sd_v1",
             "ss_v2": "False", "ss_output_name": "tiny_style",
             "modelspec.architecture": "stable-diffusion-v1/lora",
             "modelspec.sai_model_spec": "1.0.0", "modelspec.title": "tiny_style"}


@torch.no_grad()
def merge_by_hand(pipe: StableDiffusionPipeline, lora: dict, m: float) -> dict:
    """{module: merged weight} = W + m * alpha/rank * up @ down, for the reference check."""
    out = {}
    for kname, mod in lora_targets(pipe):
        down = lora[f"{kname}.lora_down.weight"].float()
        up = lora[f"{kname}.lora_up.weight"].float()
        scale = float(lora[f"{kname}.alpha"]) / down.shape[0]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(mod.weight.shape)
        out[kname] = mod.weight + m * scale * delta
    return out


def sort_metadata(path: str) -> None:
    """safetensors writes __metadata__ in hash-map order, which changes from run to run: rewrite
    the header with the keys sorted (same length, so the data offsets stay)."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":")).encode("utf-8")
        new += b" " * (n - len(new))
        assert len(new) == n and json.loads(new) == json.loads(raw)
        f.seek(8)
        f.write(new)


# ----- references --------------------------------------------------------------------------

def run_pipeline(pipe, run: dict, output_type: str):
    cls, extra = SCHEDULERS[run["scheduler"]]
    pipe.scheduler = cls.from_config(pipe.scheduler_base.config, **extra)
    kwargs = {}
    if run.get("lora"):
        kwargs["cross_attention_kwargs"] = {"scale": run["lora"]}
    return pipe(run["prompt"], negative_prompt=run.get("negative"), height=SIZE, width=SIZE,
                num_inference_steps=STEPS, guidance_scale=run.get("cfg", CFG),
                num_images_per_prompt=run.get("batch", 1),
                generator=torch.Generator("cpu").manual_seed(run["seed"]),
                output_type=output_type, **kwargs).images


def unet_input() -> tuple:
    g = seeded("unet_input")
    x = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([537.0])
    ctx = torch.randn(1, 77, TE["hidden_size"], generator=g)
    return x, t, ctx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd-scripts", default=os.environ.get("MOOD_SD_SCRIPTS", "/tmp/sd-scripts"))
    ap.add_argument("--with-tokenizer", action="store_true",
                    help="also store tiny-sd/tokenizer/ (2 MB) so diffusers loads the folder as is")
    a = ap.parse_args()
    tm.set_sd_scripts(a.sd_scripts)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    folder = os.path.join(OUT, "tiny-sd")
    single = os.path.join(OUT, "tiny-sd.safetensors")
    lora_path = os.path.join(OUT, "lora.safetensors")

    tmp = tempfile.mkdtemp()
    tok = make_tokenizer(tmp)
    tok.model_max_length = 77
    pipe = make_pipeline(tok)
    save_folder(pipe, folder, a.with_tokenizer)
    save_single_file(pipe, single)
    # the reference runs on what was stored, read back in float32
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32,
                                                   tokenizer=tok, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler_base = pipe.scheduler
    assert pipe.scheduler.config["clip_sample"] is False
    check_single_file(single, folder, pipe)

    ref = {}
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            ref[f"embeds.{i}"] = pipe.encode_prompt(p, "cpu", 1, False)[0][0].contiguous()
        x, t, ctx = unet_input()
        ref["unet.x"], ref["unet.t"], ref["unet.ctx"] = x, t, ctx
        ref["unet.out"] = pipe.unet(x, t, ctx).sample

    runs = [r for r in RUNS if not r.get("lora")]
    for r in runs:
        ref[f"{r['name']}.latents"] = run_pipeline(pipe, r, "latent")
        if r.get("image"):
            ref[f"{r['name']}.image"] = torch.from_numpy(run_pipeline(pipe, r, "np"))

    lora = make_lora(pipe)
    save_file(lora, lora_path, metadata=LORA_META)
    sort_metadata(lora_path)
    pipe.load_lora_weights(lora_path, adapter_name="style")
    n_lora = sum(1 for n, _ in pipe.unet.named_modules() if n.endswith("lora_A")) + sum(
        1 for n, _ in pipe.text_encoder.named_modules() if n.endswith("lora_A"))
    assert n_lora == len(lora_targets(pipe)), (n_lora, len(lora_targets(pipe)))
    for r in RUNS:
        if r.get("lora"):
            ref[f"{r['name']}.latents"] = run_pipeline(pipe, r, "latent")
    with torch.no_grad():
        pipe._lora_scale = None
        ref["lora.embeds"] = pipe.encode_prompt(PROMPTS[0], "cpu", 1, False,
                                                lora_scale=LORA_SCALE)[0][0].contiguous()
        unfused = pipe.unet(x, t, ctx, cross_attention_kwargs={"scale": LORA_SCALE}).sample
        pipe.fuse_lora(lora_scale=LORA_SCALE)
        ref["unet.out_lora"] = pipe.unet(x, t, ctx).sample
        assert torch.allclose(unfused, ref["unet.out_lora"], rtol=1e-4, atol=1e-5)
    verify_lora(folder, tok, lora, ref, x, t, ctx)

    for k in ref:
        ref[k] = ref[k].float().contiguous()
    save_file(ref, os.path.join(OUT, "ref.safetensors"))
    write_manifest(ref)
    for dirpath, _, files in os.walk(OUT):  # the safetensors writer creates 0600 files
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    shutil.rmtree(tmp)
    report(ref)


@torch.no_grad()
def verify_lora(folder, tok, lora, ref, x, t, ctx) -> None:
    """Independent check of diffusers' LoRA references: a fresh pipeline with the weights merged
    by hand gives the same UNet output, text embeddings and LoRA run."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32,
                                                   tokenizer=tok, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler_base = pipe.scheduler
    merged = merge_by_hand(pipe, lora, LORA_SCALE)
    for kname, mod in lora_targets(pipe):
        mod.weight.copy_(merged[kname])
    out = pipe.unet(x, t, ctx).sample
    err = (out - ref["unet.out_lora"]).abs().max() / ref["unet.out_lora"].abs().max()
    assert err < 1e-5, f"diffusers' LoRA UNet differs from the hand merge: {err}"
    emb = pipe.encode_prompt(PROMPTS[0], "cpu", 1, False)[0][0]
    err = (emb - ref["lora.embeds"]).abs().max() / ref["lora.embeds"].abs().max()
    assert err < 1e-5, f"diffusers' LoRA text encoder differs from the hand merge: {err}"
    assert (emb - ref["embeds.0"]).abs().max() > 1e-2, "the LoRA does not change the embeddings"
    run = next(r for r in RUNS if r.get("lora"))
    lat = run_pipeline(pipe, dict(run, lora=None), "latent")
    err = (lat - ref[f"{run['name']}.latents"]).abs().max() / lat.abs().max()
    assert err < 1e-4, f"diffusers' LoRA run differs from the hand merge: {err}"
    print(f"hand-merged LoRA agrees with diffusers (run {run['name']}: {err:.2e})")


def write_manifest(ref: dict) -> None:
    runs = []
    for r in RUNS:
        sampler, schedule = MOOD_SAMPLER[r["scheduler"]]
        cls, extra = SCHEDULERS[r["scheduler"]]
        e = {"name": r["name"], "prompt": r["prompt"], "negative": r.get("negative"),
             "seed": r["seed"], "steps": STEPS, "cfg": r.get("cfg", CFG), "width": SIZE,
             "height": SIZE, "batch": r.get("batch", 1), "sampler": sampler,
             "schedule": schedule, "diffusers_scheduler": cls.__name__,
             "scheduler_options": extra, "latents": f"{r['name']}.latents"}
        if r.get("image"):
            e["image"] = f"{r['name']}.image"
        if r.get("lora"):
            e["lora"] = {"file": "lora.safetensors", "unet": r["lora"], "te": r["lora"]}
        runs.append(e)
    man = {
        "generator": "tools/make_fixtures_pipeline.py",
        "versions": {"torch": torch.__version__.split("+")[0], "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__,
                     "safetensors": safetensors.__version__,
                     "sd-scripts": tm.SD_SCRIPTS_COMMIT},
        "model": {"folder": "tiny-sd", "single_file": "tiny-sd.safetensors", "family": "sd1",
                  # what a single file cannot say (diffusers' config.json does)
                  "text_encoder": {"hidden": TE["hidden_size"], "heads": TE["num_attention_heads"],
                                   "act": TE["hidden_act"], "layer_norm_eps": TE["layer_norm_eps"]},
                  "unet": {"heads": UNET["attention_head_dim"],
                           "norm_num_groups": UNET["norm_num_groups"]},
                  "vae": {"norm_num_groups": VAE["norm_num_groups"],
                          "scaling_factor": VAE["scaling_factor"]}},
        "references": "ref.safetensors",
        "embeds": [{"prompt": p, "ref": f"embeds.{i}"} for i, p in enumerate(PROMPTS)],
        "runs": runs,
        "lora": {"file": "lora.safetensors", "rank": LORA_RANK, "alpha": LORA_ALPHA,
                 "scale": LORA_SCALE, "embeds": {"prompt": PROMPTS[0], "ref": "lora.embeds"},
                 "other_family": "../kohya/sdxl_lora.safetensors"},
        "unet": {"x": "unet.x", "t": "unet.t", "ctx": "unet.ctx", "out": "unet.out",
                 "out_lora": "unet.out_lora"},
    }
    with open(os.path.join(OUT, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(man, f, indent=1, ensure_ascii=False)
        f.write("\n")


def report(ref: dict) -> None:
    for k, v in ref.items():
        extra = ""
        if k.endswith(".image"):
            extra = f" clamped {float(((v <= 0) | (v >= 1)).float().mean()):.3f}"
        print(f"{k:28s} {tuple(v.shape)!s:18s} max|x| {float(v.abs().max()):9.4f} "
              f"std {float(v.std()):8.4f}{extra}")
    total = 0
    for dirpath, _, files in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"{OUT}: {total} bytes")


if __name__ == "__main__":
    main()
