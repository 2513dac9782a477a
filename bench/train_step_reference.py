#!/usr/bin/env python3
"""train_step_reference.py: the reference side of bench/train_step.sh.

One training step of diffusers' LoRA recipe (examples/text_to_image/train_text_to_image_lora.py,
diffusers main of 2026-08: PEFT LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
target_modules=["to_k", "to_q", "to_v", "to_out.0"]) added to the frozen UNet, torch.optim.AdamW
over the LoRA parameters, the constant schedule), on torch CPU in float32 (the recipe's
--mixed_precision no), batch 1, no snr_gamma, no noise offset, no flips (its defaults).

  board DIR --size S   writes DIR/board.png (S x S RGB, a fixed pattern) and DIR/board.txt (its
                       caption), the one-image board both sides train on. Skips what exists.
  time MODEL BOARD     loads MODEL (a diffusers SD folder) as the recipe does, then runs the
                       recipe's step on BOARD's image: a warm-up step and --runs timed ones.

What each step does, in the recipe's order, and how it is timed (perf_counter around each part):
  data    the dataloader's work for one example (num_workers 0: in the training process): the
          image decoded, resized (bilinear) and centre-cropped to S, ToTensor, Normalize([0.5],
          [0.5]) -- done here with PIL and torch, as torchvision is not installed -- and the
          caption tokenized to 77 ids;
  vae     vae.encode(pixels).latent_dist.sample() * scaling_factor;
  noise   randn_like, randint timesteps, noise_scheduler.add_noise (DDPMScheduler);
  te      text_encoder(input_ids)[0];
  fwd     unet(noisy, timesteps, encoder_hidden_states) with the LoRA layers, the MSE loss and
          its .item() for the log;
  bwd     loss.backward() (accelerator.backward on one CPU process);
  opt     clip_grad_norm_(lora params, 1.0), optimizer.step(), lr_scheduler.step(),
          optimizer.zero_grad(). (The recipe passes clip_grad_norm_ its `lora_layers`, a filter
          object the optimizer's constructor has already used up, so it clips nothing; this
          clips the LoRA parameters, as it means to and as mood does: a few ms either way.)
Prints, as `key value` lines (medians over the timed steps, in ms): torch_step_ms = noise + fwd +
bwd + opt (the part mood's trainer also does at every step, its latents and text conditioning
being cached), torch_full_ms (the whole recipe step), each part, torch_rss_mb (the process's peak
resident memory, loading included), torch_load_s, and the LoRA's module and parameter count.
--checkpointing: the recipe's --gradient_checkpointing (unet.enable_gradient_checkpointing()).

On a GPU (bench/gpu.sh): --device cuda puts the models and every tensor of the step on GPU 0 (the
data part includes the batch's copy to the device, as accelerate's dataloader does) and calls
torch.cuda.synchronize() before every perf_counter read, so each part is its GPU time; it also
prints torch_gpu_peak_mb (torch.cuda.max_memory_allocated over the whole run, loading included)
and torch_gpu_reserved_mb (max_memory_reserved: what the caching allocator took from the driver).
--precision fp32 (default) is the recipe's --mixed_precision no; on the GPU TF32 is then off
(torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32 False, the recipe's --allow_tf32
not given) unless --tf32. --precision bf16 is its --mixed_precision bf16: the frozen UNet, VAE
and text encoder cast to bfloat16 (weight_dtype), the pixels given to the VAE in bfloat16, and
the UNet forward under torch.autocast("cuda", bfloat16) (what accelerate wraps the prepared
model's forward in); the loss on .float() outputs. The LoRA factors: --lora-dtype fp32 (default)
keeps them float32 as cast_training_params(unet, torch.float32) does; note that the recipe calls
it only for --mixed_precision fp16, so with bf16 its LoRA factors stay in the bfloat16 that
PEFT's add_adapter gives them (checked with peft 0.21): --lora-dtype weight reproduces that.
"""
import argparse
import contextlib
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTION = "a lighthouse at dusk"


def make_board(out, size):
    from PIL import Image
    os.makedirs(out, exist_ok=True)
    png, txt = os.path.join(out, "board.png"), os.path.join(out, "board.txt")
    if not os.path.exists(png):
        y, x = np.mgrid[0:size, 0:size] / size
        rng = np.random.default_rng(0)
        img = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(9 * x * y)], -1)
        img = (img + 1) * 110 + rng.normal(0, 12, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(png)
    if not os.path.exists(txt):
        with open(txt, "w") as f:
            f.write(CAPTION + "\n")


def load_tokenizer(model):
    from transformers import CLIPTokenizer
    if os.path.isdir(os.path.join(model, "tokenizer")):
        tok = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    else:  # e.g. the tiny test pipeline: the offline tokenizer from data/clip
        import tempfile
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        from make_fixtures_tokenizer import make_tokenizer
        tok = make_tokenizer(tempfile.mkdtemp())
    tok.model_max_length = 77  # the offline tokenizer is saved without it
    return tok


def example(board, size, tokenizer):
    """The recipe's preprocess_train + collate_fn for one image (PIL for torchvision)."""
    from PIL import Image
    name = sorted(f for f in os.listdir(board) if f.endswith(".png"))[0]
    with open(os.path.join(board, name[:-4] + ".txt")) as f:
        caption = f.read().strip()
    img = Image.open(os.path.join(board, name)).convert("RGB")
    w, h = img.size
    s = size / min(w, h)  # transforms.Resize(size): the shorter side to size
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2  # CenterCrop
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - 0.5) / 0.5  # Normalize([0.5], [0.5])
    ids = tokenizer([caption], max_length=tokenizer.model_max_length, padding="max_length",
                    truncation=True, return_tensors="pt").input_ids
    return x[None].contiguous().float(), ids


