"""bench/bake_reference.py: inputs and the reference for bench/bake.sh.

  make OUT_DIR    writes OUT_DIR/sd15_unet.safetensors, an SD1.5-size single-file UNet checkpoint
                  (real LDM key names "model.diffusion_model.*" and real shapes, 860M parameters,
                  random fp16 values, ~1.7 GB), and OUT_DIR/lora_r32.safetensors, a rank-32 kohya
                  LoRA/LoCon on it (every Linear/Conv2d inside Transformer2DModel: attention q/k/v/out,
                  feed-forward, proj_in/out; and the 3x3 conv1/conv2 of every ResnetBlock2D), fp16.
                  Names and shapes come from kohya's own UNet (library/original_unet.py) and its
                  converter (library/model_util.py convert_unet_state_dict_to_sd), built on the meta
                  device so nothing is allocated.
  merge CKPT LORA RATIO OUT
                  the reference bake: what kohya sd-scripts networks/merge_lora.py does for a
                  checkpoint, restricted to the UNet: load the LDM checkpoint and convert it
                  (model_util.convert_ldm_unet_checkpoint) into kohya's UNet, merge with
                  merge_lora.merge_to_sd_model (float32 on the CPU), convert back
                  (convert_unet_state_dict_to_sd), cast to the checkpoint's fp16 and save.

kohya is imported from a checkout (env MOOD_SD_SCRIPTS, default /tmp/sd-scripts; clone it from
a kohya-ss/sd-scripts clone) through tools/tiny_models.py's import shim.
Run with tools/.venv/bin/python.
"""
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
import tiny_models as tm  # noqa: E402

RANK = 32
ALPHA = 16.0


def kohya():
    return tm.kohya(os.environ.get("MOOD_SD_SCRIPTS", "/tmp/sd-scripts"))


def meta_unet(k):
    cfg = k.model_util.create_unet_diffusers_config(False)
    with torch.device("meta"):
        unet = k.model_util.UNet2DConditionModel(**cfg)
    return unet


def lora_targets(k, unet):
    """(kohya LoRA name, module) for what the LoRA touches, named as merge_to_sd_model names them."""
    prefix = k.lora.LoRANetwork.LORA_PREFIX_UNET
    for name, module in unet.named_modules():
        cls = module.__class__.__name__
        if cls not in ("Transformer2DModel", "ResnetBlock2D"):
            continue
        for child_name, child in module.named_modules():
            if child.__class__.__name__ not in ("Linear", "Conv2d"):
                continue
            if cls == "ResnetBlock2D" and child_name not in ("conv1", "conv2"):
                continue
            yield (prefix + "." + name + "." + child_name).replace(".", "_"), child


def make(out_dir):
    k = kohya()
    g = torch.Generator().manual_seed(1)
    unet = meta_unet(k)
    shapes = {n: p.shape for n, p in unet.state_dict().items()}
    # The converter maps names only (no reshape for SD1.x): feed it the names themselves to get
    # {LDM name: diffusers name}.
    hf_of = k.model_util.convert_unet_state_dict_to_sd(False, {n: n for n in shapes})
    ckpt = {}
    for ldm_name, hf_name in hf_of.items():
        shape = shapes[hf_name]
        ckpt["model.diffusion_model." + ldm_name] = (torch.randn(shape, generator=g) * 0.05).half()
    save_file(ckpt, os.path.join(out_dir, "sd15_unet.safetensors"))
    n_params = sum(t.numel() for t in ckpt.values())
    del ckpt
    lora = {}
    for name, mod in lora_targets(k, unet):
        w = mod.weight
        if w.dim() == 2:
            down, up = (RANK, w.shape[1]), (w.shape[0], RANK)
        else:
            down, up = (RANK, w.shape[1], w.shape[2], w.shape[3]), (w.shape[0], RANK, 1, 1)
        lora[name + ".lora_down.weight"] = (torch.randn(down, generator=g) * 0.02).half()
        lora[name + ".lora_up.weight"] = (torch.randn(up, generator=g) * 0.02).half()
        lora[name + ".alpha"] = torch.tensor(ALPHA).half()
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK),
            "ss_network_alpha": str(ALPHA), "ss_network_args": '{"conv_dim": "32", "conv_alpha": "16"}',
            "ss_base_model_version": "sd_v1"}
    save_file(lora, os.path.join(out_dir, "lora_r32.safetensors"), metadata=meta)
    print("checkpoint: %d tensors, %d parameters; LoRA: %d modules" % (len(hf_of), n_params, len(lora) // 3))


def merge(ckpt_path, lora_path, ratio, out_path):
    k = kohya()
    t0 = time.time()
    sd = load_file(ckpt_path)  # convert_ldm_unet_checkpoint takes the "model.diffusion_model." keys
    cfg = k.model_util.create_unet_diffusers_config(False)
    converted = k.model_util.convert_ldm_unet_checkpoint(False, sd, cfg)
    del sd
    unet = k.model_util.UNet2DConditionModel(**cfg)
    unet.load_state_dict(converted)
    del converted
    text_encoder = torch.nn.Module()  # the LoRA has no text-encoder keys
    k.merge_lora.merge_to_sd_model(text_encoder, unet, [lora_path], [ratio], torch.float32)
    out = k.model_util.convert_unet_state_dict_to_sd(False, unet.state_dict())
    del unet
    out = {"model.diffusion_model." + n: v.detach().to(torch.float16).contiguous() for n, v in out.items()}
    save_file(out, out_path)
    print("reference merge: %.1f s" % (time.time() - t0))


def main():
    if sys.argv[1:2] == ["make"]:
        make(sys.argv[2])
    elif sys.argv[1:2] == ["merge"]:
        merge(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
