"""Stand in for LoRA training in the docs: save a PEFT LoRA adapter for a model folder.

Real users train with PEFT and `save_pretrained` into `adapter/`; the docs run this
instead so that they finish in seconds. It builds the adapter with PEFT itself (r, alpha
and targets as given), from PEFT's seeded initial lora_A, then sets lora_B (zero at init)
to seeded noise, as a short training run would leave it.

    python examples/simulate_lora.py model adapter --seed 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--targets", default="query,value,dense")
    args = parser.parse_args()
    torch.manual_seed(0)  # every branch starts from the same lora_A, as with a fixed seed
    config = LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=args.targets.split(","))
    model = get_peft_model(AutoModel.from_pretrained(args.model), config)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(args.out)


if __name__ == "__main__":
    main()
