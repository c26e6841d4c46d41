"""The papers' data-free methods (TSV, Iso-C, Iso-CTS, PCB, LiNeS): hand-computed cases and
the properties that define them; and every new method's bits across backends and chunkings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from merge_in_memory import merge_tensor, merge_tensors

from mvc.merge.arrays import NumpyOps, TorchOps
from mvc.merge.lines import count_layers, layer_index, lines_scale
from mvc.merge.params import MergeParams
from mvc.merge.strategies import get_strategy
from mvc.merge.strategies.svd import nearest_orthogonal


def _merge(method, base, thetas, **params):
    merged, _ = merge_tensor(
        get_strategy(method), MergeParams(**params), base, thetas, name="w", chunk_rows=2
    )
    return merged


def _random_taus(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    taus = [torch.randn(shape, generator=g, dtype=torch.float64) * 0.1 for _ in range(n)]
    return base, taus


# ---------------------------------------------------------------- Iso-C / Iso-CTS
def test_iso_c_hand_case_flattens_the_spectrum_of_the_sum():
    base = torch.zeros(2, 2, dtype=torch.float64)
    thetas = [torch.diag(torch.tensor([2.0, 0.0])), torch.diag(torch.tensor([1.0, 1.0]))]
    merged = _merge("iso_c", base, [t.double() for t in thetas])
    # Σ τ = diag(3, 1): singular values (3, 1) replaced by their mean 2, same directions.
    torch.testing.assert_close(merged, torch.diag(torch.tensor([2.0, 2.0], dtype=torch.float64)))


@pytest.mark.parametrize("method", ["iso_c", "iso_cts"])
def test_iso_merged_spectrum_is_flat(method):
    base, taus = _random_taus((24, 16), 3, seed=1)
    merged = _merge(method, base, [base + t for t in taus], lambda_=0.7)
    delta = (merged - base) / 0.7
    s = torch.linalg.svdvals(delta)
    assert s.max() - s.min() < 1e-9 * s.max()
    if method == "iso_c":  # the flat value is the mean singular value of the sum
        assert math.isclose(float(s[0]), float(torch.linalg.svdvals(sum(taus)).mean()), rel_tol=1e-9)
        # and the directions are the sum's: Δ's row space is the sum's
        u, _, vt = torch.linalg.svd(sum(taus), full_matrices=False)
        torch.testing.assert_close(delta, s[0] * u @ vt)


def test_iso_cts_with_a_full_common_space_is_iso_c():
    base, taus = _random_taus((12, 9), 3, seed=2)
    thetas = [base + t for t in taus]
    torch.testing.assert_close(
        _merge("iso_cts", base, thetas, common=1.0), _merge("iso_c", base, thetas)
    )


def test_iso_cts_keeps_each_task_specific_direction():
    """A direction only one task uses, outside the common space, survives in Iso-CTS."""
    base = torch.zeros(8, 8, dtype=torch.float64)
    eye = torch.eye(8, dtype=torch.float64)
    shared = 5 * eye[:, :6] @ eye[:6]  # a strong common part on directions 0..5
    taus = [shared.clone(), shared.clone()]
    taus[0][6, 6] = 0.5  # task 0 alone uses direction 6, task 1 alone direction 7
    taus[1][7, 7] = 0.5
    merged = _merge("iso_cts", base, taus, common=0.75)  # 6 common + 1 per task
    assert merged[6, 6] > 0.1 and merged[7, 7] > 0.1
    iso_c = _merge("iso_c", base, taus)
    assert abs(float(iso_c[6, 6] - iso_c[7, 7])) < 1e-12  # iso_c: the same for both


def test_svd_methods_average_non_matrices():
    base, taus = _random_taus((7,), 3, seed=3)
    for method in ("tsv", "iso_c", "iso_cts"):
        merged = _merge(method, base, [base + t for t in taus])
        torch.testing.assert_close(merged, base + sum(taus) / 3)


# ---------------------------------------------------------------- TSV
def test_tsv_of_orthogonal_low_rank_tasks_is_their_sum():
    eye = torch.eye(4, dtype=torch.float64)
    base = torch.zeros(4, 4, dtype=torch.float64)
    tau_a = 3 * torch.outer(eye[0], eye[0]) + 1 * torch.outer(eye[1], eye[1])
    tau_b = 2 * torch.outer(eye[2], eye[3]) + 0.5 * torch.outer(eye[3], eye[2])
    torch.testing.assert_close(_merge("tsv", base, [tau_a, tau_b]), tau_a + tau_b)


def test_tsv_truncates_each_task_to_its_share_of_the_rank():
    base = torch.zeros(4, 4, dtype=torch.float64)
    tau_a = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64))
    tau_b = torch.diag(torch.tensor([0.0, 0.0, 0.25, 0.5], dtype=torch.float64))
    # r = 4, two tasks: each keeps its top 2 singular triplets; task a's 1.0 is cut, the
    # kept directions (e1, e2 | e4, e3) are already orthogonal, so whitening changes nothing.
    merged = _merge("tsv", base, [tau_a, tau_b])
    torch.testing.assert_close(merged, torch.diag(torch.tensor([3.0, 2.0, 0.25, 0.5]).double()))


def test_tsv_task_subspaces_are_orthogonal_after_whitening():
    """Whitening makes the stacked task singular vectors orthonormal, so the merged update's
    spectrum is exactly the union of the tasks' kept singular values."""
    base, taus = _random_taus((30, 20), 4, seed=4)
    merged = _merge("tsv", base, [base + t for t in taus])
    k = 20 // 4
    kept = []
    stacks = []
    for t in taus:
        u, s, _ = torch.linalg.svd(t, full_matrices=False)
        kept.append(s[:k])
        stacks.append(u[:, :k])
    u_perp = torch.from_numpy(nearest_orthogonal(torch.cat(stacks, dim=1).numpy()))
    torch.testing.assert_close(u_perp.T @ u_perp, torch.eye(20, dtype=torch.float64))
    for i in range(4):  # block i ⟂ block j
        for j in range(i + 1, 4):
            block = u_perp[:, i * k : (i + 1) * k].T @ u_perp[:, j * k : (j + 1) * k]
            assert block.abs().max() < 1e-12
    spectrum = torch.linalg.svdvals(merged - base)
    torch.testing.assert_close(spectrum, torch.cat(kept).sort(descending=True).values)


