#!/usr/bin/env python3
"""sd15_pipeline_reference.py: the reference side of bench/gen.sh and bench/style_switch.sh.

  make DIR      writes DIR/sd15: a Stable Diffusion 1.5-config diffusers pipeline with random
                weights (CLIP ViT-L/14 text encoder, the SD1.5 UNet, the SD VAE, fp16 files, about
                2 GB), its tokenizer built offline from data/clip's vocabulary, the SD1.5
                scheduler config; and DIR/loras/style{1..6}.safetensors: kohya-format LoRAs of
                rank 32 on every attention, feed-forward and projection layer of the UNet and
                every attention and MLP layer of the text encoder (the shape of a typical style
                LoRA: 264 modules, about 73 MB each in fp16). Skips what exists.
  switch DIR    diffusers' way of switching styles: load_lora_weights of style1..3, set_adapters
                at 0.8/0.5/0.3 and fuse_lora, then unfuse, unload and do the same with style4..6;
                prints `torch_first_set_ms` and `torch_switch_ms`.
  time DIR      one 512x512, 20-step Euler a generation with diffusers on torch CPU (float32,
                --threads threads), printing `torch_s`, `torch_rss_mb` (peak resident memory)
                and the time per step. With --device cuda (bench/gpu.sh) on the GPU in --dtype
                (bf16 by default there), and with --runs N the same generation N times:
                `torch_s` is the first (as a new process does it), `torch_warm_s` the median of
                the others, `torch_gpu_peak_mb` torch.cuda.max_memory_allocated.

The weights are random, so the images are noise; the work per step is exactly SD1.5's.
"""
import argparse
import os
import resource
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))


def make_pipeline(out):
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel
    import tempfile
    from make_fixtures_tokenizer import make_tokenizer  # offline CLIP tokenizer from data/clip

    if os.path.exists(os.path.join(out, "model_index.json")):
        return
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                      num_hidden_layers=12, num_attention_heads=12,
                                      max_position_embeddings=77, hidden_act="quick_gelu",
                                      projection_dim=768, bos_token_id=49406, eos_token_id=49407,
                                      pad_token_id=1))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                        sample_size=512)
    sched = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear", steps_offset=1,
                                            timestep_spacing="leading")
    tok = make_tokenizer(tempfile.mkdtemp())
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)


def lora_modules():
    """(kohya name, out, in) of every module a typical SD1.5 style LoRA trains."""
    dims = [320, 640, 1280]
    blocks = []
    for i, d in enumerate(dims):
        blocks += [("down_blocks_%d_attentions_%d" % (i, j), d) for j in range(2)]
    blocks.append(("mid_block_attentions_0", 1280))
    for i, d in zip((1, 2, 3), (1280, 640, 320)):
        blocks += [("up_blocks_%d_attentions_%d" % (i, j), d) for j in range(3)]
    for name, d in blocks:
        base = "lora_unet_" + name
        yield base + "_proj_in", d, d
        yield base + "_proj_out", d, d
        tb = base + "_transformer_blocks_0"
        for attn, ctx in (("attn1", d), ("attn2", 768)):
            yield "%s_%s_to_q" % (tb, attn), d, d
            yield "%s_%s_to_k" % (tb, attn), d, ctx
            yield "%s_%s_to_v" % (tb, attn), d, ctx
            yield "%s_%s_to_out_0" % (tb, attn), d, d
        yield tb + "_ff_net_0_proj", 8 * d, d
        yield tb + "_ff_net_2", d, 4 * d
    for l in range(12):
        base = "lora_te_text_model_encoder_layers_%d_" % l
        for p in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj",
                  "self_attn_out_proj"):
            yield base + p, 768, 768
        yield base + "mlp_fc1", 3072, 768
        yield base + "mlp_fc2", 768, 3072


def make_loras(out, n=6, rank=32):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    for k in range(1, n + 1):
        path = os.path.join(out, "style%d.safetensors" % k)
        if os.path.exists(path):
            continue
        g = torch.Generator().manual_seed(k)
        sd = {}
        for name, o, i in lora_modules():
            conv = name.endswith("_proj_in") or name.endswith("_proj_out")  # SD1: 1x1 convs
            down = torch.randn(rank, i, generator=g) * 0.02
            up = torch.randn(o, rank, generator=g) * 0.02
            if conv:
                down, up = down[:, :, None, None], up[:, :, None, None]
            sd[name + ".lora_down.weight"] = down.half()
            sd[name + ".lora_up.weight"] = up.half()
            sd[name + ".alpha"] = torch.tensor(float(rank / 2)).half()
        save_file(sd, path, metadata={"ss_network_module": "networks.lora",
                                      "ss_network_dim": str(rank),
                                      "ss_network_alpha": str(rank / 2),
                                      "ss_base_model_version": "sd_v1"})


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def time_pipeline(path, threads, steps, size, device="cpu", dtype="fp32", runs=1):
    from diffusers import StableDiffusionPipeline
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=DTYPES[dtype],
                                                   safety_checker=None).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    print("torch_load_s %.3f" % (time.perf_counter() - t0))
    pipe.tokenizer.model_max_length = 77  # the offline tokenizer is saved without it
    pipe.set_progress_bar_config(disable=True)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        pipe("a lighthouse at dusk", num_inference_steps=steps, guidance_scale=7.0, height=size,
             width=size, generator=torch.Generator("cpu").manual_seed(1), output_type="np")
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = times[0]
    print("torch_s %.3f" % t)
    print("torch_step_s %.3f" % (t / steps))
    if runs > 1:
        print("torch_warm_s %.3f" % sorted(times[1:])[(runs - 1) // 2])
    print("torch_rss_mb %.0f" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if cuda:
        print("torch_gpu_peak_mb %.0f" % (torch.cuda.max_memory_allocated() / 2**20))


def switch(path, threads):
    from diffusers import StableDiffusionPipeline
    torch.set_num_threads(threads)
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(path, "sd15"),
                                                   torch_dtype=torch.float32, safety_checker=None)
    pipe.tokenizer.model_max_length = 77
    loras = os.path.join(path, "loras")

    def apply(first):
        names = ["s%d" % k for k in range(first, first + 3)]
        for k, n in zip(range(first, first + 3), names):
            pipe.load_lora_weights(os.path.join(loras, "style%d.safetensors" % k), adapter_name=n)
        pipe.set_adapters(names, adapter_weights=[0.8, 0.5, 0.3])
        pipe.fuse_lora(adapter_names=names)

    t0 = time.perf_counter()
    apply(1)
    t1 = time.perf_counter()
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    apply(4)
    t2 = time.perf_counter()
    print("torch_first_set_ms %.1f" % ((t1 - t0) * 1e3))
    print("torch_switch_ms %.1f" % ((t2 - t1) * 1e3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["make", "time", "switch"])
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cpu", help="time: cpu or cuda")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="time: fp32 on the CPU, bf16 on cuda")
    ap.add_argument("--runs", type=int, default=1, help="time: generations (the first is torch_s)")
    a = ap.parse_args()
    if a.what == "make":
        make_pipeline(os.path.join(a.dir, "sd15"))
        make_loras(os.path.join(a.dir, "loras"))
    elif a.what == "switch":
        switch(a.dir, a.threads)
    else:
        dtype = a.dtype or ("fp32" if a.device == "cpu" else "bf16")
        time_pipeline(os.path.join(a.dir, "sd15"), a.threads, a.steps, a.size, a.device, dtype,
                      a.runs)


if __name__ == "__main__":
    main()
