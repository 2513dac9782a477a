"""bench/make_sdxl_lora.py: writes a kohya-named SDXL LoRA of about 2,000 tensors (rank 4, fp16,
random values) for bench/inspect.sh. Module names and shapes are those of the real SDXL UNet
(LDM naming: input_blocks_4/5 at 640 channels with 2 transformer blocks, input_blocks_7/8,
middle_block and output_blocks_0..2 at 1280 channels with 10, output_blocks_3..5 at 640 with 2;
cross-attention context 2048) and text encoders (te1: CLIP ViT-L, 12 layers of 768; te2:
OpenCLIP ViT-bigG, 32 layers of 1280), as kohya sd-scripts networks/lora.py names them.

Usage: tools/.venv/bin/python bench/make_sdxl_lora.py OUT.safetensors [N_TENSORS [RANK]]
(rank 4 gives about 20 MB; rank 30, about 145 MB, is the size of a typical shared SDXL LoRA.)
"""
import sys

import torch
from safetensors.torch import save_file

RANK = int(sys.argv[3]) if len(sys.argv) > 3 else 4


def unet_modules():
    blocks = [("input_blocks_4_1", 640, 2), ("input_blocks_5_1", 640, 2),
              ("input_blocks_7_1", 1280, 10), ("input_blocks_8_1", 1280, 10),
              ("middle_block_1", 1280, 10)]
    blocks += [("output_blocks_%d_1" % i, 1280, 10) for i in range(3)]
    blocks += [("output_blocks_%d_1" % i, 640, 2) for i in range(3, 6)]
    for name, dim, depth in blocks:
        base = "lora_unet_" + name
        yield base + "_proj_in", dim, dim
        for b in range(depth):
            tb = "%s_transformer_blocks_%d" % (base, b)
            for attn, ctx in (("attn1", dim), ("attn2", 2048)):
                yield "%s_%s_to_q" % (tb, attn), dim, dim
                yield "%s_%s_to_k" % (tb, attn), ctx, dim
                yield "%s_%s_to_v" % (tb, attn), ctx, dim
                yield "%s_%s_to_out_0" % (tb, attn), dim, dim
            yield tb + "_ff_net_0_proj", dim, 8 * dim
            yield tb + "_ff_net_2", 4 * dim, dim
        yield base + "_proj_out", dim, dim


def te_modules(prefix, layers, dim):
    for i in range(layers):
        base = "%s_text_model_encoder_layers_%d" % (prefix, i)
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield "%s_self_attn_%s" % (base, p), dim, dim
        yield base + "_mlp_fc1", dim, 4 * dim
        yield base + "_mlp_fc2", 4 * dim, dim


def main():
    out = sys.argv[1]
    want = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    g = torch.Generator().manual_seed(0)
    mods = list(te_modules("lora_te1", 12, 768)) + list(te_modules("lora_te2", 32, 1280))
    mods += list(unet_modules())
    tensors = {}
    for name, fan_in, fan_out in mods[: want // 3]:
        tensors[name + ".lora_down.weight"] = (torch.randn(RANK, fan_in, generator=g) * 0.01).half()
        tensors[name + ".lora_up.weight"] = (torch.randn(fan_out, RANK, generator=g) * 0.01).half()
        tensors[name + ".alpha"] = torch.tensor(float(RANK)).half()
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK),
            "ss_network_alpha": str(RANK), "ss_base_model_version": "sdxl_base_v1-0",
            "ss_output_name": "bench_sdxl", "ss_tag_frequency": '{"1_style": {"ink wash": 5}}'}
    save_file(tensors, out, metadata=meta)
    print("%s: %d tensors" % (out, len(tensors)))


if __name__ == "__main__":
    main()
