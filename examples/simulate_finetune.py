"""Stand in for a training run in the docs: nudge some tensors of a model folder in place.

Real users train and `save_pretrained` into `model/`; the user guide's examples run this
instead, so that they finish in a second and can be tested. It rewrites every
`*.safetensors` file under FOLDER (fp32/fp16/bf16 tensors whose name matches --only),
adding seeded noise of size --scale, and keeps the header layout the library would write.

    python examples/simulate_finetune.py model --seed 1 --only "layer.0.*"
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def nudge(path: Path, seed: int, scale: float, pattern: str) -> None:
    rng = np.random.default_rng(seed)
    tensors = load_file(str(path))
    for name, value in tensors.items():
        if value.dtype.kind == "f" and value.size > 1 and fnmatch.fnmatchcase(name, pattern):
            noise = rng.standard_normal(value.shape).astype(np.float32) * scale
            tensors[name] = (value.astype(np.float32) + noise).astype(value.dtype)
    save_file(tensors, str(path), metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1e-3)
    parser.add_argument("--only", default="*", help="glob of tensor names to change")
    args = parser.parse_args()
    for path in sorted(args.folder.rglob("*.safetensors")):
        nudge(path, args.seed, args.scale, args.only)


if __name__ == "__main__":
    main()
