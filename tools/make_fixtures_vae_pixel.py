"""Reference fixtures for mood's pixel-space "autoencoder" (MoodPixelShuffle, tests/fixtures/vae_pixel/).

mood-tiny runs its UNet on the image cut into 4 x 4 patches stacked as channels, torch's
pixel_unshuffle; decoding is pixel_shuffle. This writes:
  * model/vae/config.json: {"_class_name": "MoodPixelShuffle", "patch_size": 4, ...};
  * ref.safetensors (float32): image (2 x 3 x 8 x 12) and latent = F.pixel_unshuffle(image, 4)
    (2 x 48 x 2 x 3); back = F.pixel_shuffle(latent, 4) (equal to image, checked here).

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_vae_pixel.py
Made with torch 2.15.0, safetensors 0.8.0.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = "tests/fixtures/vae_pixel"


def main() -> None:
    os.makedirs(f"{OUT}/model/vae", exist_ok=True)
    with open(f"{OUT}/model/vae/config.json", "w") as f:
        json.dump({"_class_name": "MoodPixelShuffle", "patch_size": 4, "in_channels": 3,
                   "scaling_factor": 1.0, "sample_size": 64}, f, indent=2)
        f.write("\n")
    g = torch.Generator().manual_seed(7)
    image = torch.rand(2, 3, 8, 12, generator=g) * 2 - 1
    latent = F.pixel_unshuffle(image, 4)
    assert torch.equal(F.pixel_shuffle(latent, 4), image)
    save_file({"image": image.contiguous(), "latent": latent.contiguous()}, f"{OUT}/ref.safetensors")


if __name__ == "__main__":
    main()
