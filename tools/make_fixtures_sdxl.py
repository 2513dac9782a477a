"""Reference fixtures for mood's SDXL and Playground v2.5 generation (tests/fixtures/sdxl/),
computed by diffusers' own StableDiffusionXLPipeline.

The model: a tiny random-weight SDXL pipeline with the real architecture in miniature and the
real tokenizer vocabulary, so real prompts tokenize:
  * text_encoder: transformers CLIPTextModel (SDXL's CLIP ViT-L), vocab 49408, 77 positions,
    hidden 4, 2 heads, 3 layers, MLP 16, quick_gelu;
  * text_encoder_2: CLIPTextModelWithProjection (SDXL's OpenCLIP bigG), hidden 6, 2 heads, 3
    layers, MLP 24, gelu, a text projection 6 -> 8 (not square, so a transposed projection
    shows). The widths differ because diffusers' from_single_file tells the two encoders apart
    by their position embedding width (equal widths load CLIP-L's weights into both);
    both configs carry the real SDXL ids (bos 0, eos 2, pad 1: transformers then pools at the
    argmax of the ids, the end token);
  * tokenizer / tokenizer_2: CLIPTokenizer built offline from data/clip/bpe_simple_vocab_16e6.txt.gz
    (make_fixtures_tokenizer.make_tokenizer); tokenizer_2 pads with "!" (id 0) as SDXL's does;
  * UNet2DConditionModel: SDXL's block layout (DownBlock2D + 2 x CrossAttnDownBlock2D, mirrored
    up blocks), block_out_channels (4, 8, 8), layers_per_block 2, transformer_layers_per_block
    (1, 1, 2) (mid block 2), heads (1, 1, 2), norm_num_groups 2, cross_attention_dim 10 (4 + 6),
    Linear proj_in/out, addition_embed_type "text_time", addition_time_embed_dim 4,
    projection_class_embeddings_input_dim 8 + 6 * 4 = 32;
  * AutoencoderKL: 4 levels (4, 8, 8, 8), latents 1/8 of the image, groups 2,
    scaling_factor 0.13025 (SDXL's), sample_size 64, force_upcast;
  * scheduler: SDXL base's EulerDiscreteScheduler config (scaled_linear 0.00085..0.012, leading
    spacing, steps_offset 1, epsilon).
Every parameter is re-randomised with a generator seeded by crc32("<part>/<param name>")
(weights randn / sqrt(fan_in), biases 0.05 randn, norm weights 1 + 0.1 randn, norm biases
0.05 randn, embeddings 0.5 randn; the VAE decoder's conv_out halved) and rounded to float16. The
two token embeddings (49408 x 4 and 49408 x 6, most of the fixture) are rounded further to
float8 e4m3 and stored as F8_E4M3 in every file (as fp8 checkpoints store weights), which
halves the fixture; all other tensors are F16. The float32 references see exactly the stored values.

Files (tests/fixtures/sdxl/):
  tiny-sdxl/      save_pretrained of the pipeline (model_index.json, scheduler/, text_encoder/,
                  text_encoder_2/, unet/, vae/); the tokenizers are NOT stored (mood has its own
                  copy of the vocabulary; `--with-tokenizer` writes them).
  tiny-sdxl.safetensors
                  the same weights as one SGM-layout checkpoint, keys as kohya sd-scripts'
                  sdxl_model_util.save_stable_diffusion_checkpoint writes them
                  (convert_diffusers_unet_state_dict_to_sdxl under model.diffusion_model.,
                  the transformers-4 CLIP-L names under conditioner.embedders.0.transformer.,
                  convert_text_encoder_2_state_dict_to_sdxl under conditioner.embedders.1.model.,
                  model_util.convert_vae_state_dict under first_stage_model.), except that
                  text_projection is stored transposed (x @ P) as real SGM files store it (kohya
                  writes the Linear weight). Checked by loading it back with diffusers'
                  StableDiffusionXLPipeline.from_single_file(config=tiny-sdxl/): every weight equal.
  pg25/           Playground v2.5 made from the same model: its own model_index.json, scheduler/
                  (EDMDPMSolverMultistepScheduler: sigma_min 0.002, sigma_max 80, sigma_data 0.5,
                  rho 7, karras, epsilon, final_sigmas_type zero) and vae/config.json
                  (scaling_factor 0.5, Playground's latents_mean / latents_std); text_encoder,
                  text_encoder_2, unet and the VAE weights are relative symbolic links into
                  tiny-sdxl/ (diffusers follows them).
  lora_sgm.safetensors
                  a kohya SDXL LoRA (F16 factors and alphas), rank 4, alpha 2: UNet attention
                  to_q/to_k/to_v/to_out.0, proj_in, ff.net.0.proj, a 3x3 conv (LoCon) and a
                  time_emb_proj under kohya's SGM names (lora_unet_input_blocks_4_1_...), and both
                  text encoders' self_attn q/v/out_proj and mlp.fc1 (lora_te1_..., lora_te2_...);
                  kohya metadata (ss_base_model_version sdxl_base_v1-0).
  lora_diffusers_names.safetensors
                  a second kohya-format LoRA, rank 2, alpha 1, with diffusers-style UNet names
                  (lora_unet_down_blocks_1_attentions_0_...) on other modules, and text encoder 2
                  mlp.fc2: the spelling other SDXL trainers write.
  ref.safetensors float32 references; manifest.json: every input and every tensor name.

References (float32, CPU, diffusers 0.42 StableDiffusionXLPipeline from tiny-sdxl/ or pg25/,
add_watermarker=False, generator = torch.Generator("cpu").manual_seed(seed)):
  * te1.<i>, te2.<i>: hidden_states[-2] of each text encoder for prompt i (77 x 4, 77 x 6),
    pooled.<i>: text_encoder_2's text_embeds (8), embeds.<i>: encode_prompt's prompt_embeds
    (77 x 10);
    embeds_skip1.0 / pooled_skip1.0: encode_prompt(clip_skip=1) (hidden_states[-3] of both);
  * te2_bang: text encoder 2's hidden_states[-2] for BANG ("!" in the text) tokenized as
    open_clip / A1111 / ComfyUI do (CLIP-L's ids, 0 after the end token), not as diffusers'
    tokenizer_2, which turns "!" into its pad token (see BANG);
  * time_ids: _get_add_time_ids((48, 64), (0, 0), (48, 64)) (height 48, width 64);
  * unet.x, .t, .ctx, .text_embeds, .time_ids -> unet.out (plain), unet.out_lora (lora_sgm fused
    at LORA_SCALE);
  * <run>.latents (output_type="latent") and <run>.image (output_type="np" before the uint8
    conversion, B x 64 x 64 x 3) of each run in manifest "runs"; negative None means diffusers'
    force_zeros_for_empty_prompt (zero negative conditioning and pooled embedding);
  * pg25_euler_a: Euler a on EDM sigmas, which diffusers has no scheduler for: the pipeline with
    EDMEulerAncestralScheduler below (EDMEulerScheduler + EulerAncestralDiscreteScheduler.step);
  * LoRA runs: load_lora_weights then cross_attention_kwargs={"scale": m} (UNet and both text
    encoders at m); the stacked run sets both LoRAs with set_adapters(weights);
  * lora.embeds / lora.pooled: encode_prompt with lora_sgm at LORA_SCALE.
The LoRA references are checked against a model merged by hand (W + m * alpha/rank * up @ down):
if diffusers dropped or rescaled a module the script stops.

Run from the repository root:
  git clone SD_SCRIPTS_REPO /tmp/sd-scripts   # kohya-ss/sd-scripts, commit 48d368fa
  tools/.venv/bin/python tools/make_fixtures_sdxl.py --sd-scripts /tmp/sd-scripts
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
from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler,  # noqa: E402
                       EDMDPMSolverMultistepScheduler, EDMEulerScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (CLIPTextConfig, CLIPTextModel,  # noqa: E402
                          CLIPTextModelWithProjection)

OUT = os.path.join(ROOT, "tests", "fixtures", "sdxl")
FOLDER = "tiny-sdxl"
PG25 = "pg25"
SINGLE = "tiny-sdxl.safetensors"

TE1 = dict(vocab_size=49408, hidden_size=4, intermediate_size=16, num_hidden_layers=3,
           num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
           layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=4)
TE2 = dict(TE1, hidden_size=6, intermediate_size=24, hidden_act="gelu", projection_dim=8)
ADD_TIME = 4
UNET = dict(sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(4, 8, 8), layers_per_block=2,
            transformer_layers_per_block=(1, 1, 2), attention_head_dim=(1, 1, 2),
            norm_num_groups=2, cross_attention_dim=TE1["hidden_size"] + TE2["hidden_size"],
            use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=ADD_TIME,
            projection_class_embeddings_input_dim=TE2["projection_dim"] + 6 * ADD_TIME)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           block_out_channels=(4, 8, 8, 8), layers_per_block=2, norm_num_groups=2,
           sample_size=64, scaling_factor=0.13025, force_upcast=True)
# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                 prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False)
# playgroundai/playground-v2.5-1024px-aesthetic scheduler/scheduler_config.json and the VAE's
PG25_SCHEDULER = dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0,
                      sigma_schedule="karras", num_train_timesteps=1000,
                      prediction_type="epsilon", solver_order=2, algorithm_type="dpmsolver++",
                      solver_type="midpoint", lower_order_final=True, euler_at_final=False,
                      final_sigmas_type="zero")
PG25_VAE = dict(scaling_factor=0.5, latents_mean=[-1.6574, 1.886, -1.383, 2.5155],
                latents_std=[8.4927, 5.9022, 6.5498, 5.2299])

PROMPTS = [
    "a lighthouse at dusk, oil painting",
    "",
    "Café «naïve» über-cool? 日本の夏 :) #42 — isn't it?",
]
# "!" is tokenizer_2's pad token, and transformers matches special tokens in the text first: its
# "!" becomes id 0 for text encoder 2 (256, "!</w>", for CLIP-L). open_clip's tokenizer, which
# SDXL was trained with (sgm), A1111 and ComfyUI keep "!</w>". mood does too; the prompts above
# avoid "!" and BANG's reference is text encoder 2 on the CLIP-L ids padded with 0.
BANG = "a red fox! jumping over it!"
NEGATIVE = "blurry, low quality, watermark"
LORA_SCALE = 0.7
LORA2_SCALE = -0.5
STEPS, CFG, SIZE = 8, 5.0, 64

class EDMEulerAncestralScheduler(EDMEulerScheduler):
    """Euler a on EDM sigmas, as ComfyUI samples EDM models (k-diffusion's
    sample_euler_ancestral): diffusers has no such class, so this is EDMEulerScheduler's sigmas
    and preconditioning with EulerAncestralDiscreteScheduler.step's update, line for line."""

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        from diffusers.utils.torch_utils import randn_tensor
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma_from = self.sigmas[self.step_index]
        sigma_to = self.sigmas[self.step_index + 1]
        pred_original_sample = self.precondition_outputs(sample, model_output, sigma_from)
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - pred_original_sample) / sigma_from
        dt = sigma_down - sigma_from
        prev_sample = sample + derivative * dt
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype,
                             device=model_output.device, generator=generator)
        prev_sample = prev_sample + noise * sigma_up
        self._step_index += 1
        return (prev_sample,) if not return_dict else diffusers.schedulers.scheduling_edm_euler.\
            EDMEulerSchedulerOutput(prev_sample=prev_sample,
                                    pred_original_sample=pred_original_sample)


SCHEDULERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "edm_euler": (EDMEulerScheduler, {}),
    "edm_dpmpp_2m": (EDMDPMSolverMultistepScheduler, {}),
    "edm_dpmpp_2m_sde": (EDMDPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "edm_euler_a": (EDMEulerAncestralScheduler, {}),
}
MOOD_SAMPLER = {"euler": ("euler", "default"), "euler_a": ("euler_a", "default"),
                "dpmpp_2m_karras": ("dpmpp_2m", "karras"), "edm_euler": ("euler", "default"),
                "edm_dpmpp_2m": ("dpmpp_2m", "default"),
                "edm_dpmpp_2m_sde": ("dpmpp_2m_sde", "default"),
                "edm_euler_a": ("euler_a", "default")}
RUNS = [
    dict(name="euler_a", scheduler="euler_a", prompt=PROMPTS[0], seed=42, image=True),
    dict(name="dpmpp_2m_karras", scheduler="dpmpp_2m_karras", prompt=PROMPTS[0],
         negative=NEGATIVE, seed=43),
    dict(name="euler_batch2", scheduler="euler", prompt=PROMPTS[2], seed=44, batch=2,
         height=48),
    dict(name="euler_cfg1", scheduler="euler", prompt=PROMPTS[0], seed=45, cfg=1.0),
    dict(name="lora_euler_a", scheduler="euler_a", prompt=PROMPTS[0], seed=42, lora=LORA_SCALE),
    dict(name="lora_dpmpp_2m_karras", scheduler="dpmpp_2m_karras", prompt=PROMPTS[2],
         negative=NEGATIVE, seed=46, lora=LORA_SCALE),
    dict(name="lora_stack_euler", scheduler="euler", prompt=PROMPTS[0], seed=47, lora=LORA_SCALE,
         lora2=LORA2_SCALE),
    dict(name="pg25_dpmpp_2m", model=PG25, scheduler="edm_dpmpp_2m", prompt=PROMPTS[0],
         seed=48, cfg=3.0, image=True),
    dict(name="pg25_euler", model=PG25, scheduler="edm_euler", prompt=PROMPTS[0],
         negative=NEGATIVE, seed=49, cfg=5.0),
    dict(name="pg25_dpmpp_2m_sde", model=PG25, scheduler="edm_dpmpp_2m_sde", prompt=PROMPTS[2],
         seed=50, cfg=3.0),
    dict(name="pg25_euler_a", model=PG25, scheduler="edm_euler_a", prompt=PROMPTS[0], seed=51,
         cfg=3.0),
]


