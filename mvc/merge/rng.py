"""DARE's random drop, reproducible from (seed, tensor name, branch) alone.

A stateful generator would make the mask depend on chunk order, chunk size and device.
Instead each element's uniform draw is a counter-based hash (splitmix64) of its flat index
under a key derived from the seed, the tensor name and the branch index, so any chunk can be
generated on its own and gives the same bits anywhere.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from mvc.merge.arrays import Array, ArrayOps

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (a bijection on uint64 with good avalanche)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, name: str, branch: int) -> int:
    """The 64-bit key of one (seed, tensor, branch) stream."""
    digest = hashlib.blake2b(
        f"{seed}\0{branch}\0{name}".encode(), digest_size=8, person=b"mvc-dare"
    ).digest()
    return int.from_bytes(digest, "little")


def _bits(key: int, start: int, count: int) -> np.ndarray:
    """splitmix64 of each flat index in [start, start+count), in place on one buffer."""
    z = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    scratch = np.empty_like(z)
    with np.errstate(over="ignore"):
        np.multiply(z, _GOLDEN, out=z)
        np.add(z, np.uint64(key), out=z)
        for shift, factor in ((30, _M1), (27, _M2), (31, None)):
            np.right_shift(z, np.uint64(shift), out=scratch)
            np.bitwise_xor(z, scratch, out=z)
            if factor is not None:
                np.multiply(z, factor, out=z)
    return z


def uniforms(key: int, start: int, count: int) -> np.ndarray:
    """float64 uniforms in [0, 1) with 53 random bits for flat indices [start, start+count)."""
    bits = _bits(key, start, count)
    np.right_shift(bits, np.uint64(11), out=bits)
    u = bits.astype(np.float64)
    np.multiply(u, 1.0 / (1 << 53), out=u)
    return u


def keep_mask(
    seed: int,
    name: str,
    branch: int,
    start: int,
    count: int,
    density: float,
    ops: ArrayOps,
) -> Array:
    """Bool mask, True where the element survives the drop (probability ``density``).

    u = m·2**-53 (m = bits >> 11, exact) is below density d exactly when m < ⌈d·2**53⌉,
    that is bits < ⌈d·2**53⌉·2**11: the same mask as ``uniforms(...) < d``, on integers.
    """
    threshold = math.ceil(math.ldexp(density, 53))
    if threshold >= 1 << 53:
        return ops.from_numpy(np.ones(count, dtype=bool))
    bits = _bits(stream_key(seed, name, branch), start, count)
    return ops.from_numpy(bits < np.uint64(threshold << 11))
