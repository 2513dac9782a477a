#!/usr/bin/env python3
"""
make_fixtures_train_sdxl_te.py: the torch autograd reference for one SDXL training step with the
text encoders' LoRA (mood train --te on an SDXL base; tests/fixtures/train_sdxl_te/, checked by
tests/unit/test_train_sdxl_te.c).

The model is the tiny SDXL folder of tests/fixtures/sdxl (tiny-sdxl): transformers'
CLIPTextModel (text encoder 1, 3 layers) and CLIPTextModelWithProjection (text encoder 2, 3
layers, projection 6 -> 8), diffusers' UNet2DConditionModel (text_time added embedding), all
frozen, in float32. LoRA side paths as kohya's LoRAModule (y = W x + up(down(x)) * alpha / rank)
on the modules mood trains with --te --targets attn+ff on this model, in mood's (kohya's) order:

  * text encoder 1, layers 0..1 (the conditioning is its hidden_states[-2]: the last layer takes
    no part): self_attn q/k/v/out_proj, mlp fc1/fc2, lora_te1_text_model_encoder_layers_<i>_<p>;
  * text encoder 2, layers 0..2 (its pooled output is the last layer's): lora_te2_...;
  * the UNet's attn+ff Linear layers under kohya's SDXL (SGM) names (make_fixtures_train_sdxl).

The factors are random (down randn / sqrt(in), up 0.5 randn / sqrt(rank), rounded to float16 and
stored so; both sides compute with those values in float32), so that every module changes its
layer's output and every factor gets a gradient. They are stored flat ("factors"), in mood's
parameter layout: module by module (case.json "modules": kohya name, out, in), down (rank x in)
then up (out x rank). One step as mood's loss function
(train/unet_loss.c) and kohya's sdxl_train_network.py with the text encoders trained:

  ctx  = cat(te1(ids1).hidden_states[-2], te2(ids2).hidden_states[-2])   (no final norm)
  emb  = te2(ids2).text_embeds           (end token after the final norm, through the projection)
  pred = unet(noisy, t, ctx, added_cond_kwargs={text_embeds: emb, time_ids})
  loss = mean_b(w_b * mean((pred_b - target_b)^2))

ids1 are the captions as kohya's tokenizer pads them (end token), ids2 as tokenizer_2 does ("!",
id 0 after the end token); one caption is the empty one (caption dropout's). loss.backward()
gives every factor's gradient, stored times grad_scale (mood's gradient accumulation scale) in
the same flat layout ("grads"). A second backward with text_embeds detached (the pooled road
cut) gives text encoder 2's gradients without it ("grads_nopool_te2", its modules only), so the
test can show that the pooled road matters by more than its tolerance.

Writes tests/fixtures/train_sdxl_te/ref.safetensors and case.json. Run from the repository root
(kohya sd-scripts checkout as for tools/tiny_models.py, for the SGM names):
    tools/.venv/bin/python tools/make_fixtures_train_sdxl_te.py [--sd-scripts DIR]
Made with torch 2.15.0, diffusers 0.42.1, transformers 5.24.0, kohya sd-scripts 48d368fa
(recorded in case.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures_train as mft  # noqa: E402
import make_fixtures_train_sdxl as mfx  # noqa: E402
import tiny_models as tm  # noqa: E402

OUT_DIR = os.path.join(mft.ROOT, "tests", "fixtures", "train_sdxl_te")
CASE = dict(seed=7, rank=4, alpha=2.0, targets="attn+ff", size=8, timesteps=[817, 93],
            weights=[0.6, 1.0], grad_scale=0.5, captions=["red fox, sks style", ""],
            time_ids=[[96, 64, 16, 0, 64, 64], [64, 64, 0, 0, 64, 64]], te1_layers=2,
            te2_layers=3)
TE_SUBS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
           "mlp.fc1", "mlp.fc2")


def load():
    from diffusers import UNet2DConditionModel
    from make_fixtures_tokenizer import make_tokenizer
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(os.path.join(mfx.TINY_SDXL, "unet"),
                                                torch_dtype=torch.float32).train(False)
    te1 = CLIPTextModel.from_pretrained(os.path.join(mfx.TINY_SDXL, "text_encoder"),
                                        torch_dtype=torch.float32).train(False)
    te2 = CLIPTextModelWithProjection.from_pretrained(
        os.path.join(mfx.TINY_SDXL, "text_encoder_2"), torch_dtype=torch.float32).train(False)
    for p in [*unet.parameters(), *te1.parameters(), *te2.parameters()]:
        p.requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(tmp)
    return unet, te1, te2, tok


def te_modules(te, prefix, layers):
    """(kohya name, Linear) of a text encoder's first `layers` layers, kohya's module order."""
    out = []
    for i in range(layers):
        layer = getattr(te, "text_model", te).encoder.layers[i]  # transformers 5: no text_model
        for sub in TE_SUBS:
            mod = layer.get_submodule(sub)
            assert isinstance(mod, torch.nn.Linear)
            out.append((f"{prefix}text_model_encoder_layers_{i}_{sub.replace('.', '_')}", mod))
    return out


class Side:
    """kohya's LoRAModule on a Linear with given (float16-rounded) factors."""

    def __init__(self, name, module, rank, alpha, g):
        self.name = name
        down = torch.randn(rank, module.in_features, generator=g) / math.sqrt(module.in_features)
        up = torch.randn(module.out_features, rank, generator=g) * (0.5 / math.sqrt(rank))
        self.down = torch.nn.Parameter(down.half().float())
        self.up = torch.nn.Parameter(up.half().float())
        self.scale = alpha / rank
        module.register_forward_hook(lambda mod, args, y: y + self(args[0]))

    def __call__(self, x):
        F = torch.nn.functional
        return F.linear(F.linear(x, self.down), self.up) * self.scale


