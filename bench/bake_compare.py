"""bench/bake_compare.py: how far mood's baked checkpoint is from the reference's.

Usage: python bake_compare.py MOOD_OUT REF_OUT BASE
Prints how many tensors the reference changed relative to BASE, in how many mood's output differs
from the reference, and the largest difference (absolute and in fp16 units in the last place).
"""
import sys

import torch
from safetensors import safe_open


def main():
    a, b, base = (safe_open(p, "pt") for p in sys.argv[1:4])
    if set(a.keys()) != set(b.keys()):
        sys.exit("the two outputs have different tensors")
    changed = differ = worst_ulp = 0
    worst = 0.0
    for k in a.keys():
        x, y, z = a.get_tensor(k), b.get_tensor(k), base.get_tensor(k)
        changed += not torch.equal(y, z)
        if not torch.equal(x, y):
            differ += 1
            worst = max(worst, (x.float() - y.float()).abs().max().item())
            if x.dtype == torch.float16:
                ulp = (x.view(torch.int16).int() - y.view(torch.int16).int()).abs().max().item()
                worst_ulp = max(worst_ulp, ulp)
    print("tensors changed by the reference: %d; tensors where mood differs: %d; "
          "max |diff| %.3g (%d fp16 ulp)" % (changed, differ, worst, worst_ulp))


if __name__ == "__main__":
    main()
