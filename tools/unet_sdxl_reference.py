"""A full-size SDXL-config UNet with random weights, and diffusers' output / timing for it.

Used by the slow test (tests/unit/test_unet_sdxl_slow.c) and the benchmark (bench/unet_sdxl.sh);
nothing is committed: the model is written where the caller says (a temp dir, or a cache dir
outside the repository) and reused when it is already there.

  make DIR [--config full|small] [--size S] [--batch B] [--tokens L]
      DIR/unet/: config.json and diffusion_pytorch_model.safetensors in float16, every parameter
      randn/sqrt(fan_in) (norm weights 1 + 0.1 randn, biases 0.1 randn; seed crc32(parameter
      name), as tools/unet_sd15_reference.py), written once.
        full:  stabilityai/stable-diffusion-xl-base-1.0's UNet config (engine-anchors.md §3.2:
               320/640/1280, transformer depth 1/2/10 and 10 in the mid block, heads 5/10/20,
               context 2048, text_time added embedding 256 x 6 + 1280): 2.57 G parameters,
               5.1 GB on disk, about 10.3 GB of memory in float32 (here and in mood).
        small: the same blocks and input widths (context 2048, text_embeds 1280, time ids 6 x
               256) at widths 64/128/128 with transformer depth 1/2/2: for checking the
               plumbing on a busy machine (the slow test and the benchmark take it from an
               environment variable).
      DIR/io_<B>x<S>x<L>.safetensors: x (B x 4 x S x S), t, context (B x L x 2048), text_embeds
      (B x 1280), time_ids (B x 6) and out, diffusers' float32 forward with the float16-rounded
      weights (written once).
  time DIR [--size S] [--batch B] [--tokens L] [--threads N] [--runs R]
      diffusers' forward on those inputs with torch on N CPU threads: one warm-up, then R runs;
      prints "torch_ms <median>" and "torch_rel_err" (against the stored output).

DIR holds one configuration: `make` refuses a DIR made with the other one.
Exit status 77 when torch or diffusers cannot be imported (callers skip).
Written for torch 2.15.0, diffusers 0.42.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

try:
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file
except ImportError as e:  # pragma: no cover
    print(f"unet_sdxl_reference: {e}", file=sys.stderr)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_sd15_reference import randomise  # noqa: E402

SDXL = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), use_linear_projection=True, upcast_attention=False,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816)
SMALL = dict(SDXL, block_out_channels=(64, 128, 128), transformer_layers_per_block=(1, 2, 2),
             attention_head_dim=(1, 2, 2))
CONFIGS = {"full": SDXL, "small": SMALL}
TEXT_EMBEDS = 1280


def model_dir(root: str) -> str:
    return os.path.join(root, "unet")


def io_path(root: str, a) -> str:
    return os.path.join(root, f"io_{a.batch}x{a.size}x{a.tokens}.safetensors")


def load(root: str) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(model_dir(root), torch_dtype=torch.float32).eval()


def check_config(d: str, name: str) -> bool:
    """Whether d holds a model (of config `name`; exits 2 when it is of another)."""
    path = os.path.join(d, "config.json")
    if not os.path.isfile(os.path.join(d, "diffusion_pytorch_model.safetensors")):
        return False
    with open(path) as f:
        have = json.load(f)["block_out_channels"]
    if list(have) != list(CONFIGS[name]["block_out_channels"]):
        print(f"unet_sdxl_reference: {d} holds another config than {name}", file=sys.stderr)
        sys.exit(2)
    return True


def inputs(a) -> dict:
    g = torch.Generator().manual_seed(1234)
    ids = torch.tensor([[1024, 1024, 0, 0, 1024, 1024], [768, 1152, 64, 32, 1024, 1024]],
                       dtype=torch.float32)
    return {"x": torch.randn(a.batch, 4, a.size, a.size, generator=g),
            "t": torch.tensor([999.0, 261.5] * a.batch)[: a.batch],
            "context": torch.randn(a.batch, a.tokens, 2048, generator=g),
            "text_embeds": torch.randn(a.batch, TEXT_EMBEDS, generator=g),
            "time_ids": ids.repeat(a.batch, 1)[: a.batch].contiguous()}


def forward(unet, io):
    cond = {"text_embeds": io["text_embeds"], "time_ids": io["time_ids"]}
    return unet(io["x"], io["t"], encoder_hidden_states=io["context"],
                added_cond_kwargs=cond).sample


@torch.no_grad()
def make(a) -> None:
    d = model_dir(a.dir)
    if not check_config(d, a.config):
        os.makedirs(a.dir, exist_ok=True)
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**CONFIGS[a.config]).eval()
        randomise(unet)
        unet.half().save_pretrained(d)
        del unet
    path = io_path(a.dir, a)
    if os.path.isfile(path):
        return
    unet = load(a.dir)
    io = inputs(a)
    io["out"] = forward(unet, io).contiguous()
    save_file(io, path + ".tmp")
    os.replace(path + ".tmp", path)


@torch.no_grad()
def timing(a) -> None:
    torch.set_num_threads(a.threads)
    unet = load(a.dir)
    io = load_file(io_path(a.dir, a))
    out = forward(unet, io)  # warm-up
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        out = forward(unet, io)
        times.append((time.perf_counter() - t0) * 1000)
    err = (out - io["out"]).abs().max() / io["out"].abs().max()
    print(f"torch_ms {statistics.median(times):.1f}")
    print(f"torch_rel_err {err:.2e}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["make", "time"])
    p.add_argument("dir")
    p.add_argument("--config", choices=sorted(CONFIGS), default="full")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    make(a) if a.cmd == "make" else timing(a)


if __name__ == "__main__":
    main()