def gpu_clock(device):
    """perf_counter, after the GPU's queued work is done when the step runs there."""
    if device.type != "cuda":
        return time.perf_counter

    def clock():
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return clock


def time_steps(a):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from transformers import CLIPTextModel
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device("cuda:0" if a.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.cuda.reset_peak_memory_stats(device)
    weight_dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    clock = gpu_clock(device)
    t0 = clock()
    sched = DDPMScheduler.from_pretrained(a.model, subfolder="scheduler")
    tokenizer = load_tokenizer(a.model)
    text_encoder = CLIPTextModel.from_pretrained(a.model, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(a.model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet")
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    config = LoraConfig(r=a.rank, lora_alpha=a.alpha, init_lora_weights="gaussian",
                        target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    unet.to(device, dtype=weight_dtype)
    vae.to(device, dtype=weight_dtype)
    text_encoder.to(device, dtype=weight_dtype)
    unet.add_adapter(config)
    if a.lora_dtype == "fp32":
        from diffusers.training_utils import cast_training_params
        cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    if a.checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=a.runs + 1)
    load_s = clock() - t0
    modules = sum(1 for m in unet.modules() if isinstance(m, LoraLayer))
    n_params = sum(p.numel() for p in params)
    unet.train()

    parts = {k: [] for k in ("data", "vae", "noise", "te", "fwd", "bwd", "opt")}
    # accelerate runs the prepared UNet's forward under autocast with --mixed_precision bf16
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if a.precision == "bf16"
                else contextlib.nullcontext())
    for i in range(a.runs + 1):
        t = [clock()]
        pixel_values, input_ids = example(a.board, a.size, tokenizer)
        pixel_values, input_ids = pixel_values.to(device), input_ids.to(device)
        t.append(clock())
        latents = vae.encode(pixel_values.to(dtype=weight_dtype)).latent_dist.sample()
        latents = latents * vae.config.scaling_factor
        t.append(clock())
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],),
                                  device=latents.device)
        timesteps = timesteps.long()
        noisy_latents = sched.add_noise(latents, noise, timesteps)
        t.append(clock())
        encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
        t.append(clock())
        target = noise  # epsilon prediction
        with autocast:
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states,
                              return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        loss.detach().item()  # the recipe's logged train_loss
        t.append(clock())
        loss.backward()
        t.append(clock())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        t.append(clock())
        if i == 0:
            continue  # warm-up
        for k, (b, e) in zip(parts, zip(t, t[1:])):
            parts[k].append((e - b) * 1e3)

    med = {k: statistics.median(v) for k, v in parts.items()}
    step = [sum(parts[k][j] for k in ("noise", "fwd", "bwd", "opt")) for j in range(a.runs)]
    full = [sum(parts[k][j] for k in parts) for j in range(a.runs)]
    print("torch_step_ms %.1f" % statistics.median(step))
    print("torch_full_ms %.1f" % statistics.median(full))
    for k, v in med.items():
        print("torch_%s_ms %.1f" % (k, v))
    print("torch_steps_ms %s" % ",".join("%.0f" % s for s in step))
    print("torch_rss_mb %.0f" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print("torch_load_s %.2f" % load_s)
    print("torch_device %s" % device)
    print("torch_precision %s" % a.precision)
    print("torch_lora_dtype %s" % str(params[0].dtype).replace("torch.", ""))
    if device.type == "cuda":
        print("torch_tf32 %d" % int(a.tf32))
        print("torch_gpu_peak_mb %.0f" % (torch.cuda.max_memory_allocated(device) / 2**20))
        print("torch_gpu_reserved_mb %.0f" % (torch.cuda.max_memory_reserved(device) / 2**20))
    print("torch_lora_modules %d" % modules)
    print("torch_lora_params %d" % n_params)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["board", "time"])
    ap.add_argument("dir", help="board: the board folder; time: the model folder")
    ap.add_argument("board", nargs="?")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=None, help="default: the rank (the recipe's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="the recipe's --mixed_precision no / bf16 (bf16: --device cuda)")
    ap.add_argument("--lora-dtype", choices=["fp32", "weight"], default="fp32",
                    help="fp32: cast_training_params; weight: as PEFT makes them (bf16 with bf16)")
    ap.add_argument("--tf32", action="store_true",
                    help="allow TF32 matmuls and convolutions on the GPU (default: off)")
    a = ap.parse_args()
    if a.precision == "bf16" and a.device != "cuda":
        ap.error("--precision bf16 needs --device cuda (the recipe's autocast is CUDA's)")
    if a.what == "board":
        make_board(a.dir, a.size)
        return
    a.model = a.dir
    a.alpha = a.alpha if a.alpha is not None else a.rank
    time_steps(a)


if __name__ == "__main__":
    main()
