"""LiNeS: scale each layer's task vector by its depth before a task-vector method merges it.

Shallow layers hold general features that fine-tuning should not disturb, deep layers the
task-specific ones (Wang et al., "LiNeS: Post-training Layer Scaling Prevents Forgetting and
Enhances Model Merging", ICLR 2025). With L numbered layers, τ of layer ℓ ∈ [0, L) is
scaled by α + β·ℓ/(L − 1); tensors outside the numbered layers (embeddings, heads, final
norms) get α, as the shallowest layer does. The layer number comes from the tensor name
(``layer.3.``, ``layers.3.``, ``h.3.``, ``block.3.``, ``blocks.3.``), as every Hugging Face
transformer names its blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mvc.merge.declare import Param

LINES = Param(
    "lines",
    float,
    None,
    "LiNeS: scale each layer's task vectors by α + β·depth before merging (ALPHA,BETA).",
    mergekit=None,
    low=0.0,
    optional=True,
    size=2,
    unset="off",
)

_LAYER = re.compile(r"(?:^|\.)(?:layers?|h|blocks?)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The block number in a tensor name, or None outside the numbered blocks."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def count_layers(names: Iterable[str]) -> int:
    """L: one more than the largest block number among ``names`` (0 when none has one)."""
    return max((i + 1 for n in names if (i := layer_index(n)) is not None), default=0)


def lines_scale(lines: tuple[float, float] | None, name: str, n_layers: int) -> float:
    """The factor LiNeS applies to ``name``'s task vectors (1.0 without LiNeS)."""
    if lines is None:
        return 1.0
    alpha, beta = lines
    index = layer_index(name)
    if index is None:
        return alpha
    if index >= n_layers:
        raise RuntimeError(f"{name}: layer {index} but the model was counted with {n_layers}")
    return alpha + beta * (index / (n_layers - 1) if n_layers > 1 else 0.0)
