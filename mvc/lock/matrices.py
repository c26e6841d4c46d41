"""Per-head MergeLock matrices: M = Q·diag(s), Q orthogonal, s log-uniform in [0.5, 2].

Why this shape: a Gaussian M works in exact arithmetic but its condition number makes a
bf16 cast visibly lossy; an orthogonal factor keeps norms, and a bounded diagonal keeps the
condition number at most 4 while still moving every weight by a large relative amount. The
factored form also gives exact inverses (M^-1 = diag(1/s)·Qᵀ) without a numerical solve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvc.lock.keys import SCHEME, derive

SCALE_LOW = 0.5
SCALE_HIGH = 2.0


@dataclass(frozen=True)
class HeadMatrix:
    """M = rotation @ diag(scale), in fp64."""

    rotation: np.ndarray
    scale: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        return self.rotation * self.scale[None, :]

    @property
    def inverse(self) -> np.ndarray:
        return self.rotation.T / self.scale[:, None]

    @property
    def inverse_t(self) -> np.ndarray:
        """M^{-T} = Q·diag(1/s): what keys get so that (M q)ᵀ(M^{-T} k) = qᵀk."""
        return self.rotation / self.scale[None, :]


def generator(key: bytes, info: str) -> np.random.Generator:
    """A numpy generator seeded by HKDF(key, info): one independent stream per purpose."""
    seed = int.from_bytes(derive(key, f"{SCHEME}/{info}"), "little")
    return np.random.Generator(np.random.PCG64(seed))


def _generator(key: bytes, family: str, layer: int, head: int, role: str) -> np.random.Generator:
    return generator(key, f"family={family}/layer={layer}/kv_head={head}/role={role}")


def log_uniform(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(SCALE_LOW), math.log(SCALE_HIGH), n))


def dense_matrix(rng: np.random.Generator, dim: int) -> HeadMatrix:
    """Haar-random orthogonal (QR of a Gaussian with the sign fix) times a log-uniform diagonal."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return HeadMatrix(q * signs[None, :], log_uniform(rng, dim))


def rope_matrix(rng: np.random.Generator, dim: int) -> HeadMatrix:
    """Block-diagonal r·Rot(φ) on the pairs (i, i + dim/2) that HF's rotate_half rotates together.

    RoPE applies a 2×2 rotation to each such pair; scaled rotations of the same plane
    commute with it, so Mᵀ R_θ M^{-T} = R_θ for every position and the attention scores
    survive the lock.
    """
    if dim % 2:
        raise ValueError(f"RoPE head dimension must be even, got {dim}")
    half = dim // 2
    phi = rng.uniform(0.0, 2.0 * math.pi, half)
    radius = log_uniform(rng, half)
    rotation = np.zeros((dim, dim))
    idx = np.arange(half)
    rotation[idx, idx] = np.cos(phi)
    rotation[idx, idx + half] = -np.sin(phi)
    rotation[idx + half, idx] = np.sin(phi)
    rotation[idx + half, idx + half] = np.cos(phi)
    return HeadMatrix(rotation, np.concatenate([radius, radius]))


def head_matrices(
    key: bytes, family: str, layer: int, kv_head: int, dim: int, rope: bool
) -> tuple[HeadMatrix, HeadMatrix]:
    """(A, B) for one KV head: A acts on queries/keys, B on values/output columns."""
    a_rng = _generator(key, family, layer, kv_head, "qk")
    b_rng = _generator(key, family, layer, kv_head, "vo")
    a = rope_matrix(a_rng, dim) if rope else dense_matrix(a_rng, dim)
    return a, dense_matrix(b_rng, dim)