# ---------------------------------------------------------------- PCB
def test_pcb_hand_case_drops_conflicts_and_averages_agreement():
    base = torch.zeros(3, dtype=torch.float64)
    thetas = [torch.tensor([1.0, 0.0, 1.0]).double(), torch.tensor([-1.0, 0.0, 1.0]).double()]
    # Σ τ = (0, 0, 2): the inter-balancing tanh(τ_i·Στ) is 0 on the conflict, so only the
    # agreed element competes: scores (0, 0, 1) for both, mean of 1 and 1 there.
    torch.testing.assert_close(_merge("pcb", base, thetas), torch.tensor([0.0, 0.0, 1.0]).double())


def test_pcb_ratio_keeps_only_the_top_scores():
    base = torch.zeros(4, dtype=torch.float64)
    tau = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    thetas = [tau, tau.clone()]
    merged = _merge("pcb", base, thetas, density=0.5)
    # Identical tasks: scores grow with |τ|. Scores are clamped from below at the sorted
    # index int(d·(1 − ratio)) = 2 (the paper's code), so every score up to that one becomes
    # the minimum and scales to 0: only scores strictly above it, here the top one, compete.
    assert torch.equal(merged[1:], torch.zeros(3, dtype=torch.float64))
    # The outlier clamp caps |τ| at the sorted index int(d·0.9999) − 1, the second largest
    # of 4 elements: the 4 enters as 3.
    assert merged[0] == 3


# ---------------------------------------------------------------- LiNeS
def test_lines_scales_task_vectors_by_depth():
    names = ["embeddings.word.weight", "encoder.layer.0.w", "encoder.layer.2.w", "pooler.w"]
    assert [layer_index(n) for n in names] == [None, 0, 2, None]
    assert count_layers(names) == 3
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(3, 2, generator=g) for n in names}
    thetas = [{n: v + torch.randn(3, 2, generator=g) for n, v in base.items()} for _ in range(2)]
    params = MergeParams(lines=(0.2, 0.6))
    merged, _ = merge_tensors(get_strategy("task_arithmetic"), params, base, thetas, chunk_rows=2)
    expected_scale = {names[0]: 0.2, names[1]: 0.2, names[2]: 0.8, names[3]: 0.2}
    for n in names:
        taus = [t[n] - base[n] for t in thetas]
        expected = base[n] + (taus[0] * expected_scale[n] + taus[1] * expected_scale[n])
        torch.testing.assert_close(merged[n], expected)
        assert lines_scale((0.2, 0.6), n, 3) == pytest.approx(expected_scale[n])


