"""Reference fixtures for mood's VAE (AutoencoderKL) encoder and decoder (tests/fixtures/vae/).

One tiny random diffusers AutoencoderKL with the real block structure of the SD VAE, only a few
channels wide: 4 levels, block_out_channels (8, 8, 16, 16) (SD: 128, 256, 512, 512),
layers_per_block 2 (decoder blocks have 3 resnets), norm_num_groups 4 (SD: 32), latent_channels 4,
mid-block attention, quant_conv and post_quant_conv, scaling_factor 0.13025 and latents_mean /
latents_std in its config (to check that config.json is read). Every parameter is re-randomised
with a fixed seed (weights randn / sqrt(fan_in), biases 0.1 randn, norm weights 1 + 0.2 randn, norm
biases 0.1 randn) and rounded to float16 before the float32 reference runs, so the reference sees
exactly what mood reads.

The same weights in three file forms:
  * tiny/vae/config.json + tiny/vae/diffusion_pytorch_model.fp16.safetensors: save_pretrained
    (variant "fp16") under a pipeline-like root tiny/ (with a model_index.json), so both the
    pipeline root and the VAE folder load;
  * ldm_vae.safetensors: a standalone VAE in LDM naming without prefix (the layout of
    vae-ft-mse-840000-ema-pruned.safetensors: "encoder.down.0.block.0.norm1.weight", the mid
    attention q/k/v/proj_out as 1x1 convolutions (C, C, 1, 1));
  * ldm_ckpt.safetensors: the same behind "first_stage_model." inside a fake single-file checkpoint
    (plus two unrelated UNet / text-encoder tensors a loader must ignore).
diffusers has the LDM -> diffusers conversion only (loaders/single_file_utils.py,
convert_ldm_vae_checkpoint); the LDM names here come from ldm_name(), the hand inversion of that
mapping, and the script checks that convert_ldm_vae_checkpoint maps the LDM dict back onto exactly
the diffusers state dict (same names, same values).

ref.safetensors (float32):
  * image (2 x 3 x 32 x 24, odd aspect) and its encode: vae.encode(image).latent_dist's `mean` and
    `logvar` (clamped to [-30, 20] as DiagonalGaussianDistribution does), 2 x 4 x 4 x 3;
  * latent (2 x 4 x 5 x 3, the UNSCALED latent) and `decoded` = vae.decode(latent).sample,
    2 x 3 x 40 x 24.

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_vae.py
Made with torch 2.15.0, diffusers 0.42.1, safetensors 0.8.0.
"""

from __future__ import annotations

import json
import os
import re

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

OUT = "tests/fixtures/vae"
N_BLOCKS = 4


def make_model() -> AutoencoderKL:
    torch.manual_seed(1234)
    m = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * N_BLOCKS,
        up_block_types=("UpDecoderBlock2D",) * N_BLOCKS,
        block_out_channels=(8, 8, 16, 16), layers_per_block=2, norm_num_groups=4,
        sample_size=32, scaling_factor=0.13025,
        latents_mean=(0.1, -0.2, 0.3, -0.4), latents_std=(1.5, 2.5, 3.5, 4.5),
    ).eval()
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, p in m.named_parameters():
            is_norm = "norm" in name  # GroupNorm affine parameters (norm1/2, group_norm, *norm_out)
            if name.endswith("bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif is_norm:
                v = 1 + 0.2 * torch.randn(p.shape, generator=g)
            else:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=g) / fan_in**0.5
            p.copy_(v.half().float())
    return m


def ldm_name(k: str) -> str:
    """diffusers AutoencoderKL state-dict name -> LDM (CompVis) name, the inverse of diffusers'
    convert_ldm_vae_checkpoint. Decoder up blocks are reversed: up_blocks.i = up.(n-1-i)."""
    k = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    k = re.sub(r"down_blocks\.(\d+)\.resnets\.(\d+)", r"down.\1.block.\2", k)
    k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0", r"down.\1.downsample", k)

    def up(i: str) -> str:
        return f"up.{N_BLOCKS - 1 - int(i)}"

    k = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda mt: up(mt.group(1)) + ".block.", k)
    k = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda mt: up(mt.group(1)) + ".upsample.", k)
    k = re.sub(r"mid_block\.resnets\.(\d+)", lambda mt: f"mid.block_{int(mt.group(1)) + 1}", k)
    k = k.replace("mid_block.attentions.0", "mid.attn_1")
    for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                 ("to_out.0", "proj_out")):
        k = k.replace(f"attn_1.{a}.", f"attn_1.{b}.")
    return k


def ldm_state_dict(m: AutoencoderKL) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().half().contiguous() for k, v in m.state_dict().items()}
    ldm = {}
    for k, v in sd.items():
        lk = ldm_name(k)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", lk):
            v = v[:, :, None, None].contiguous()  # LDM keeps them as 1x1 convolutions
        ldm[lk] = v
    # diffusers' own conversion must map the LDM names back onto the diffusers state dict
    back = convert_ldm_vae_checkpoint(ldm, dict(m.config))
    assert sorted(back) == sorted(sd), set(back) ^ set(sd)
    for k in sd:
        assert torch.equal(back[k].reshape(sd[k].shape), sd[k]), k
    return ldm


def main() -> None:
    os.makedirs(f"{OUT}/tiny", exist_ok=True)
    m = make_model()
    m.half().save_pretrained(f"{OUT}/tiny/vae", variant="fp16", safe_serialization=True)
    m.float()
    with open(f"{OUT}/tiny/model_index.json", "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]},
                  f, indent=2)
        f.write("\n")

    ldm = ldm_state_dict(m)
    save_file(ldm, f"{OUT}/ldm_vae.safetensors")
    ckpt = {"first_stage_model." + k: v for k, v in ldm.items()}
    ckpt["model.diffusion_model.out.2.bias"] = torch.zeros(4, dtype=torch.float16)
    ckpt["cond_stage_model.transformer.text_model.final_layer_norm.bias"] = torch.zeros(
        8, dtype=torch.float16)
    save_file(ckpt, f"{OUT}/ldm_ckpt.safetensors")

    g = torch.Generator().manual_seed(5)
    image = (torch.rand(2, 3, 32, 24, generator=g) * 2 - 1).contiguous()
    latent = (torch.randn(2, 4, 5, 3, generator=g) * 3).contiguous()
    with torch.no_grad():
        dist = m.encode(image).latent_dist
        decoded = m.decode(latent).sample
    ref = {"image": image, "mean": dist.mean.contiguous(), "logvar": dist.logvar.contiguous(),
           "latent": latent, "decoded": decoded.contiguous()}
    save_file(ref, f"{OUT}/ref.safetensors")
    for root, _, files in os.walk(OUT):
        for fn in files:
            os.chmod(os.path.join(root, fn), 0o644)
    print({k: (tuple(v.shape), round(v.abs().max().item(), 3)) for k, v in ref.items()})
    print(sum(p.numel() for p in m.parameters()), "parameters,", len(ldm), "tensors")


if __name__ == "__main__":
    main()
