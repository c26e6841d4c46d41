"""Data-free SVD merges of each weight matrix: TSV-Merge, Iso-C and Iso-CTS.

Each works on one 2-D tensor at a time, gathered on the host (one tensor's inputs, never the
model), in the compute dtype; tensors that are not matrices take the mean task vector, as
the papers' code does. θ = θ_base + λ·Δ for every tensor.

- ``tsv`` (Gargiulo et al., CVPR 2025, "Task Singular Vectors"): keep each task's top
  k = ⌊r/T⌋ singular triplets (r = min(m, n), T branches), stack the U_i and V_i, replace each
  stack by its nearest orthogonal matrix (polar factor P·Qᵀ of its SVD, "whitening") and
  recombine with the kept singular values: Δ = U⊥·diag(σ)·V⊥ᵀ.
- ``iso_c`` (Marczak et al., ICML 2025, "No Task Left Behind"): Δ = σ̄·U·Vᵀ from the SVD
  U·diag(σ)·Vᵀ of the summed task vectors, σ̄ the mean singular value (a flat spectrum).
- ``iso_cts``: the top ``common``·r directions of the sum (rounded so the rest splits evenly
  over the tasks) plus each task's top directions of its part orthogonal to them, stacked,
  orthogonalised like TSV's, with the flat spectrum σ̄ of the stacked singular values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mvc.merge.declare import LAMBDA, Param
from mvc.merge.lines import LINES
from mvc.merge.strategies.base import Strategy, TensorJob, TensorSpec
from mvc.merge.strategies.whole import Gathered, WholeTensorJob

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

COMMON_SPACE = Param(
    "common",
    float,
    0.8,
    "Iso-CTS: fraction of the spectrum kept as the common subspace.",
    mergekit=None,
    low=0.0,
    high=1.0,
)


def _svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.linalg.svd(x, full_matrices=False)


def nearest_orthogonal(x: np.ndarray) -> np.ndarray:
    """The polar factor P·Qᵀ of x = P·S·Qᵀ: orthonormal columns (rows) closest to x."""
    p, _, qt = _svd(x)
    return p @ qt


def tsv_delta(taus: tuple[np.ndarray, ...]) -> np.ndarray:
    m, n = taus[0].shape
    r = min(m, n)
    k = r // len(taus)
    dtype = taus[0].dtype
    u_all = np.zeros((m, r), dtype)
    s_all = np.zeros(r, dtype)
    v_all = np.zeros((r, n), dtype)
    for i, tau in enumerate(taus):
        u, s, vt = _svd(tau)
        u_all[:, i * k : (i + 1) * k] = u[:, :k]
        s_all[i * k : (i + 1) * k] = s[:k]
        v_all[i * k : (i + 1) * k] = vt[:k]
    return (nearest_orthogonal(u_all) * s_all) @ nearest_orthogonal(v_all)


def iso_c_delta(taus: tuple[np.ndarray, ...]) -> np.ndarray:
    u, s, vt = _svd(sum(taus[1:], taus[0]))
    return (u * s.mean()) @ vt


def iso_cts_delta(taus: tuple[np.ndarray, ...], common: float) -> np.ndarray:
    m, n = taus[0].shape
    r = min(m, n)
    t = len(taus)
    # The paper's rounding, kept within the r directions there are.
    specific_total = min(round((r - int(r * common)) / t) * t, (r // t) * t)
    n_common = r - specific_total
    per_task = specific_total // t
    u, s, vt = _svd(sum(taus[1:], taus[0]))
    u_c, s_c, vt_c = u[:, :n_common], s[:n_common], vt[:n_common]
    us, ss, vs = [], [], []
    for tau in taus:
        specific = tau - u_c @ (u_c.T @ tau)
        u_t, s_t, vt_t = _svd(specific)
        us.append(u_t[:, :per_task])
        ss.append(s_t[:per_task])
        vs.append(vt_t[:per_task])
    u_all = np.concatenate([*us, u_c], axis=1)
    s_all = np.concatenate([*ss, s_c])
    v_all = np.concatenate([*vs, vt_c], axis=0)
    return (nearest_orthogonal(u_all) * s_all.mean()) @ nearest_orthogonal(v_all)


class SvdJob(WholeTensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool, method: str) -> None:
        super().__init__(params, spec, masks)
        self.method = method

    def compute(self, inputs: Gathered) -> np.ndarray:
        taus = inputs.taus()
        assert inputs.base is not None
        if len(self.spec.shape) != 2 or min(self.spec.shape) == 0:
            delta = sum(taus[1:], taus[0]) / len(taus)
        elif self.method == "tsv":
            delta = tsv_delta(taus)
        elif self.method == "iso_c":
            delta = iso_c_delta(taus)
        else:
            delta = iso_cts_delta(taus, self.params.common)
        return self.onto_base(inputs.base, delta)


class Tsv(Strategy):
    name = "tsv"
    summary = "Task Singular Vectors: each task's top singular directions, decorrelated."
    formula = (
        "τ_i ≈ U_i Σ_i V_iᵀ (top r/T); U⊥, V⊥ = polar([U_1…U_T]), polar([V_1…V_T]); "
        "θ = θ_base + λ·U⊥ diag(Σ_1…Σ_T) V⊥ᵀ"
    )
    parameters = (LAMBDA, LINES)

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        return SvdJob(params, spec, masks, self.name)


class IsoC(Tsv):
    name = "iso_c"
    summary = "Iso-C: the summed task vectors with a flat singular spectrum."
    formula = "Σ_i τ_i = U diag(σ) Vᵀ; θ = θ_base + λ·mean(σ)·U Vᵀ"


class IsoCts(Tsv):
    name = "iso_cts"
    summary = "Iso-CTS: common directions of the sum plus each task's own, with a flat spectrum."
    formula = (
        "U_c = top(common·r) of Σ τ_i; U_i = top of (I − U_c U_cᵀ)τ_i; "
        "θ = θ_base + λ·σ̄·polar([U_1…U_T U_c]) polar([V_1…V_T V_c])ᵀ"
    )
    parameters = (LAMBDA, COMMON_SPACE, LINES)
