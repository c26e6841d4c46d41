"""Strategy semantics and the chunked protocol's guarantees (no external oracles here)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from merge_in_memory import merge_tensor, merge_tensors, unpack_mask

from mvc.errors import MvcError
from mvc.merge.arrays import NumpyOps, TorchOps
from mvc.merge.device import compute_dtype, resolve_device
from mvc.merge.exact import ExactSum
from mvc.merge.masks import MaskPacker
from mvc.merge.params import MergeParams
from mvc.merge.rng import keep_mask
from mvc.merge.select import RadixQuery, RankQuery, Request, Selection
from mvc.merge.strategies import STRATEGY_NAMES, get_strategy
from mvc.merge.strategies.base import Chunk, TensorSpec


def _model(shape=(23, 9), n=3, dtype=torch.float32, seed=0, untouched=0.3):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    thetas = []
    for _ in range(n):
        t = base + 0.05 * torch.randn(shape, generator=g)
        thetas.append(torch.where(torch.rand(shape, generator=g) < untouched, base, t).to(dtype))
    return base.to(dtype), thetas


STRATEGY_PARAMS = [
    ("ties", MergeParams(density=0.3, weights=(0.5, 1.0, 2.0), lambda_=0.9)),
    ("ties", MergeParams(density=0.3, preset="peft")),
    ("consensus", MergeParams(on="ties", density=0.5)),
    ("consensus", MergeParams(k=2)),
    ("task_arithmetic", MergeParams(weights=(0.3, 0.3, 0.4))),
    ("linear", MergeParams()),
    ("dare_ties", MergeParams(density=0.4, seed=5, preset="mergekit")),
    ("dare_linear", MergeParams(density=0.4, seed=5)),
    ("breadcrumbs", MergeParams(density=0.5, gamma=0.1)),
    ("slerp", MergeParams(t=0.3)),
    ("ours", MergeParams()),
    ("theirs", MergeParams()),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "params"), STRATEGY_PARAMS, ids=lambda x: str(x)[:40])
def test_result_independent_of_chunk_size(name, params, dtype):
    n = 2 if name in ("slerp", "theirs") else 3
    base, thetas = _model(n=n, dtype=dtype)
    results = [
        merge_tensor(
            get_strategy(name), params, base, thetas, name="w", chunk_rows=rows, masks=True
        )
        for rows in (1, 7, None)
    ]
    for merged, stats in results[1:]:
        assert torch.equal(
            merged.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
            results[0][0].view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
        )
        assert stats == results[0][1]
    assert results[0][0].dtype == dtype


def test_paper_preset_independent_of_chunk_size():
    base, thetas = _model()
    params = MergeParams(density=0.2, preset="paper")
    a = merge_tensors(get_strategy("ties"), params, {"w": base}, [{"w": t} for t in thetas])
    b = merge_tensors(
        get_strategy("ties"), params, {"w": base}, [{"w": t} for t in thetas], chunk_rows=2
    )
    assert torch.equal(a[0]["w"], b[0]["w"]) and a[1] == b[1]


@pytest.mark.parametrize("rows", [1, 7, None])
def test_trim_keeps_exactly_k_with_ties_at_threshold(rows):
    # bf16 deltas take few distinct values, so many elements tie at the threshold.
    base = torch.zeros(40, 5, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    theta = (torch.randint(-3, 4, (40, 5), generator=g) * 0.25).to(torch.bfloat16)
    for density in (0.1, 0.33, 0.5, 0.97):
        merged, stats = merge_tensor(
            get_strategy("ties"),
            MergeParams(density=density),
            base,
            [theta],
            name="w",
            chunk_rows=rows,
        )
        k = max(1, int(density * 200))
        assert stats.kept == [min(k, int((theta != 0).sum()))]  # kept counts nonzero τ̂
        # Exactly the k largest |τ|, ties to the lowest flat index.
        order = sorted(range(200), key=lambda i: (-abs(float(theta.reshape(-1)[i])), i))[:k]
        expected = torch.zeros(200, dtype=torch.bfloat16)
        expected[order] = theta.reshape(-1)[order]
        assert torch.equal(merged.reshape(-1), expected)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.0, 0.5, -0.5, 1.0, 2.0, -3.0, 1e-3]), min_size=1, max_size=60
    ),
    frac=st.floats(0, 1),
    rows=st.integers(1, 9),
    top=st.booleans(),
)
def test_selection_matches_sorting(values, frac, rows, top):
    x = torch.tensor(values, dtype=torch.float32)
    n = len(values)
    count = round(frac * n)
    spec = TensorSpec("x", (n,), "F32", 1)
    selection = Selection([Request(0, top, count)], n, "F32")
    ops = NumpyOps()

    def chunks():
        for s in range(0, n, rows):
            part = x[s : s + rows].numpy()
            yield Chunk(spec, s, np.zeros(len(part), dtype=np.float32), (part,), ops)

    for p in selection.passes():
        for c in chunks():
            p.update(c)
    got = torch.from_numpy(
        np.concatenate(
            [
                selection.cuts[0].apply(ops, abs(c.taus()[0]).view(np.int32), c.flat_start)
                for c in chunks()
            ]
        )
    )
    key = (lambda i: (-abs(values[i]), i)) if top else (lambda i: (abs(values[i]), i))
    expected = torch.zeros(n, dtype=torch.bool)
    expected[sorted(range(n), key=key)[:count]] = True
    assert torch.equal(got, expected)


def test_two_branch_one_sided_edits_pass_through_exactly():
    base, (a, b) = _model(shape=(50, 11), n=2, untouched=0.0)
    only_a = torch.rand(base.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    a = torch.where(only_a, a, base)
    b = torch.where(only_a, base, b)
    for name, params in [
        ("ties", MergeParams()),
        ("consensus", MergeParams()),
        ("task_arithmetic", MergeParams()),
    ]:
        merged, _ = merge_tensor(get_strategy(name), params, base, [a, b], name="w", chunk_rows=7)
        assert torch.equal(merged[only_a], a[only_a]), name
        assert torch.equal(merged[~only_a], b[~only_a]), name


def test_consensus_k_defaults_and_semantics():
    assert MergeParams().k_for(2) == 1 and MergeParams().k_for(3) == 2
    base = torch.zeros(4)
    # Element 0: one branch; 1: two agreeing; 2: three agreeing; 3: untouched.
    thetas = [
        torch.tensor([1.0, 1.0, 1.0, 0.0]),
        torch.tensor([0.0, 1.0, 1.0, 0.0]),
        torch.tensor([0.0, 0.0, 1.0, 0.0]),
    ]
    merged, stats = merge_tensor(get_strategy("consensus"), MergeParams(), base, thetas, name="w")
    assert merged.tolist() == [0.0, 2.0, 3.0, 0.0]  # k = 2 drops the one-sided edit
    merged, _ = merge_tensor(get_strategy("consensus"), MergeParams(k=1), base, thetas, name="w")
    assert merged.tolist() == [1.0, 2.0, 3.0, 0.0]
    merged, _ = merge_tensor(get_strategy("consensus"), MergeParams(k=3), base, thetas, name="w")
    assert merged.tolist() == [0.0, 0.0, 3.0, 0.0]
    two = merge_tensor(get_strategy("consensus"), MergeParams(), base, thetas[:2], name="w")[0]
    assert two.tolist() == [1.0, 2.0, 2.0, 0.0]  # k = 1 for two branches keeps one-sided edits
    with pytest.raises(MvcError, match="k must be at most"):
        merge_tensor(get_strategy("consensus"), MergeParams(k=4), base, thetas, name="w")


def test_dare_reproducible_from_seed_and_name():
    base, thetas = _model()
    run = lambda seed, name, rows=None: merge_tensor(  # noqa: E731
        get_strategy("dare_linear"),
        MergeParams(density=0.5, seed=seed),
        base,
        thetas,
        name=name,
        chunk_rows=rows,
    )[0]
    first = run(1, "a")
    assert torch.equal(first, run(1, "a", rows=3))
    assert not torch.equal(first, run(2, "a"))
    assert not torch.equal(first, run(1, "b"))
    # Branches draw independent masks; a chunk's mask equals the matching slice of the whole.
    ops = NumpyOps()
    whole = keep_mask(1, "a", 0, 0, 1000, 0.5, ops)
    assert not np.array_equal(whole, keep_mask(1, "a", 1, 0, 1000, 0.5, ops))
    assert np.array_equal(whole[300:420], keep_mask(1, "a", 0, 300, 120, 0.5, ops))
    assert 0.45 < whole.mean() < 0.55


def test_stats_and_tall_masks():
    base = torch.zeros(6)
    a = torch.tensor([1.0, -1.0, 0.0, 2.0, 0.0, 0.0])
    b = torch.tensor([1.0, 1.0, 3.0, 0.0, 0.0, 0.0])
    merged, stats = merge_tensor(
        get_strategy("ties"), MergeParams(), base, [a, b], name="w", masks=True
    )
    assert stats.changed == [3, 3] and stats.conflicts == 1
    assert stats.contributed == [2, 3]
    mtl = merged - base
    for mask, tau in zip(stats.masks, (a, b), strict=True):
        expected = tau.abs() > 0.4 * (mtl - tau).abs()
        assert np.array_equal(unpack_mask(mask, 6), expected.numpy())


@settings(max_examples=40, deadline=None)
@given(bits=st.lists(st.booleans(), max_size=70), cut=st.integers(1, 9))
def test_mask_packing_independent_of_chunks(bits, cut):
    flat = np.array(bits, dtype=bool)
    one, many = MaskPacker(), MaskPacker()
    one.feed(flat)
    for s in range(0, len(bits), cut):
        many.feed(flat[s : s + cut])
    data = one.finish()
    assert data == many.finish() and len(data) == (len(bits) + 7) // 8
    assert np.array_equal(unpack_mask(data, len(bits)), flat)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=50),
    st.integers(1, 7),
)
def test_exact_sum_is_correctly_rounded_and_order_free(values, cut):
    x = torch.tensor(values, dtype=torch.float32)
    acc = ExactSum()
    for s in range(0, len(values), cut):
        acc.add(x[s : s + cut])
    assert acc.value() == float(sum((Fraction(v) for v in x.tolist()), Fraction(0)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"k": -1}, "k must be"),
        ({"preset": "bogus"}, "preset"),
        ({"t": 2.0}, "t must be"),
        ({"gamma": 1.0}, "gamma"),
        ({"lambda_": float("nan")}, "lambda"),
        ({"seed": -1}, "seed"),
        ({"on": "max"}, "on must be"),
    ],
)
def test_params_out_of_range(kwargs, message):
    with pytest.raises(MvcError, match=message):
        MergeParams(**kwargs)


def test_params_record_round_trip_and_branch_counts():
    params = MergeParams(weights=(0.2, 0.8), density=0.3, preset="peft", seed=9)
    assert MergeParams.from_record(params.to_record()) == params
    with pytest.raises(MvcError, match="weight has 2 values for 3 branches"):
        params.weights_for(3)


def test_registry_and_strategy_checks():
    assert set(STRATEGY_NAMES) == {
        "ties",
        "consensus",
        "task_arithmetic",
        "linear",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "slerp",
        "ours",
        "theirs",
        *("breadcrumbs_ties", "della", "della_linear", "sce", "model_stock", "nuslerp"),
        *("multislerp", "karcher", "nearswap", "arcee_fusion", "ram", "ramplus_tl"),
        *("tsv", "iso_c", "iso_cts", "pcb"),
    }
    with pytest.raises(MvcError) as err:
        get_strategy("average")
    assert "ties" in err.value.hint
    base, thetas = _model()
    with pytest.raises(MvcError, match="exactly 2 branches"):
        merge_tensor(get_strategy("slerp"), MergeParams(), None, thetas, name="w")
    with pytest.raises(MvcError, match="no preset 'peft'"):
        merge_tensor(get_strategy("slerp"), MergeParams(preset="peft"), None, thetas[:2], name="w")
    ints = [torch.arange(6), torch.arange(6) + 1]
    with pytest.raises(MvcError, match="only floats"):
        merge_tensor(get_strategy("ties"), MergeParams(), torch.arange(6), ints, name="ids")
    taken, _ = merge_tensor(
        get_strategy("theirs"), MergeParams(), torch.arange(6), ints, name="ids"
    )
    assert torch.equal(taken, ints[1])


def test_scalar_and_fp64_tensors():
    base = torch.tensor(1.0, dtype=torch.float64)
    merged, _ = merge_tensor(
        get_strategy("task_arithmetic"), MergeParams(), base, [base + 0.5, base + 0.25], name="s"
    )
    assert merged.dtype == torch.float64 and merged.shape == () and float(merged) == 1.75
    assert compute_dtype("BF16") == "F32"
    assert compute_dtype("F64") == "F64"


def test_device_resolution():
    assert isinstance(resolve_device("cpu"), NumpyOps) and str(resolve_device("cpu")) == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert str(resolve_device("auto")).split(":")[0] == expected
    backend = TorchOps("cpu")
    assert resolve_device(backend) is backend
    with pytest.raises(MvcError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MvcError, match="CUDA is not available"):
            resolve_device("cuda:0")


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(st.just(0), st.integers(0, 40)), min_size=1, max_size=3000),
    frac=st.floats(0, 1, exclude_max=True),
    rows=st.integers(1, 700),
)
def test_rank_query_equals_radix_and_sorting(values, frac, rows):
    """The sampled bracket and its radix fallback give exactly the sorted answer."""
    keys = np.array(values, dtype=np.int32)
    q = int(frac * len(values))
    ops = NumpyOps()
    answers = []
    for query in (RankQuery(q, 32, len(keys)), RadixQuery(q, 32)):
        while not query.done:
            for s in range(0, len(keys), rows):
                query.update(ops, keys[s : s + rows], rows >= len(keys))
            query.end_pass()
        answers.append((query.value, query.n_greater, query.n_equal))
    value = int(np.sort(keys)[::-1][q])
    expected = (value, int((keys > value).sum()), int((keys == value).sum()))
    assert answers == [expected, expected]


def test_rank_query_brackets_a_large_tensor_in_two_passes():
    keys = np.abs(np.random.default_rng(3).standard_normal(200_000, dtype=np.float32))
    keys = keys.view(np.int32)
    query, passes = RankQuery(40_000, 32, len(keys)), 0
    while not query.done:
        passes += 1
        for s in range(0, len(keys), 30_000):
            query.update(NumpyOps(), keys[s : s + 30_000], False)
        query.end_pass()
    assert passes == 2 and query.value == int(np.sort(keys)[::-1][40_000])


@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.9])
def test_rank_query_on_a_whole_tensor_matches_sorting(zeros):
    """One chunk: the bracket runs on the same keys (or falls back to kthvalue), exactly."""
    rng = np.random.default_rng(7)
    values = np.abs(rng.standard_normal(50_000, dtype=np.float32))
    values[rng.random(50_000) < zeros] = 0.0
    keys = values.view(np.int32)
    for q in (0, 1, 9_999, 25_000, 49_999):
        query = RankQuery(q, 32, len(keys))
        query.update(NumpyOps(), keys, True)
        value = int(np.sort(keys)[::-1][q])
        assert query.done
        assert (query.value, query.n_greater, query.n_equal) == (
            value,
            int((keys > value).sum()),
            int((keys == value).sum()),
        )