# ----- the model ---------------------------------------------------------------------------

def seeded(tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(tag.encode("utf-8")))


@torch.no_grad()
def randomise(module: torch.nn.Module, part: str, out_scale: dict | None = None) -> None:
    """Every parameter from its own seeded generator, rounded to float16 (token embeddings to
    float8 e4m3)."""
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
        v = v.half().float()
        if name.endswith("token_embedding.weight"):
            v = v.to(torch.float8_e4m3fn).float()
        p.copy_(v)


def make_pipeline(tok, tok2) -> StableDiffusionXLPipeline:
    torch.manual_seed(0)  # construction inits are overwritten anyway
    te = CLIPTextModel(CLIPTextConfig(**TE1)).eval()
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2)).eval()
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    randomise(te, "text_encoder")
    randomise(te2, "text_encoder_2")
    randomise(unet, "unet")
    randomise(vae, "vae", {"decoder.conv_out.weight": 0.5, "decoder.conv_out.bias": 0.0})
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok,
                                     tokenizer_2=tok2, unet=unet,
                                     scheduler=EulerDiscreteScheduler(**SCHEDULER),
                                     add_watermarker=False)


def fp8_token_embeddings(path: str) -> None:
    """Rewrites a weights file with its token embedding in F8_E4M3 (exact: already rounded)."""
    sd = load_file(path)
    for k in sd:
        if k.endswith("token_embedding.weight"):
            f8 = sd[k].to(torch.float8_e4m3fn)
            assert torch.equal(f8.float(), sd[k].float()), k
            sd[k] = f8
    save_file(sd, path, metadata={"format": "pt"})