def test_lines_is_recorded_and_applies_before_trimming():
    params = MergeParams(lines=(0.5, 0.5), density=0.5)
    assert MergeParams.from_record(params.to_record()) == params
    assert params.to_record()["lines"] == [0.5, 0.5]
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 4, generator=g)
    thetas = [base + torch.randn(6, 4, generator=g) for _ in range(2)]
    # A uniform scale s before TIES is s × TIES (trims and signs do not change under s > 0).
    scaled, _ = merge_tensor(
        get_strategy("ties"), params, base, thetas, name="h.1.w", chunk_rows=2, n_layers=3
    )
    plain, _ = merge_tensor(
        get_strategy("ties"), MergeParams(density=0.5), base, thetas, name="h.1.w"
    )
    torch.testing.assert_close(scaled - base, 0.75 * (plain - base))


# ---------------------------------------------------------------- every new method
NEW_METHODS = [
    ("breadcrumbs_ties", MergeParams(density=0.5, gamma=0.1, weights=(0.5, 1.0, 2.0))),
    ("della", MergeParams(density=0.5, seed=3)),
    ("della", MergeParams(density=0.4, preset="mergekit", weights=(1.0, 0.5, 2.0))),
    ("della_linear", MergeParams(density=0.6, rescale=False)),
    ("sce", MergeParams(select_topk=0.5)),
    ("model_stock", MergeParams()),
    ("model_stock", MergeParams(filter_wise=True)),
    ("nuslerp", MergeParams(weights=(1.0, 3.0))),
    ("nuslerp", MergeParams(flatten=False)),
    ("nuslerp", MergeParams(flatten=False, row_wise=True)),
    ("multislerp", MergeParams(weights=(0.2, 0.3, 0.5))),
    ("karcher", MergeParams()),
    ("nearswap", MergeParams(distance=0.01)),
    ("arcee_fusion", MergeParams()),
    ("ram", MergeParams()),
    ("ramplus_tl", MergeParams()),
    ("tsv", MergeParams()),
    ("iso_c", MergeParams(lambda_=1.3)),
    ("iso_cts", MergeParams()),
    ("pcb", MergeParams(density=0.2)),
    ("task_arithmetic", MergeParams(lines=(0.3, 0.7))),
]
TWO = {"nuslerp", "nearswap", "arcee_fusion"}
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _model(n, dtype, shape=(37, 11)):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    thetas = []
    for _ in range(n):
        t = base + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)
        thetas.append(torch.where(torch.rand(shape, generator=g) < 0.3, base, t).to(dtype))
    return base.to(dtype), thetas


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(37, 11), (29,)], ids=str)
@pytest.mark.parametrize(("name", "params"), NEW_METHODS, ids=lambda x: str(x)[:40])
def test_backends_and_chunkings_agree_bit_for_bit(name, params, shape, dtype):
    base, thetas = _model(2 if name in TWO else 3, dtype, shape)
    results = [
        merge_tensor(
            get_strategy(name), params, base, thetas, name="encoder.layer.1.w",
            chunk_rows=rows, device=ops, n_layers=4,
        )
        for ops in (NumpyOps(), TorchOps("cpu"))
        for rows in (5, None)
    ]
    reference, stats = results[0]
    assert reference.dtype == dtype
    assert not torch.equal(reference, base)
    bits = _BITS.get(dtype, torch.int16)
    for merged, other in results[1:]:
        assert torch.equal(merged.view(bits), reference.view(bits))
        assert other == stats


def test_one_sided_elements_pass_through_methods_that_average():
    """Where one branch alone moved, sum-and-count methods give exactly that branch's value."""
    base, (a, b) = _model(2, torch.float32)
    b = torch.where(torch.arange(b.numel()).reshape(b.shape) % 2 == 0, base, b)
    merged = _merge("ram", base, [a, b])
    only_a = (a != base) & (b == base) & ((a - base).abs() > 1e-5)
    assert torch.equal(merged[only_a], a[only_a])
    assert np.isfinite(merged.numpy()).all()
