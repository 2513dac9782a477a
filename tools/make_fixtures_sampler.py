"""Reference fixtures for mood's samplers (tests/fixtures/sampler/).

Runs diffusers' schedulers the way its Stable Diffusion pipelines do:

    sched.set_timesteps(steps)
    g = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((B, 4, 5, 7), generator=g) * sched.init_noise_sigma
    for t in sched.timesteps:
        x_in = sched.scale_model_input(latents, t)
        out = model(x_in, t)
        latents = sched.step(out, t, latents, generator=g[, eta=...]).prev_sample

with an analytic stand-in for the UNet that mood's test computes identically in C:

    model(x_in, t) = float32(0.6 * tanh(float64(x_in)) + 0.1 * sin(0.003 * t))

(evaluated in float64 and rounded once, so torch's and glibc's tanh agree after rounding). The
step noise of the ancestral / SDE samplers and LCM comes from the same generator as the initial
latents, one torch.randn of the whole batch per step, as diffusers draws it.

Writes:
  * ref.safetensors: for each case C, "C/timesteps" (F64, the model timesteps), "C/sigmas" (F64,
    steps+1: the scheduler's float32 sigmas; for DDIM and LCM the equivalent
    sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) of each timestep and of the final level),
    "C/init" (F32, the initial noise before init_noise_sigma), "C/x0" (F32, steps x B x 4 x 5 x 7:
    the scheduler's x0 estimate at each step: pred_original_sample, DPM-Solver's converted model
    output, LCM's denoised) and "C/latents" (F32, the final latents); "alphas_cumprod/<config>"
    (F32) for a few configs.
  * cases.json: the list of cases {name, sampler (an A1111 name), steps, seed, batch, eta, config}.
  * configs/<name>.json: each case's scheduler configuration as diffusers' save_config writes it
    (every field of the scheduler class); configs/sd15_hub.json is the scheduler_config.json of
    runwayml/stable-diffusion-v1-5 as published (PNDMScheduler, no timestep_spacing), loaded with
    from_config by the "*_hub" cases, so absent fields take each class's own default.

The base configuration is SD1.x's (scaled_linear 0.00085..0.012, steps_offset 1, epsilon,
clip_sample false, set_alpha_to_one false) with timestep_spacing "leading" (as SDXL's and mood's
default); "v" cases use SD2-768's prediction_type v_prediction with "trailing" spacing; "zsnr"
cases add rescale_betas_zero_snr; "x0" cases are mood-tiny's schedule (linear betas
0.0001..0.02, prediction_type "sample": the model predicts x0). "Euler a" + Karras has no diffusers class: the case runs
EulerAncestralDiscreteScheduler on the sigmas and timesteps of EulerDiscreteScheduler with
use_karras_sigmas (which is what mood does).

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_sampler.py
Made with torch 2.15.0, diffusers 0.42.1, numpy 2.4.6, safetensors 0.8.0 (CPU, x86-64 AVX512).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler)
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "sampler")
SHAPE = (4, 5, 7)

SD15_HUB = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
          beta_schedule="scaled_linear", steps_offset=1, prediction_type="epsilon",
          timestep_spacing="leading", clip_sample=False, set_alpha_to_one=False)
V = dict(SD, prediction_type="v_prediction", timestep_spacing="trailing")
ZSNR = dict(V, rescale_betas_zero_snr=True)
LINEAR = dict(SD, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
# mood-tiny's schedule: the model predicts x0 ("sample")
X0 = dict(LINEAR, prediction_type="sample")
# Euler and Euler a raise NotImplementedError on "sample" in diffusers; their "_x0" cases run the
# epsilon scheduler on the model's x0 turned into the noise it implies, eps = (x - x0) / sigma,
# which makes diffusers' own pred_original_sample the model's x0.
X0_AS_EPS = ("euler_x0", "euler_a_x0")

# name, A1111 sampler name, class, extra class arguments, base config, steps, seed, batch, eta
CASES = [
    ("euler", "Euler", EulerDiscreteScheduler, {}, SD, 10, 1, 1, 0.0),
    ("euler_karras", "Euler Karras", EulerDiscreteScheduler, {"use_karras_sigmas": True}, SD, 12,
     2, 1, 0.0),
    ("euler_a", "Euler a", EulerAncestralDiscreteScheduler, {}, SD, 10, 3, 1, 0.0),
    ("euler_a_karras", "Euler a Karras", EulerAncestralDiscreteScheduler, {}, SD, 9, 4, 1, 0.0),
    ("dpmpp_2m", "DPM++ 2M", DPMSolverMultistepScheduler, {}, SD, 10, 5, 1, 0.0),
    ("dpmpp_2m_karras", "DPM++ 2M Karras", DPMSolverMultistepScheduler,
     {"use_karras_sigmas": True}, SD, 10, 6, 1, 0.0),
    ("dpmpp_2m_sde", "DPM++ 2M SDE", DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++"}, SD, 10, 7, 1, 0.0),
    ("dpmpp_2m_sde_karras", "DPM++ 2M SDE Karras", DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, SD, 10, 8, 1, 0.0),
    ("ddim", "DDIM", DDIMScheduler, {}, SD, 10, 9, 1, 0.0),
    ("ddim_eta", "DDIM", DDIMScheduler, {}, SD, 8, 10, 1, 0.5),
    ("lcm", "LCM", LCMScheduler, {}, SD, 4, 11, 1, 0.0),
    ("euler_v", "Euler", EulerDiscreteScheduler, {}, V, 10, 12, 1, 0.0),
    ("dpmpp_2m_v", "DPM++ 2M", DPMSolverMultistepScheduler, {}, V, 10, 13, 1, 0.0),
    ("ddim_v_zsnr", "DDIM", DDIMScheduler, {}, ZSNR, 8, 14, 1, 0.0),
    ("euler_v_zsnr", "Euler", EulerDiscreteScheduler, {}, ZSNR, 8, 15, 1, 0.0),
    ("dpmpp_2m_sigma_min", "DPM++ 2M", DPMSolverMultistepScheduler,
     {"final_sigmas_type": "sigma_min"}, SD, 16, 16, 1, 0.0),
    ("euler_linear", "Euler", EulerDiscreteScheduler, {}, LINEAR, 10, 17, 1, 0.0),
    ("euler_hub", "Euler", EulerDiscreteScheduler, {}, SD15_HUB, 9, 18, 1, 0.0),
    ("dpmpp_2m_hub", "DPM++ 2M", DPMSolverMultistepScheduler, {}, SD15_HUB, 9, 19, 1, 0.0),
    ("euler_a_b2", "Euler a", EulerAncestralDiscreteScheduler, {}, SD, 8, 20, 2, 0.0),
    ("dpmpp_2m_sde_b2", "DPM++ 2M SDE", DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++"}, SD, 8, 21, 2, 0.0),
    ("ddim_x0", "DDIM", DDIMScheduler, {}, X0, 10, 22, 1, 0.0),
    ("dpmpp_2m_x0", "DPM++ 2M", DPMSolverMultistepScheduler, {}, X0, 10, 23, 1, 0.0),
    ("dpmpp_2m_sde_x0", "DPM++ 2M SDE", DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++"}, X0, 10, 24, 1, 0.0),
    ("lcm_x0", "LCM", LCMScheduler, {}, X0, 4, 25, 1, 0.0),
    ("euler_x0", "Euler", EulerDiscreteScheduler, {}, X0, 10, 26, 1, 0.0),
    ("euler_a_x0", "Euler a", EulerAncestralDiscreteScheduler, {}, X0, 10, 27, 2, 0.0),
]


def model(x_in: torch.Tensor, t) -> torch.Tensor:
    return (0.6 * torch.tanh(x_in.double()) + 0.1 * math.sin(0.003 * float(t))).float()


def make_scheduler(cls, extra: dict, base: dict):
    return cls.from_config(dict(base, **extra))


def equivalent_sigmas(sched, steps: int) -> np.ndarray:
    """DDIM / LCM: the VE noise level of the latents before each step and after the last."""
    ac = sched.alphas_cumprod
    sig = [float(((1 - ac[int(t)]) / ac[int(t)]) ** 0.5) for t in sched.timesteps]
    if isinstance(sched, LCMScheduler):
        sig.append(0.0)
    else:
        prev = int(sched.timesteps[-1]) - sched.config.num_train_timesteps // steps
        a = ac[prev] if prev >= 0 else sched.final_alpha_cumprod
        sig.append(float(((1 - a) / a) ** 0.5))
    return np.array(sig, dtype=np.float64)


def run_case(name, cls, extra, base, steps, seed, batch, eta, tensors, cfgdir):
    as_eps = name in X0_AS_EPS
    sched = make_scheduler(cls, extra, dict(base, prediction_type="epsilon") if as_eps else base)
    sched.set_timesteps(steps)
    if name == "euler_a_karras":
        k = make_scheduler(EulerDiscreteScheduler, {"use_karras_sigmas": True}, base)
        k.set_timesteps(steps)
        sched.sigmas, sched.timesteps = k.sigmas.clone(), k.timesteps.clone()
    assert len(sched.timesteps) == steps
    g = torch.Generator("cpu").manual_seed(seed)
    init = torch.randn((batch,) + SHAPE, generator=g, dtype=torch.float32)
    latents = init * sched.init_noise_sigma
    x0s = []
    for i, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(latents, t)
        out = x0 = model(x_in, t)
        if as_eps:
            out = (latents - x0) / sched.sigmas[i]
        kw = {"eta": eta} if cls is DDIMScheduler else {}
        res = sched.step(out, t, latents, generator=g, **kw)
        latents = res.prev_sample
        if as_eps:  # the model's own x0, free of the float32 round trip through eps
            x0s.append(x0)
        elif cls is DPMSolverMultistepScheduler:
            x0s.append(sched.model_outputs[-1].clone())
        elif cls is LCMScheduler:
            x0s.append(res.denoised)
        else:
            x0s.append(res.pred_original_sample)
    if hasattr(sched, "sigmas") and cls is not DDIMScheduler and cls is not LCMScheduler:
        sigmas = sched.sigmas.double().numpy()
    else:
        sigmas = equivalent_sigmas(sched, steps)
    tensors[f"{name}/timesteps"] = torch.from_numpy(sched.timesteps.double().numpy().copy())
    tensors[f"{name}/sigmas"] = torch.from_numpy(sigmas.copy())
    tensors[f"{name}/init"] = init.contiguous()
    tensors[f"{name}/x0"] = torch.stack(x0s).float().contiguous()
    tensors[f"{name}/latents"] = latents.float().contiguous()
    if base is SD15_HUB:
        cfg = "sd15_hub.json"
    else:
        cfg = f"{name}.json"
        tmp = tempfile.mkdtemp()
        (make_scheduler(cls, extra, base) if as_eps else sched).save_config(tmp)
        shutil.copy(os.path.join(tmp, "scheduler_config.json"), os.path.join(cfgdir, cfg))
        shutil.rmtree(tmp)
    print(f"{name:22s} t={[round(float(t), 3) for t in sched.timesteps][:5]}... "
          f"max|x|={latents.abs().max().item():.4f}")
    return cfg


def main() -> None:
    os.makedirs(os.path.join(OUT, "configs"), exist_ok=True)
    cfgdir = os.path.join(OUT, "configs")
    with open(os.path.join(cfgdir, "sd15_hub.json"), "w") as f:
        json.dump(SD15_HUB, f, indent=2)
        f.write("\n")
    tensors: dict[str, torch.Tensor] = {}
    cases = []
    for name, a1111, cls, extra, base, steps, seed, batch, eta in CASES:
        cfg = run_case(name, cls, extra, base, steps, seed, batch, eta, tensors, cfgdir)
        cases.append({"name": name, "sampler": a1111, "steps": steps, "seed": seed,
                      "batch": batch, "eta": eta, "config": cfg})
    for tag, base in (("sd", SD), ("zsnr", ZSNR), ("linear", LINEAR)):
        tensors[f"alphas_cumprod/{tag}"] = make_scheduler(DDIMScheduler, {}, base).alphas_cumprod
    save_file(tensors, os.path.join(OUT, "ref.safetensors"),
              metadata={"made_by": f"tools/make_fixtures_sampler.py (torch {torch.__version__}, "
                                   f"diffusers 0.42.1, numpy {np.__version__})"})
    os.chmod(os.path.join(OUT, "ref.safetensors"), 0o644)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
