"""ExactSum is the correctly rounded sum (math.fsum's) whatever the chunking; DARE's
integer keep mask is the float comparison it replaces."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mvc.merge.arrays import NumpyOps
from mvc.merge.exact import ExactSum
from mvc.merge.rng import keep_mask, stream_key, uniforms


def _values(kind: int, rng: np.random.Generator) -> np.ndarray:
    size = int(rng.integers(1, 3000))
    if kind == 0:  # fp32 squares, as the statistics passes feed them
        a = rng.standard_normal(size).astype(np.float32) * 0.02
        return a.astype(np.float64) * a
    if kind == 1:  # every exponent, subnormals included
        return rng.standard_normal(size) * np.exp2(rng.integers(-1074, 1000, size).astype(float))
    if kind == 2:  # near float64's top: the binned fallback
        return np.concatenate([rng.standard_normal(size), -rng.standard_normal(size)]) * 1e300
    return rng.standard_normal(size).astype(np.float32)


@pytest.mark.parametrize("kind", range(4))
def test_exact_sum_is_fsum_under_any_chunking(kind: int) -> None:
    rng = np.random.default_rng(kind)
    for _ in range(20):
        x = _values(kind, rng)
        total = ExactSum()
        for part in np.split(x, np.sort(rng.integers(0, x.size, 3))):
            total.add(part)
        assert total.value() == math.fsum(x.astype(np.float64).tolist())


def test_exact_sum_scratch_and_specials() -> None:
    x = np.array([1e16, 1.0, -1e16, 2.0**-1074])
    kept = x.copy()
    total = ExactSum()
    total.add(x)
    assert np.array_equal(x, kept)  # not scratch: the caller's array is untouched
    total.add(np.array([3.0]), scratch=True)
    assert total.value() == 4.0
    for special in (np.inf, np.nan):
        bad = ExactSum()
        bad.add(np.array([1.0, special]))
        bad.add(np.array([1.0]))
        assert math.isnan(bad.value())


@pytest.mark.parametrize("density", [0.0, 2.0**-53, 0.1, 0.5, 0.9, 1 - 2.0**-53, 1.0])
def test_keep_mask_equals_uniform_below_density(density: float) -> None:
    u = uniforms(stream_key(3, "w", 1), 12345, 5000)
    mask = keep_mask(3, "w", 1, 12345, 5000, density, NumpyOps())
    assert np.array_equal(mask, u < density)
