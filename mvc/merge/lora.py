"""Weight-space arithmetic for one LoRA module: ΔW from factors, and factors from ΔW.

A merge of adapters must combine the updates ΔW_i = s_i·B_i·A_i, not the factors: the
product of merged factors carries cross terms B_i·A_j that no branch trained (and both
branches share PEFT's seeded initial A, so a factor-wise three-way merge sees edits that
are not there). Everything here works on one module at a time, in fp32, so memory stays
at a few out × in matrices whatever the model's size.

Writing a ΔW back as an adapter is a truncated SVD, ΔW ≈ U_r·S_r·V_rᵀ, split evenly
(B = U_r·√S_r, A = √S_r·V_rᵀ) so neither factor carries all the scale. Where the rank is
small against the module a randomized range finder with power iterations (Halko,
Martinsson & Tropp 2011) is used, seeded per module so `mvc verify` recomputes the same
bytes; it is exact up to rounding whenever ΔW's rank fits its width (any linear merge of
adapters whose ranks sum to at most rank + oversampling), else near-optimal. Otherwise
the exact SVD. Either way the relative error ‖ΔW − B·A‖_F / ‖ΔW‖_F is measured, not estimated.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from mvc.errors import MvcError
from mvc.merge.adapter_plan import SVD_METHODS

OVERSAMPLE = 10
POWER_ITERATIONS = 4


@dataclass(frozen=True)
class Factors:
    """A module's factors as written back: ΔW ≈ B·A (scale 1)."""

    a: torch.Tensor  # r × in
    b: torch.Tensor  # out × r
    method: str  # exact | randomized | cat
    error: float  # relative Frobenius error of B·A against the ΔW it stands for

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


def delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """ΔW = s·B·A in fp32 (out × in), in the adapter's orientation (before fan_in_fan_out)."""
    return (b.float() @ a.float()) * scale


def relative_error(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    norm = torch.linalg.matrix_norm(target.double()).item()
    diff = torch.linalg.matrix_norm(target.double() - b.double() @ a.double()).item()
    return diff / norm if norm else diff


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _randomized(target: torch.Tensor, rank: int, name: str) -> tuple[torch.Tensor, ...]:
    rows, cols = target.shape
    width = min(rank + OVERSAMPLE, rows, cols)
    generator = torch.Generator().manual_seed(_seed(name))
    omega = torch.randn(cols, width, generator=generator, dtype=target.dtype)
    q, _ = torch.linalg.qr(target @ omega)
    for _ in range(POWER_ITERATIONS):
        z, _ = torch.linalg.qr(target.T @ q)
        q, _ = torch.linalg.qr(target @ z)
    u_small, s, vh = torch.linalg.svd(q.T @ target, full_matrices=False)
    return q @ u_small, s, vh


def check_rank(rank: int, shape: tuple[int, int], name: str) -> None:
    """A rank-r factorisation needs r ≤ min(out, in)."""
    if rank > min(shape):
        raise MvcError(
            f"rank {rank} is larger than module {name} ({shape[0]} × {shape[1]}) allows",
            hint=f"choose --adapter-rank/--rank of at most {min(shape)}",
        )


def factorize(target: torch.Tensor, rank: int, name: str, method: str = "auto") -> Factors:
    """Rank-``rank`` factors of ``target`` (out × in, fp32) by truncated SVD."""
    if method not in SVD_METHODS:
        raise MvcError(f"unknown SVD method {method!r}", hint=f"use {', '.join(SVD_METHODS)}")
    rows, cols = target.shape
    check_rank(rank, (rows, cols), name)
    if method == "auto":
        # The range finder costs O(rows·cols·(rank + oversampling)) per pass against the
        # exact SVD's O(rows·cols·min(rows, cols)); where it is not much cheaper, be exact.
        method = "randomized" if 4 * (rank + OVERSAMPLE) <= min(rows, cols) else "exact"
    if method == "exact":
        u, s, vh = torch.linalg.svd(target, full_matrices=False)
    else:
        u, s, vh = _randomized(target, rank, name)
    root = s[:rank].sqrt()
    b = (u[:, :rank] * root).contiguous()
    a = (root[:, None] * vh[:rank]).contiguous()
    return Factors(a, b, method, relative_error(target, a, b))


def concatenate(
    parts: list[tuple[float, torch.Tensor, torch.Tensor, float]], target_error_of: torch.Tensor
) -> Factors:
    """Exact factors of Σ c_i·s_i·B_i·A_i: A stacked, B side by side with c_i·s_i folded in
    (terms with c_i = 0 or a zero B, such as PEFT's initial adapter, add no rank).

    ``parts`` holds (c_i, A_i, B_i, s_i); ``target_error_of`` is the ΔW the strategy
    computed, against which the error is measured (zero up to rounding for linear rules).
    """
    kept = [(c, a, b, s) for c, a, b, s in parts if c != 0 and bool(b.any())]  # zero B: no ΔW
    if not kept:
        raise MvcError("nothing to concatenate: every input update is zero")
    a = torch.cat([p[1].float() for p in kept], dim=0)
    b = torch.cat([p[2].float() * (p[0] * p[3]) for p in kept], dim=1)
    return Factors(a, b, "cat", relative_error(target_error_of, a, b))
