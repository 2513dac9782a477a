"""bench/vae_reference.py: inputs and the reference for bench/vae.sh.

  make CACHE_DIR   writes CACHE_DIR/sd15_vae/ (config.json + diffusion_pytorch_model.safetensors),
                   a diffusers AutoencoderKL with the SD1.5 VAE configuration (block_out_channels
                   128, 256, 512, 512; layers_per_block 2; 32 norm groups; 83.7M parameters) and
                   random float32 weights (diffusers' initialisation, torch.manual_seed(0)), and
                   CACHE_DIR/latent_64x64.f32, one unscaled 1 x 4 x 64 x 64 latent (randn * 5,
                   seed 1) as raw float32; both are kept and reused when present.
  decode VAE LATENT H W OUT
                   the reference: AutoencoderKL.from_pretrained(VAE) in float32 on the CPU with
                   torch.set_num_threads(2), vae.decode(z).sample under torch.inference_mode();
                   writes the image as raw float32 to OUT and prints the load and decode times.
  compare OUT REF  max |OUT - REF| / max(1, max |REF|) of two raw float32 files.
Run with tools/.venv/bin/python.
"""
import os
import sys
import time

import numpy as np


def make(cache: str) -> None:
    import torch
    from diffusers import AutoencoderKL

    vae_dir = os.path.join(cache, "sd15_vae")
    if not os.path.exists(os.path.join(vae_dir, "diffusion_pytorch_model.safetensors")):
        torch.manual_seed(0)
        m = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
            sample_size=512, scaling_factor=0.18215)
        m.save_pretrained(vae_dir, safe_serialization=True)
    latent = os.path.join(cache, "latent_64x64.f32")
    if not os.path.exists(latent):
        g = torch.Generator().manual_seed(1)
        (torch.randn(1, 4, 64, 64, generator=g) * 5).numpy().astype("<f4").tofile(latent)


def decode(vae_dir: str, latent: str, h: int, w: int, out: str) -> None:
    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    m = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
    t1 = time.perf_counter()
    z = torch.from_numpy(np.fromfile(latent, dtype="<f4").reshape(1, 4, h, w))
    with torch.inference_mode():
        img = m.decode(z).sample
    t2 = time.perf_counter()
    img.numpy().astype("<f4").tofile(out)
    print(f"load {t1 - t0:.3f} s, decode {t2 - t1:.3f} s")


def compare(out: str, ref: str) -> None:
    a, b = np.fromfile(out, dtype="<f4"), np.fromfile(ref, dtype="<f4")
    if a.shape != b.shape:
        sys.exit(f"compare: {a.size} floats against {b.size}")
    d = np.abs(a.astype(np.float64) - b).max() / max(1.0, np.abs(b).max())
    print(f"max rel diff mood vs diffusers: {d:.3g} (image range {b.min():.3f} .. {b.max():.3f})")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make":
        make(args[0])
    elif cmd == "decode":
        decode(args[0], args[1], int(args[2]), int(args[3]), args[4])
    elif cmd == "compare":
        compare(args[0], args[1])
    else:
        sys.exit(__doc__)