def ids_pair(tok, caption):
    """kohya's ids of a caption for text encoder 1 (padded with the end token) and 2 (with 0)."""
    ids1 = tok(caption, padding="max_length", truncation=True, max_length=77,
               return_tensors="pt").input_ids[0]
    eos = int((ids1 == tok.eos_token_id).nonzero()[0, 0])
    ids2 = ids1.clone()
    ids2[eos + 1:] = 0
    return ids1, ids2


def step(unet, te1, te2, sides, batch, pooled_road=True):
    """The loss of one step; gradients left in the factors' .grad."""
    for s in sides:
        s.down.grad = None
        s.up.grad = None
    h1 = te1(batch["ids1"], output_hidden_states=True).hidden_states[-2]
    o2 = te2(batch["ids2"], output_hidden_states=True)
    ctx = torch.cat([h1, o2.hidden_states[-2]], dim=-1)
    emb = o2.text_embeds if pooled_road else o2.text_embeds.detach()
    pred = unet(batch["noisy"], batch["t"], encoder_hidden_states=ctx,
                added_cond_kwargs={"text_embeds": emb, "time_ids": batch["time_ids"]}).sample
    per = ((pred - batch["target"]) ** 2).mean(dim=(1, 2, 3))
    loss = (batch["weights"] * per).mean()
    loss.backward()
    return loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd-scripts", default=None)
    args = ap.parse_args()
    if args.sd_scripts:
        tm.set_sd_scripts(args.sd_scripts)
    tm.kohya()  # sd-scripts on the path (sgm_names)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = CASE
    unet, te1, te2, tok = load()
    g = torch.Generator().manual_seed(c["seed"])
    mods = te_modules(te1, "lora_te1_", c["te1_layers"]) + te_modules(te2, "lora_te2_",
                                                                       c["te2_layers"])
    mods += list(zip(mfx.sgm_names(unet), [m for _, m in mft.steps_targets(unet)]))
    sides = [Side(n, m, c["rank"], c["alpha"], g) for n, m in mods]
    B, S = len(c["captions"]), c["size"]
    pairs = [ids_pair(tok, cap) for cap in c["captions"]]
    batch = dict(ids1=torch.stack([p[0] for p in pairs]), ids2=torch.stack([p[1] for p in pairs]),
                 noisy=torch.randn(B, 4, S, S, generator=g),
                 target=torch.randn(B, 4, S, S, generator=g),
                 t=torch.tensor(c["timesteps"], dtype=torch.float32),
                 weights=torch.tensor(c["weights"], dtype=torch.float32),
                 time_ids=torch.tensor(c["time_ids"], dtype=torch.float32))
    loss = step(unet, te1, te2, sides, batch).item()
    # flat, as mood's parameter buffers: module by module, down then up
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    ref = {"loss": torch.tensor([loss], dtype=torch.float64),
           "factors": flat([p.detach() for s in sides for p in (s.down, s.up)]).half(),
           "grads": flat([p.grad for s in sides for p in (s.down, s.up)]) * c["grad_scale"]}
    step(unet, te1, te2, sides, batch, pooled_road=False)
    te2 = [s for s in sides if s.name.startswith("lora_te2_")]
    # the last layer's modules get no gradient at all then
    ref["grads_nopool_te2"] = flat([p.grad if p.grad is not None else torch.zeros_like(p)
                                    for s in te2 for p in (s.down, s.up)]) * c["grad_scale"]
    for k in ("ids1", "ids2"):
        ref[k] = batch[k].to(torch.int32)
    for k in ("noisy", "target", "time_ids"):
        ref[k] = batch[k]
    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    os.makedirs(OUT_DIR)
    save_file({k: v.contiguous() for k, v in ref.items()},
              os.path.join(OUT_DIR, "ref.safetensors"))
    import diffusers
    import transformers
    n1 = sum(n.startswith("lora_te1_") for n, _ in mods)
    n2 = sum(n.startswith("lora_te2_") for n, _ in mods)
    meta = dict(CASE, model="../sdxl/tiny-sdxl", te1_modules=n1, te2_modules=n2,
                modules=[[s.name, s.up.shape[0], s.down.shape[1]] for s in sides],
                versions=dict(torch=torch.__version__,
                                              diffusers=diffusers.__version__,
                                              transformers=transformers.__version__,
                                              sd_scripts=tm.SD_SCRIPTS_COMMIT))
    with open(os.path.join(OUT_DIR, "case.json"), "w") as f:
        json.dump(meta, f, indent=1)
    os.chmod(os.path.join(OUT_DIR, "ref.safetensors"), 0o644)
    print("wrote", OUT_DIR, "loss", loss, "modules", len(mods), n1, n2)


if __name__ == "__main__":
    main()
