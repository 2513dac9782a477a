"""Reference fixtures for mood's CLIP text encoder (tests/fixtures/clip/).

Two tiny random transformers CLIPTextModel (hidden 32, 2 layers, 4 heads, intermediate 64,
vocab 1000, 77 positions, eos_token_id 999), seeded:

  * quick_gelu.safetensors: activation quick_gelu (SD1 ViT-L), bfloat16, keys with the
    `text_model.` prefix (the spelling of Hugging Face checkpoints and transformers < 5);
  * gelu.safetensors: activation gelu (OpenCLIP ViT-H/bigG), float16, keys without the prefix
    (transformers 5 state_dict).
Weights are rounded to the stored dtype before the float32 reference runs, so the reference
sees exactly what mood reads (half-precision storage keeps the fixtures under 400 KB).

For each model, <name>_ref.safetensors holds `ids` (I32, batch x 77: start 0... EOS 999 at
different positions, padding with 999 or 0), and the float32 reference outputs of the model in
eval mode: `last` = last_hidden_state, `skip2` = final_layer_norm(hidden_states[-2]) (A1111 clip
skip 2 = diffusers clip_skip=1), `pooled` = pooler_output (last_hidden_state at the first
position of the highest id, which is transformers' rule for eos_token_id 999 here too); for the
gelu model also `skip2_raw` = hidden_states[-2] without the final norm (SDXL's conditioning).

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_clip.py
Made with torch 2.15.0, transformers 5.24.0, safetensors (save_file).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

OUT = "tests/fixtures/clip"
T = 77


def make_ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    rows = []
    for eos_at, pad in ((5, 999), (40, 0), (76, 999)):
        r = torch.randint(1, 998, (T,), generator=g)
        r[0] = 998  # start token stand-in (below the EOS id)
        r[eos_at] = 999
        r[eos_at + 1 :] = pad
        rows.append(r)
    return torch.stack(rows).to(torch.int32)


def build(act: str, seed: int, dt: torch.dtype, prefix: str, name: str, ids: torch.Tensor) -> None:
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         hidden_act=act, layer_norm_eps=1e-5, eos_token_id=999, bos_token_id=998,
                         pad_token_id=0)
    m = CLIPTextModel(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():  # non-trivial norms and biases
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
        for p in m.parameters():
            p.copy_(p.to(dt).to(torch.float32))
    sd = m.state_dict()
    keys = [k.removeprefix("text_model.") for k in sd]
    tensors = {prefix + k: v.detach().to(dt).contiguous() for k, v in zip(keys, sd.values())}
    tensors.pop(prefix + "embeddings.position_ids", None)
    save_file(tensors, f"{OUT}/{name}.safetensors")
    with torch.no_grad():
        o = m(input_ids=ids.long(), output_hidden_states=True)
        fln = m.text_model.final_layer_norm if hasattr(m, "text_model") else m.final_layer_norm
        skip2 = fln(o.hidden_states[-2])
    ref = {"ids": ids, "last": o.last_hidden_state.contiguous(), "skip2": skip2.contiguous(),
           "pooled": o.pooler_output.contiguous()}
    if act == "gelu":
        ref["skip2_raw"] = o.hidden_states[-2].contiguous()
    save_file(ref, f"{OUT}/{name}_ref.safetensors")
    for f in (name, name + "_ref"):
        os.chmod(f"{OUT}/{f}.safetensors", 0o644)
    print(name, sorted(tensors)[:3], o.last_hidden_state.abs().max().item())


def main() -> None:
    ids = make_ids()
    build("quick_gelu", 1, torch.bfloat16, "text_model.", "quick_gelu", ids)
    build("gelu", 2, torch.float16, "", "gelu", ids)


if __name__ == "__main__":
    main()
