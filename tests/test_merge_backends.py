"""The numpy (CPU) and torch (GPU) backends compute the same merge, bit for bit.

A GPU is not available here, so the torch backend runs on torch's CPU device: that is the
code path `--device cuda` takes, minus the device. The numpy backend is what `--device cpu`
and `auto` without a GPU run, and what the oracle tests check against mergekit and PEFT.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from merge_in_memory import merge_tensor, merge_tensors

from mvc.merge.arrays import NumpyOps, TorchOps
from mvc.merge.params import MergeParams
from mvc.merge.strategies import get_strategy

STRATEGIES = [
    ("ties", MergeParams(density=0.3, weights=(0.5, 1.0, 2.0), lambda_=0.9)),
    ("ties", MergeParams(density=0.2)),
    ("ties", MergeParams(density=0.3, preset="peft")),
    ("ties", MergeParams(density=0.4, preset="mergekit")),
    ("consensus", MergeParams(on="ties", density=0.5)),
    ("consensus", MergeParams(k=2, tall_lambdas=(0.4, 0.6, 1.0))),
    ("task_arithmetic", MergeParams(weights=(0.3, 0.3, 0.4))),
    ("task_arithmetic", MergeParams()),
    ("linear", MergeParams(weights=(1.0, 2.0, 0.5))),
    ("dare_ties", MergeParams(density=0.4, seed=5, preset="mergekit")),
    ("dare_ties", MergeParams(density=0.6, seed=1)),
    ("dare_linear", MergeParams(density=0.4, seed=5, preset="peft")),
    ("breadcrumbs", MergeParams(density=0.5, gamma=0.1)),
    ("slerp", MergeParams(t=0.3)),
    ("ours", MergeParams()),
    ("theirs", MergeParams()),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS.get(t.dtype, torch.int16))


def _model(n: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (37, 11)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    thetas = []
    for _ in range(n):
        t = base + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)
        untouched = torch.rand(shape, generator=g) < 0.3
        thetas.append(torch.where(untouched, base, t).to(dtype))
    return base.to(dtype), thetas


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "params"), STRATEGIES, ids=lambda x: str(x)[:48])
def test_numpy_and_torch_backends_agree_bit_for_bit(name, params, dtype):
    n = 2 if name in ("slerp", "theirs") else 3
    base, thetas = _model(n, dtype)
    results = [
        merge_tensor(
            get_strategy(name), params, base, thetas, name="w", chunk_rows=rows, device=ops
        )
        for ops in (NumpyOps(), TorchOps("cpu"))
        for rows in (5, None)
    ]
    reference, stats = results[0]
    assert reference.dtype == dtype
    for merged, other in results[1:]:
        assert torch.equal(_bits(merged), _bits(reference))
        assert other == stats


def test_paper_preset_agrees_across_backends():
    base, thetas = _model(3, torch.float32, seed=3)
    params = MergeParams(density=0.2, preset="paper")
    runs = [
        merge_tensors(
            get_strategy("ties"), params, {"w": base}, [{"w": t} for t in thetas], device=ops
        )
        for ops in (NumpyOps(), TorchOps("cpu"))
    ]
    assert torch.equal(runs[0][0]["w"], runs[1][0]["w"]) and runs[0][1] == runs[1][1]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64),
)
def test_bf16_rounding_matches_torch(values):
    """numpy has no bf16: the numpy backend rounds fp32 to bf16 bits itself, as torch does."""
    x = np.array(values, dtype=np.float32)
    ours = NumpyOps().store(x, "BF16")
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)
    widened = NumpyOps().compute(ours, "BF16")
    assert np.array_equal(
        widened, torch.from_numpy(theirs.view(np.int16)).view(torch.bfloat16).float().numpy()
    )


def test_bf16_nan_rounds_to_a_nan():
    x = np.array([np.nan, -np.nan, np.inf], dtype=np.float32)
    out = NumpyOps().compute(NumpyOps().store(x, "BF16"), "BF16")
    assert np.isnan(out[:2]).all() and out[2] == np.inf


FUSED = [  # TIES's numpy fast path (strategies/ties_numpy.py) for each of its branches
    MergeParams(density=0.3),
    MergeParams(density=0.3, weights=(0.5, 1.0, 2.0), lambda_=0.9),
    MergeParams(density=0.3, weights=(1.0, -1.0, 1.0)),  # weights summing to 0 where 2 agree
    MergeParams(density=0.4, normalize=False),
    MergeParams(density=0.4, preset="mergekit"),
    MergeParams(density=0.4, tall_lambdas=(0.4, 1.0, 0.7)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("params", FUSED, ids=lambda p: str(p)[:60])
def test_fused_ties_matches_the_generic_step(params, n, dtype):
    """numpy's fused TIES gives the generic step's bits (run by torch), statistics and
    TALL masks alike, with infinities and ties among the inputs."""
    sized = [v for v in (params.weights, params.tall_lambdas) if isinstance(v, tuple)]
    if any(len(v) != n for v in sized):
        pytest.skip("per-branch values for another branch count")
    base, thetas = _model(n, dtype, seed=n)
    thetas[0][3, :4] = float("inf")
    thetas[-1][5, :2] = float("-inf")
    thetas[-1][7] = thetas[0][7]  # identical edits: ties in the election and at the trim
    results = [
        merge_tensor(
            get_strategy("ties"), params, base, thetas, name="w", chunk_rows=rows, device=ops,
            masks=True,
        )
        for ops in (NumpyOps(), TorchOps("cpu"))
        for rows in (4, None)
    ]
    reference, stats = results[-1]  # torch, one chunk: the generic step
    assert stats.masks is not None
    for merged, other in results[:-1]:
        assert torch.equal(_bits(merged), _bits(reference))
        assert other == stats
