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

OpenCLIP-named encoders of the tiny single-file checkpoints (tests/fixtures/bases/, built by
tools/tiny_models.py with kohya's converters; hidden 24, 2 layers, 3 heads, 8 positions, gelu):
sd2_te_ref.safetensors (SD2's encoder, `cond_stage_model.model.`) and sdxl_te2_ref.safetensors
(SDXL's second, `conditioner.embedders.1.model.`), from the transformers CLIPTextModel /
CLIPTextModelWithProjection of tiny_models.make_models (the weights of the base files). They
hold `ids` (I32, 2 x 8), `last`, `skip2`, `skip2_raw`, `pooled` as above and `projected` =
pooled @ P with P the base file's OpenCLIP `text_projection` read as OpenCLIP / SGM use it
(stored (hidden, proj), x @ P; diffusers' and ComfyUI's converters transpose it into the Hugging
Face Linear weight). For SD2, P is a random extra of the base. For SDXL te2, kohya's
convert_text_encoder_2_state_dict_to_sdxl (sd-scripts 48d368fa) copies text_projection.weight
without transposing it, so the file's P is the transformers weight W itself and transformers'
text_embeds (pooled @ W^T, also stored, as `text_embeds`) differ from the file's OpenCLIP reading;
`projected` follows the file as real SDXL checkpoints are read. These models
have eos_token_id 1, so the pooler is switched to the argmax rule (eos_token_id = 2, transformers'
legacy path), which is OpenCLIP's and mood's pooling (the highest id is the end token in real
vocabularies).

Run from the repository root:  tools/.venv/bin/python tools/make_fixtures_clip.py
(needs kohya sd-scripts for tiny_models: --sd-scripts or $MOOD_SD_SCRIPTS, default /tmp/sd-scripts)
Made with torch 2.15.0, transformers 5.24.0, safetensors (save_file).
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import load_file, save_file
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


def build_base_te(family: str, index: int, prefix: str, name: str) -> None:
    """References for the text encoder `index` of bases/<family>_base.safetensors."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tiny_models as tm

    te = tm.make_models(family)[f"te{index}"]
    tm_inner = te.text_model if hasattr(te, "text_model") else te
    tm_inner.eos_token_id = 2  # argmax pooling (OpenCLIP's rule), see the top of this file
    ids = torch.tensor([[0, 17, 5, 31, 9, 1, 1, 1], [0, 3, 30, 12, 25, 8, 2, 14]], dtype=torch.int32)
    with torch.no_grad():
        o = te(input_ids=ids.long(), output_hidden_states=True)
        fln = tm_inner.final_layer_norm
        pooled = o.last_hidden_state[torch.arange(2), ids.long().argmax(-1)]
        if index == 1:
            assert torch.equal(o.pooler_output, pooled)
        p = load_file(tm.base_path(family))[prefix + "text_projection"]  # OpenCLIP (hidden, proj)
        proj = pooled @ p
    ref = {"ids": ids, "last": o.last_hidden_state.contiguous(),
           "skip2": fln(o.hidden_states[-2]).contiguous(),
           "skip2_raw": o.hidden_states[-2].contiguous(), "pooled": pooled.contiguous(),
           "projected": proj.contiguous()}
    if index == 2:  # CLIPTextModelWithProjection: text_embeds = text_projection(pooled)
        ref["text_embeds"] = o.text_embeds.contiguous()
        assert torch.allclose(o.text_embeds, pooled @ te.text_projection.weight.T)
    save_file(ref, f"{OUT}/{name}.safetensors")
    os.chmod(f"{OUT}/{name}.safetensors", 0o644)
    print(name, {k: tuple(v.shape) for k, v in ref.items()})


def main() -> None:
    ids = make_ids()
    build("quick_gelu", 1, torch.bfloat16, "text_model.", "quick_gelu", ids)
    build("gelu", 2, torch.float16, "", "gelu", ids)
    build_base_te("sd2", 1, "cond_stage_model.model.", "sd2_te_ref")
    build_base_te("sdxl", 2, "conditioner.embedders.1.model.", "sdxl_te2_ref")


if __name__ == "__main__":
    main()