def save_folder(pipe: StableDiffusionXLPipeline, path: str, with_tokenizer: bool) -> None:
    if os.path.exists(path):
        shutil.rmtree(path)
    pipe.to(torch.float16).save_pretrained(path, safe_serialization=True)
    pipe.to(torch.float32)
    if not with_tokenizer:
        shutil.rmtree(os.path.join(path, "tokenizer"))
        shutil.rmtree(os.path.join(path, "tokenizer_2"))
    for sub in ("text_encoder", "text_encoder_2"):
        fp8_token_embeddings(os.path.join(path, sub, "model.safetensors"))


def save_pg25(folder: str, path: str) -> None:
    """Playground v2.5: the same model with the EDM scheduler and the VAE's latents mean/std."""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(os.path.join(path, "scheduler"))
    os.makedirs(os.path.join(path, "vae"))
    for sub in ("text_encoder", "text_encoder_2", "unet"):
        os.symlink(os.path.join("..", FOLDER, sub), os.path.join(path, sub))
    os.symlink(os.path.join("..", "..", FOLDER, "vae", "diffusion_pytorch_model.safetensors"),
               os.path.join(path, "vae", "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    index["scheduler"] = ["diffusers", "EDMDPMSolverMultistepScheduler"]
    with open(os.path.join(folder, "vae", "config.json")) as f:
        vae_cfg = json.load(f)
    vae_cfg.update(PG25_VAE)
    sched = dict(_class_name="EDMDPMSolverMultistepScheduler",
                 _diffusers_version=diffusers.__version__, **PG25_SCHEDULER)
    for name, obj in (("model_index.json", index), ("vae/config.json", vae_cfg),
                      ("scheduler/scheduler_config.json", sched)):
        with open(os.path.join(path, name), "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


def save_single_file(pipe: StableDiffusionXLPipeline, path: str) -> None:
    """The keys of kohya's sdxl_model_util.save_stable_diffusion_checkpoint (its own converters),
    text_projection transposed as in real SGM files, token embeddings F8_E4M3, the rest F16."""
    k = tm.kohya()
    sd = {}

    def put(prefix, d):
        for name, t in d.items():
            sd[prefix + name] = t.detach().clone().contiguous()

    put("model.diffusion_model.",
        k.sdxl_model_util.convert_diffusers_unet_state_dict_to_sdxl(pipe.unet.state_dict()))
    put("conditioner.embedders.0.transformer.",
        tm.CLIPTextModelV4Layout(pipe.text_encoder).state_dict()
        if not any(n.startswith("text_model.") for n in pipe.text_encoder.state_dict())
        else pipe.text_encoder.state_dict())
    logit_scale = torch.tensor(tm.LOGIT_SCALE)
    put("conditioner.embedders.1.model.",
        k.sdxl_model_util.convert_text_encoder_2_state_dict_to_sdxl(
            pipe.text_encoder_2.state_dict(), logit_scale))
    put("first_stage_model.", k.model_util.convert_vae_state_dict(pipe.vae.state_dict()))
    proj = "conditioner.embedders.1.model.text_projection"
    sd[proj] = sd[proj].t().contiguous()
    for key in list(sd):
        if "position_ids" in key:
            del sd[key]
        elif key.endswith("token_embedding.weight"):
            sd[key] = sd[key].to(torch.float8_e4m3fn)
        elif sd[key].is_floating_point():
            sd[key] = sd[key].half()
    meta = {"mood_fixture": "tiny SDXL pipeline, tools/make_fixtures_sdxl.py, keys of kohya "
                            f"sd-scripts {tm.SD_SCRIPTS_COMMIT} sdxl_model_util"}
    save_file(sd, path, metadata=meta)


def check_single_file(path: str, folder: str, pipe: StableDiffusionXLPipeline) -> None:
    """diffusers reads the single file back to exactly the folder's weights."""
    sf = StableDiffusionXLPipeline.from_single_file(path, config=folder, torch_dtype=torch.float32,
                                                    tokenizer=pipe.tokenizer,
                                                    tokenizer_2=pipe.tokenizer_2,
                                                    scheduler=pipe.scheduler,
                                                    add_watermarker=False)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a = getattr(pipe, part).state_dict()
        b = getattr(sf, part).state_dict()
        keys = [k for k in a if "position_ids" not in k]
        assert set(keys) <= set(b), (part, sorted(set(keys) - set(b))[:5])
        for key in keys:
            assert torch.equal(a[key], b[key].to(a[key].dtype)), (part, key)
    print("single file reads back to the folder's weights")


# ----- the LoRAs ---------------------------------------------------------------------------

def sgm_names(unet) -> dict:
    """{diffusers module name: SGM module name} by kohya's own converter."""
    names = [n for n, m in unet.named_modules() if n and getattr(m, "weight", None) is not None]
    sd = {f"{n}.weight": torch.tensor(float(i)) for i, n in enumerate(names)}
    conv = tm.kohya().sdxl_model_util.convert_diffusers_unet_state_dict_to_sdxl(sd)
    return {names[int(v)]: k[: -len(".weight")] for k, v in conv.items()}


def lora_targets(pipe, which: str) -> list:
    """(kohya module name, torch module, part) of every module LoRA `which` patches."""
    out = []
    sgm = sgm_names(pipe.unet)
    for name, mod in pipe.unet.named_modules():
        if which == "sgm":
            hit = (name.startswith(("down_blocks.2.attentions.0", "mid_block",
                                    "up_blocks.0.attentions.1")) and
                   ".transformer_blocks.1." not in name and
                   name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in",
                                  ".ff.net.0.proj"))) or name in (
                "down_blocks.0.resnets.0.conv1", "up_blocks.1.resnets.2.time_emb_proj")
            if hit:
                out.append(("lora_unet_" + sgm[name].replace(".", "_"), mod, "unet"))
        else:
            hit = name.startswith(("down_blocks.1.attentions.1", "up_blocks.1.attentions.0")) and \
                name.endswith((".to_k", ".to_out.0", ".proj_out")) or name == "conv_in"
            if hit:
                out.append(("lora_unet_" + name.replace(".", "_"), mod, "unet"))
    encoders = [("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2)]
    for part, te in encoders:
        if which != "sgm" and part == "te1":
            continue
        for name, mod in te.named_modules():
            stem = name[len("text_model."):] if name.startswith("text_model.") else name
            if which == "sgm":
                # out_proj too: without a to_out_lora key diffusers 0.42 misreads converted kohya
                # text-encoder keys and drops q_proj silently
                hit = stem.endswith((".self_attn.q_proj", ".self_attn.v_proj",
                                     ".self_attn.out_proj", ".mlp.fc1"))
            else:
                hit = stem.endswith(".mlp.fc2")
            if hit:
                out.append((f"lora_{part}_text_model_" + stem.replace(".", "_"), mod, part))
    return out


LORAS = {"sgm": dict(file="lora_sgm.safetensors", rank=4, alpha=2.0),
         "diffusers_names": dict(file="lora_diffusers_names.safetensors", rank=2, alpha=1.0)}


def make_lora(pipe, which: str) -> dict:
    spec = LORAS[which]
    sd = {}
    for kname, mod, _ in lora_targets(pipe, which):
        g = seeded(f"lora_{which}/{kname}")
        w, r = mod.weight, spec["rank"]
        if w.ndim == 4:
            down = 0.3 * torch.randn(r, w.shape[1], w.shape[2], w.shape[3], generator=g)
            up = 0.3 * torch.randn(w.shape[0], r, 1, 1, generator=g)
        else:
            down = 0.3 * torch.randn(r, w.shape[1], generator=g)
            up = 0.3 * torch.randn(w.shape[0], r, generator=g)
        sd[f"{kname}.lora_down.weight"] = down.half()
        sd[f"{kname}.lora_up.weight"] = up.half()
        sd[f"{kname}.alpha"] = torch.tensor(spec["alpha"], dtype=torch.float16)
    return sd


def lora_meta(which: str) -> dict:
    spec = LORAS[which]
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(spec["rank"]),
            "ss_network_alpha": str(spec["alpha"]), "ss_base_model_version": "sdxl_base_v1-0",
            "ss_output_name": f"tiny_sdxl_{which}",
            "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
            "modelspec.sai_model_spec": "1.0.0", "modelspec.title": f"tiny_sdxl_{which}"}


@torch.no_grad()
def merge_by_hand(pipe, loras: list) -> None:
    """W += m * alpha/rank * up @ down for each (which, state dict, m), in place."""
    for which, lora, m in loras:
        for kname, mod, _ in lora_targets(pipe, which):
            down = lora[f"{kname}.lora_down.weight"].float()
            up = lora[f"{kname}.lora_up.weight"].float()
            scale = float(lora[f"{kname}.alpha"]) / down.shape[0]
            delta = (up.flatten(1) @ down.flatten(1)).reshape(mod.weight.shape)
            mod.weight += m * scale * delta


def sort_metadata(path: str) -> None:
    """safetensors writes __metadata__ in hash-map order: rewrite it sorted (same length)."""
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

def load(path: str, tok, tok2) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(path, torch_dtype=torch.float32,
                                                     tokenizer=tok, tokenizer_2=tok2,
                                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler_base = pipe.scheduler
    return pipe


def run_pipeline(pipe, run: dict, output_type: str):
    cls, extra = SCHEDULERS[run["scheduler"]]
    pipe.scheduler = cls.from_config(pipe.scheduler_base.config, **extra)
    kwargs = {}
    if run.get("lora") and not run.get("lora2"):
        kwargs["cross_attention_kwargs"] = {"scale": run["lora"]}
    return pipe(run["prompt"], negative_prompt=run.get("negative"),
                height=run.get("height", SIZE), width=SIZE,
                num_inference_steps=STEPS, guidance_scale=run.get("cfg", CFG),
                num_images_per_prompt=run.get("batch", 1),
                generator=torch.Generator("cpu").manual_seed(run["seed"]),
                output_type=output_type, **kwargs).images


def unet_input(pipe) -> dict:
    g = seeded("unet_input")
    return dict(x=torch.randn(1, 4, 8, 8, generator=g), t=torch.tensor([537.0]),
                ctx=torch.randn(1, 77, UNET["cross_attention_dim"], generator=g),
                text_embeds=torch.randn(1, TE2["projection_dim"], generator=g),
                time_ids=torch.tensor([[64.0, 48.0, 8.0, 0.0, 64.0, 64.0]]))


def unet_out(pipe, u: dict) -> torch.Tensor:
    cond = {"text_embeds": u["text_embeds"], "time_ids": u["time_ids"]}
    return pipe.unet(u["x"], u["t"], u["ctx"], added_cond_kwargs=cond).sample


@torch.no_grad()
def encoder_refs(pipe, tok, tok2, ref: dict) -> None:
    for i, p in enumerate(PROMPTS):
        ids1 = tok(p, padding="max_length", max_length=77, truncation=True,
                   return_tensors="pt").input_ids
        ids2 = tok2(p, padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
        o1 = pipe.text_encoder(ids1, output_hidden_states=True)
        o2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
        ref[f"te1.{i}"] = o1.hidden_states[-2][0]
        ref[f"te2.{i}"] = o2.hidden_states[-2][0]
        ref[f"pooled.{i}"] = o2.text_embeds[0]
        e, _, pooled, _ = pipe.encode_prompt(p, device="cpu", do_classifier_free_guidance=False)
        assert torch.equal(pooled[0], o2.text_embeds[0])
        assert torch.equal(e[0], torch.cat([ref[f"te1.{i}"], ref[f"te2.{i}"]], -1))
        ref[f"embeds.{i}"] = e[0]
    ids = tok(BANG, padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    assert 256 in ids[0] and 0 in tok2(BANG).input_ids
    eos = int((ids[0] == tok.eos_token_id).nonzero()[0])
    ids[0, eos + 1:] = 0
    ref["te2_bang"] = pipe.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2][0]
    e, _, pooled, _ = pipe.encode_prompt(PROMPTS[0], device="cpu",
                                         do_classifier_free_guidance=False, clip_skip=1)
    ref["embeds_skip1.0"], ref["pooled_skip1.0"] = e[0], pooled[0]
    ref["time_ids"] = pipe._get_add_time_ids((48, SIZE), (0, 0), (48, SIZE), torch.float32,
                                             TE2["projection_dim"])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd-scripts", default=os.environ.get("MOOD_SD_SCRIPTS", "/tmp/sd-scripts"))
    ap.add_argument("--with-tokenizer", action="store_true",
                    help="also store the tokenizers (4 MB) so diffusers loads the folder as is")
    a = ap.parse_args()
    tm.set_sd_scripts(a.sd_scripts)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    folder, pg25 = os.path.join(OUT, FOLDER), os.path.join(OUT, PG25)
    single = os.path.join(OUT, SINGLE)

    tmp = tempfile.mkdtemp()
    tok = make_tokenizer(tmp)
    tok.model_max_length = 77
    from transformers import CLIPTokenizer
    tok2 = CLIPTokenizer.from_pretrained(tmp, pad_token="!")
    tok2.model_max_length = 77
    assert tok2.pad_token_id == 0 and tok.pad_token_id == 49407
    pipe = make_pipeline(tok, tok2)
    save_folder(pipe, folder, a.with_tokenizer)
    save_single_file(pipe, single)
    save_pg25(folder, pg25)
    pipe = load(folder, tok, tok2)
    check_single_file(single, folder, pipe)
    for part in ("text_encoder", "text_encoder_2"):  # F8 read back as stored
        w = getattr(pipe, part).get_input_embeddings().weight
        assert torch.equal(w, w.to(torch.float8_e4m3fn).float()), part

    ref = {}
    with torch.no_grad():
        encoder_refs(pipe, tok, tok2, ref)
        u = unet_input(pipe)
        for k, v in u.items():
            ref[f"unet.{k}"] = v
        ref["unet.out"] = unet_out(pipe, u)

    pipes = {FOLDER: pipe, PG25: load(pg25, tok, tok2)}
    assert pipes[PG25].vae.config.latents_mean is not None
    for r in RUNS:
        if r.get("lora"):
            continue
        p = pipes[r.get("model", FOLDER)]
        ref[f"{r['name']}.latents"] = run_pipeline(p, r, "latent")
        if r.get("image"):
            ref[f"{r['name']}.image"] = torch.from_numpy(run_pipeline(p, r, "np"))

    loras = {}
    for which, spec in LORAS.items():
        loras[which] = make_lora(pipe, which)
        path = os.path.join(OUT, spec["file"])
        save_file(loras[which], path, metadata=lora_meta(which))
        sort_metadata(path)
    lora_refs(pipe, loras, ref, u)
    verify_lora(folder, tok, tok2, loras, ref, u)

    for k in ref:
        ref[k] = ref[k].float().contiguous()
    save_file(ref, os.path.join(OUT, "ref.safetensors"))
    write_manifest(ref)
    for dirpath, _, files in os.walk(OUT):  # the safetensors writer creates 0600 files
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o644)
    shutil.rmtree(tmp)
    report(ref)


def lora_refs(pipe, loras: dict, ref: dict, u: dict) -> None:
    """diffusers' own LoRA loading: the single-LoRA runs, then both LoRAs stacked."""
    pipe.load_lora_weights(os.path.join(OUT, LORAS["sgm"]["file"]), adapter_name="sgm")
    n_lora = sum(1 for part in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
                 for n, _ in part.named_modules() if n.endswith("lora_A"))
    assert n_lora == len(lora_targets(pipe, "sgm")), (n_lora, len(lora_targets(pipe, "sgm")))
    for r in RUNS:
        if r.get("lora") and not r.get("lora2"):
            ref[f"{r['name']}.latents"] = run_pipeline(pipe, r, "latent")
            if r.get("image"):
                ref[f"{r['name']}.image"] = torch.from_numpy(run_pipeline(pipe, r, "np"))
    with torch.no_grad():
        pipe._lora_scale = None
        e, _, pooled, _ = pipe.encode_prompt(PROMPTS[0], device="cpu",
                                             do_classifier_free_guidance=False,
                                             lora_scale=LORA_SCALE)
        ref["lora.embeds"], ref["lora.pooled"] = e[0], pooled[0]
        cond = {"text_embeds": u["text_embeds"], "time_ids": u["time_ids"]}
        unfused = pipe.unet(u["x"], u["t"], u["ctx"], added_cond_kwargs=cond,
                            cross_attention_kwargs={"scale": LORA_SCALE}).sample
        ref["unet.out_lora"] = unfused
    pipe.load_lora_weights(os.path.join(OUT, LORAS["diffusers_names"]["file"]),
                           adapter_name="diffusers_names")
    pipe.set_adapters(["sgm", "diffusers_names"], adapter_weights=[LORA_SCALE, LORA2_SCALE])
    for r in RUNS:
        if r.get("lora2"):
            ref[f"{r['name']}.latents"] = run_pipeline(pipe, r, "latent")
    pipe.unload_lora_weights()


@torch.no_grad()
def verify_lora(folder, tok, tok2, loras, ref, u) -> None:
    """Independent check of diffusers' LoRA references: fresh pipelines with the weights merged
    by hand give the same UNet output, conditioning and runs."""
    pipe = load(folder, tok, tok2)
    merge_by_hand(pipe, [("sgm", loras["sgm"], LORA_SCALE)])
    out = unet_out(pipe, u)
    err = float((out - ref["unet.out_lora"]).abs().max() / ref["unet.out_lora"].abs().max())
    assert err < 1e-5, f"diffusers' LoRA UNet differs from the hand merge: {err}"
    e, _, pooled, _ = pipe.encode_prompt(PROMPTS[0], device="cpu",
                                         do_classifier_free_guidance=False)
    for got, name in ((e[0], "lora.embeds"), (pooled[0], "lora.pooled")):
        err = float((got - ref[name]).abs().max() / ref[name].abs().max())
        assert err < 1e-5, f"diffusers' LoRA text encoders differ from the hand merge: {err}"
    c1 = TE1["hidden_size"]
    assert (e[0] - ref["embeds.0"])[:, :c1].abs().max() > 1e-2, "te1 LoRA does nothing"
    assert (e[0] - ref["embeds.0"])[:, c1:].abs().max() > 1e-2, "te2 LoRA does nothing"
    for r in RUNS:
        if r.get("lora") and not r.get("lora2"):
            lat = run_pipeline(pipe, dict(r, lora=None), "latent")
            err = float((lat - ref[f"{r['name']}.latents"]).abs().max() / lat.abs().max())
            assert err < 1e-4, f"diffusers' LoRA run {r['name']} differs from the hand merge: {err}"
            print(f"hand-merged LoRA agrees with diffusers (run {r['name']}: {err:.2e})")
    pipe = load(folder, tok, tok2)
    merge_by_hand(pipe, [("sgm", loras["sgm"], LORA_SCALE),
                         ("diffusers_names", loras["diffusers_names"], LORA2_SCALE)])
    r = next(r for r in RUNS if r.get("lora2"))
    lat = run_pipeline(pipe, dict(r, lora=None, lora2=None), "latent")
    err = float((lat - ref[f"{r['name']}.latents"]).abs().max() / lat.abs().max())
    assert err < 1e-4, f"diffusers' stacked LoRAs differ from the hand merge: {err}"
    print(f"hand-merged LoRA stack agrees with diffusers (run {r['name']}: {err:.2e})")


def write_manifest(ref: dict) -> None:
    runs = []
    for r in RUNS:
        sampler, schedule = MOOD_SAMPLER[r["scheduler"]]
        cls, extra = SCHEDULERS[r["scheduler"]]
        e = {"name": r["name"], "model": r.get("model", FOLDER), "prompt": r["prompt"],
             "negative": r.get("negative"), "seed": r["seed"], "steps": STEPS,
             "cfg": r.get("cfg", CFG), "width": SIZE, "height": r.get("height", SIZE),
             "batch": r.get("batch", 1),
             "sampler": sampler, "schedule": schedule, "diffusers_scheduler": cls.__name__,
             "scheduler_options": extra, "latents": f"{r['name']}.latents"}
        if r.get("image"):
            e["image"] = f"{r['name']}.image"
        if r.get("lora"):
            e["loras"] = [{"file": LORAS["sgm"]["file"], "unet": r["lora"], "te": r["lora"]}]
        if r.get("lora2"):
            e["loras"].append({"file": LORAS["diffusers_names"]["file"], "unet": r["lora2"],
                               "te": r["lora2"]})
        runs.append(e)
    man = {
        "generator": "tools/make_fixtures_sdxl.py",
        "versions": {"torch": torch.__version__.split("+")[0], "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__,
                     "safetensors": safetensors.__version__,
                     "sd-scripts": tm.SD_SCRIPTS_COMMIT},
        "model": {"folder": FOLDER, "single_file": SINGLE, "pg25": PG25, "family": "sdxl",
                  # what a single file cannot say (diffusers' config.json does)
                  "text_encoder": {"heads": TE1["num_attention_heads"], "act": TE1["hidden_act"]},
                  "text_encoder_2": {"heads": TE2["num_attention_heads"], "act": TE2["hidden_act"]},
                  "unet": {"heads": list(UNET["attention_head_dim"]),
                           "norm_num_groups": UNET["norm_num_groups"],
                           "addition_time_embed_dim": ADD_TIME},
                  "vae": {"norm_num_groups": VAE["norm_num_groups"],
                          "scaling_factor": VAE["scaling_factor"]}},
        "references": "ref.safetensors",
        "encoders": [{"prompt": p, "te1": f"te1.{i}", "te2": f"te2.{i}", "pooled": f"pooled.{i}",
                      "embeds": f"embeds.{i}"} for i, p in enumerate(PROMPTS)],
        "bang": {"prompt": BANG, "te2": "te2_bang"},
        "clip_skip": {"prompt": PROMPTS[0], "diffusers_clip_skip": 1, "mood_clip_skip": 3,
                      "embeds": "embeds_skip1.0", "pooled": "pooled_skip1.0"},
        "time_ids": {"width": SIZE, "height": 48, "ref": "time_ids"},
        "runs": runs,
        "lora": {"file": LORAS["sgm"]["file"], "scale": LORA_SCALE, "embeds": "lora.embeds",
                 "pooled": "lora.pooled", "prompt": PROMPTS[0],
                 "second": LORAS["diffusers_names"]["file"], "second_scale": LORA2_SCALE,
                 "other_family": "../pipeline/lora.safetensors"},
        "unet": {"x": "unet.x", "t": "unet.t", "ctx": "unet.ctx",
                 "text_embeds": "unet.text_embeds", "time_ids": "unet.time_ids",
                 "out": "unet.out", "out_lora": "unet.out_lora"},
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
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files
                     if not os.path.islink(os.path.join(dirpath, f)))
    print(f"{OUT}: {total} bytes")


if __name__ == "__main__":
    main()
