"""TIES's combine step on numpy in few passes: the CPU's fast path, bit-identical to the generic one.

The generic step (:meth:`TiesJob.step` and :meth:`TensorJob.combine`) is written once for
numpy and torch, and each operator there allocates a temporary and walks the window
again: about 90 passes over every window for two branches, each at the speed of memory,
since a window's fp32 arrays overflow the cache. Profiled on a 1.1B bf16 LLaMA, the
election alone took more time than reading and decoding the inputs. Here the same
arithmetic runs with ``out=`` buffers and without the steps that change no bit: the
election's ``v·(±1) > 0`` becomes ``v > 0`` or ``v < 0`` picked by the elected sign (the
same truth values, NaN included), unit weights are not multiplied, the weights' sum
is the count of agreeing branches when every weight is 1, and the statistics come from
masks already at hand (the sign masks of the election give the conflicts). Every
floating-point operation that remains is the generic one, in the same order, so the bytes
are the same; ``tests/test_merge_backends.py`` compares this path (numpy) with the
generic one (torch) bit for bit, statistics and masks included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mvc.merge.masks import tall_mask_into
from mvc.merge.select import magnitude_keys

if TYPE_CHECKING:
    from mvc.merge.strategies.base import Chunk
    from mvc.merge.strategies.ties import TiesJob


def combine(job: TiesJob, chunk: Chunk) -> np.ndarray:
    """The merged rows of ``chunk`` (storage dtype, the chunk's shape); updates ``job``'s
    statistics and TALL masks exactly as :meth:`TensorJob.combine` does."""
    ops, spec, stats = chunk.ops, job.spec, job._stats
    taus, magnitudes = chunk.taus(), chunk.magnitudes()
    n = len(taus)
    weights = job.weights
    unit = all(w == 1 for w in weights)
    hats = []
    for i, (tau, mag, cut) in enumerate(zip(taus, magnitudes, job.selection.cuts, strict=True)):
        stats.changed[i] += int(np.count_nonzero(tau))
        hat = np.multiply(tau, cut.apply(ops, magnitude_keys(ops, mag), chunk.flat_start))
        stats.kept[i] += int(np.count_nonzero(hat))
        hats.append(hat)
    voters = [h if w == 1 else h * w for h, w in zip(hats, weights, strict=True)]
    total = voters[0] if n == 1 else np.add(voters[0], voters[1])
    for v in voters[2:]:
        np.add(total, v, out=total)
    # The elected sign is − where ``total >= 0`` fails (NaN included).
    elected_minus = np.greater_equal(total, 0)
    np.logical_not(elected_minus, out=elected_minus)
    above = [np.greater(v, 0) for v in voters]
    below = [np.less(v, 0) for v in voters]
    agree = []
    for up, down in zip(above, below, strict=True):
        a = up.copy()
        np.copyto(a, down, where=elected_minus)
        agree.append(a)
    for i, a in enumerate(agree):
        stats.contributed[i] += int(np.count_nonzero(a))
    if n > 1:
        signs_up, signs_down = (above, below) if unit else _signs(hats)
        stats.conflicts += _conflicts(signs_up, signs_down)
    # Σ v_i·m_i over the agreeing: the products with the 0/1 masks, as generic (inf·0 = NaN).
    delta = np.multiply(voters[0], agree[0], out=total if n > 1 else None)
    for v, a in zip(voters[1:], agree[1:], strict=True):
        delta += np.multiply(v, a)
    sole = None
    if job.normalize:
        exact = job.preset is None and job.params.lambda_ == 1  # sole contributors copied
        one = None
        if unit:  # Σ w_i·m_i is the count of agreeing branches
            den = agree[0].astype(delta.dtype)
            for a in agree[1:]:
                np.add(den, a, out=den)
            if exact:
                one = np.equal(den, 1)
        else:
            den = np.multiply(agree[0], weights[0], dtype=delta.dtype)
            for a, w in zip(agree[1:], weights[1:], strict=True):
                den += np.multiply(a, w, dtype=delta.dtype)
            if exact:
                count = agree[0].astype(np.uint8)
                for a in agree[1:]:
                    count += a
                one = np.equal(count, 1)
        np.add(den, np.equal(den, 0), out=den)  # 0 -> 1 (where nobody agrees, num is 0 too)
        np.divide(delta, den, out=delta)
        if one is not None:
            sole = [np.logical_and(a, one) for a in agree]
    lam = job.params.lambda_
    if lam != 1:
        np.multiply(delta, lam, out=delta)
    merged = np.add(chunk.base_c, delta, out=delta)
    out = ops.store(merged, spec.dtype)
    if sole is not None:
        for s, theta in zip(sole, chunk.thetas, strict=True):
            np.copyto(out, theta.reshape(-1), where=s)
    if job._packers is not None:
        mtl = ops.compute(out, spec.dtype)
        mtl = np.subtract(mtl, chunk.base_c, out=mtl if mtl is not out else None)
        gap = np.empty_like(mtl)
        for packer, tau, mag, lam_i in zip(
            job._packers, taus, magnitudes, job._lambdas, strict=True
        ):
            packer.feed(tall_mask_into(tau, mag, mtl, lam_i, gap))
    shape = (chunk.n_rows, *spec.shape[1:]) if spec.shape else ()
    return out.reshape(shape)


def _signs(hats: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [np.greater(h, 0) for h in hats], [np.less(h, 0) for h in hats]


def _conflicts(up: list[np.ndarray], down: list[np.ndarray]) -> int:
    """Elements where some surviving edit is positive and another negative."""
    any_up = up[0].copy()
    any_down = down[0].copy()
    for u, d in zip(up[1:], down[1:], strict=True):
        np.logical_or(any_up, u, out=any_up)
        np.logical_or(any_down, d, out=any_down)
    return int(np.count_nonzero(np.logical_and(any_up, any_down, out=any_up)))
