"""TALL masks: which elements of the merge each parent "owns", 1 bit per element.

m_i = |τ_i| > λ_i·|τ_MTL − τ_i| (strict), with τ_MTL the merged task vector. Lineage stores
them so a parent can be extracted from the merge (θ̂_i = θ_base + m_i ⊙ τ_MTL). Bits are packed
in flat index order, least significant bit first, carrying partial bytes across chunks, so
the packed bytes do not depend on the chunking.
"""

from __future__ import annotations

import numpy as np

from mvc.merge.arrays import Array


def tall_mask(tau: Array, magnitude: Array, mtl: Array, lam: float) -> Array:
    """m = |τ| > λ·|τ_MTL − τ| on either backend; ``magnitude`` is |τ|, already at hand."""
    gap = abs(mtl - tau)
    if lam != 1:
        gap = gap * lam
    return magnitude > gap


def tall_mask_into(tau: Array, magnitude: Array, mtl: Array, lam: float, gap: Array) -> Array:
    """:func:`tall_mask` on numpy with ``gap`` (an array like ``tau``) as its scratch buffer."""
    np.subtract(mtl, tau, out=gap)
    np.abs(gap, out=gap)
    if lam != 1:
        np.multiply(gap, lam, out=gap)
    return np.greater(magnitude, gap)


class MaskPacker:
    """Packs a stream of bool chunks into bytes (LSB first), independent of chunk sizes."""

    def __init__(self) -> None:
        self._carry = np.zeros(0, dtype=bool)
        self._parts: list[bytes] = []

    def feed(self, bits: np.ndarray) -> None:
        new = bits.reshape(-1)
        flat = np.concatenate([self._carry, new]) if len(self._carry) else new
        whole = len(flat) - len(flat) % 8
        self._parts.append(np.packbits(flat[:whole], bitorder="little").tobytes())
        self._carry = flat[whole:]

    def finish(self) -> bytes:
        if len(self._carry):
            self._parts.append(np.packbits(self._carry, bitorder="little").tobytes())
            self._carry = np.zeros(0, dtype=bool)
        return b"".join(self._parts)

