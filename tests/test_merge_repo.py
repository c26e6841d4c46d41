"""`mvc merge` on repositories: three-way rules, strategies end to end, conflicts, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from model_factory import committed_base, fine_tuned, random_weights, snapshot, write_model_folder

from mvc.errors import ConflictError, MvcError
from mvc.lineage.records import merge_record
from mvc.merge import MergeOptions, MergeParams, merge
from mvc.merge.arrays import TorchOps
from mvc.repo import Repo


def load(repo: Repo, rev: str = "HEAD") -> dict[str, np.ndarray]:
    sd = repo.load_state_dict(rev, "model/model.safetensors")
    return {k: v.float().numpy() for k, v in sd.items()}


@pytest.fixture
def branched(base_repo):
    """main = base; a and b each fine-tune some tensors (overlapping on layer.0.weight)."""
    repo, base = base_repo, random_weights(0)
    repo.switch("a", create=True)
    write_model_folder(
        repo.root / "model", fine_tuned(base, seed=1, only=("layer.0.weight", "layer.0.bias"))
    )
    repo.commit("a", all=True)
    repo.switch("b", create=True, start="main")
    write_model_folder(
        repo.root / "model", fine_tuned(base, seed=2, only=("layer.0.weight", "layer.1.weight"))
    )
    repo.commit("b", all=True)
    repo.switch("main")
    return repo, base


def test_one_sided_changes_pass_through_byte_exact(branched):
    repo, base = branched
    result = merge(repo, ["a", "b"], MergeOptions(params=MergeParams(density=0.5)))
    assert result.commit and repo.head() == result.commit
    merged, a, b = (
        repo.model_files(r)["model/model.safetensors"].by_name() for r in ("HEAD", "a", "b")
    )
    assert merged["layer.0.bias"].chunk_ids == a["layer.0.bias"].chunk_ids
    assert merged["layer.1.weight"].chunk_ids == b["layer.1.weight"].chunk_ids
    base_m = repo.model_files("main~1")["model/model.safetensors"].by_name()
    assert merged["embeddings.weight"].chunk_ids == base_m["embeddings.weight"].chunk_ids
    assert merged["layer.0.weight"].chunk_ids != a["layer.0.weight"].chunk_ids
    info = repo.commit_info("HEAD")
    assert list(info.parents) == [repo.resolve("main~1"), repo.resolve("a"), repo.resolve("b")]
    assert repo.status().clean
    record = merge_record(repo, "HEAD")[1]
    decisions = record["files"]["model/model.safetensors"]["tensors"]
    assert decisions["layer.0.weight"]["action"] == "resolve"
    assert decisions["layer.0.bias"] == {"action": "one-sided", "source": 1}
    assert decisions["layer.0.weight"]["masks"]


def test_ties_density_one_keeps_one_sided_elements_exactly(branched):
    """Two branches, density 1: where only one side moved an element, it passes exactly."""
    repo, base = branched
    repo.switch("c", create=True, start="main")
    w = base["layer.0.weight"].copy()
    w[:16] += 0.01  # rows 0..15 on branch c
    write_model_folder(repo.root / "model", {**base, "layer.0.weight": w})
    repo.commit("c", all=True)
    repo.switch("d", create=True, start="main")
    v = base["layer.0.weight"].copy()
    v[8:] -= 0.02  # rows 8.. on branch d; rows 8..15 conflict
    write_model_folder(repo.root / "model", {**base, "layer.0.weight": v})
    repo.commit("d", all=True)
    repo.switch("main")
    merge(repo, ["c", "d"])
    out = load(repo)["layer.0.weight"]
    np.testing.assert_array_equal(out[:8], w[:8])
    np.testing.assert_array_equal(out[16:], v[16:])


def test_fast_forward_and_up_to_date(branched):
    repo, _ = branched
    result = merge(repo, ["a"])
    assert result.fast_forward and repo.head() == repo.resolve("a")
    assert snapshot(repo.root)["model/model.safetensors"]
    assert merge(repo, ["a"]).up_to_date


@pytest.mark.parametrize(
    "strategy",
    [
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
    ],
)
def test_every_strategy_runs_end_to_end(branched, strategy):
    repo, base = branched
    params = MergeParams(density=0.5 if strategy.startswith(("dare", "ties")) else 1.0)
    if strategy == "breadcrumbs":
        params = MergeParams(density=0.8, gamma=0.05)
    result = merge(repo, ["a", "b"], MergeOptions(strategy=strategy, params=params))
    merged = load(repo)
    assert result.commit
    a, b = load(repo, "a"), load(repo, "b")
    if strategy == "ours":
        np.testing.assert_array_equal(merged["layer.0.weight"], a["layer.0.weight"])
    elif strategy == "theirs":
        np.testing.assert_array_equal(merged["layer.0.weight"], b["layer.0.weight"])
    else:
        assert not np.array_equal(merged["layer.0.weight"], a["layer.0.weight"])
        assert np.abs(merged["layer.0.weight"] - base["layer.0.weight"]).max() < 0.05


def test_shape_conflict_stops_before_writing(branched):
    repo, base = branched
    repo.switch("wide", create=True, start="a")
    write_model_folder(
        repo.root / "model", {**base, "layer.0.weight": np.zeros((32, 33), np.float32)}
    )
    repo.commit("reshape", all=True)
    repo.switch("main")
    head = repo.head()
    objects = set(repo.store.ids())
    with pytest.raises(ConflictError, match="layer.0.weight: shape/dtype differ"):
        merge(repo, ["wide", "b"])
    assert repo.head() == head and set(repo.store.ids()) == objects
    result = merge(repo, ["wide", "b"], MergeOptions(strategy="ours"))
    assert load(repo)["layer.0.weight"].shape == (32, 33) or result.commit


def test_bad_input(branched, tmp_path):
    repo, _ = branched
    with pytest.raises(MvcError, match="unknown strategy"):
        merge(repo, ["a", "b"], MergeOptions(strategy="magic"))
    with pytest.raises(MvcError, match="density"):
        MergeParams(density=1.5)
    with pytest.raises(MvcError, match="k must"):
        MergeParams(k=-1)
    other = Repo.init(tmp_path / "other")
    write_model_folder(other.root / "model", random_weights(5))
    other.add([other.root / "model"])
    other.commit("unrelated")
    repo.git.object_store.add_objects(
        [(other.git.object_store[sha], None) for sha in other.git.object_store]
    )
    repo.git.refs[b"refs/heads/stranger"] = other.head().encode()
    for sha in other.store.ids():
        repo.store.write_raw(sha, other.store.read_raw(sha))
    with pytest.raises(MvcError, match="unrelated histories"):
        merge(repo, ["stranger"])
    write_model_folder(repo.root / "model", fine_tuned(random_weights(0), seed=7))
    with pytest.raises(ConflictError, match="uncommitted"):
        merge(repo, ["a", "b"])


def test_no_commit_stages_the_merge(branched):
    repo, _ = branched
    head = repo.head()
    result = merge(repo, ["a", "b"], MergeOptions(commit=False))
    assert result.commit is None and repo.head() == head
    assert repo.status().staged
    sha = repo.commit("finish merge")
    assert len(repo.commit_info(sha).parents) == 3


def test_config_rules_pick_strategy_per_tensor(branched, tmp_path):
    repo, _ = branched
    config = tmp_path / "merge.yaml"
    config.write_text("rules:\n  - match: 'layer.0.*'\n    strategy: theirs\n")
    from mvc.merge.planner import load_rules

    merge(repo, ["a", "b"], MergeOptions(rules=load_rules(str(config))))
    np.testing.assert_array_equal(load(repo)["layer.0.weight"], load(repo, "b")["layer.0.weight"])


def test_merge_cli(branched):
    from click.testing import CliRunner

    from mvc.cli.main import cli

    repo, _ = branched
    import os

    cwd = os.getcwd()
    os.chdir(repo.root)
    try:
        res = CliRunner().invoke(
            cli,
            [
                "merge",
                "a",
                "b",
                "--strategy",
                "ties",
                "--density",
                "0.2",
                "--weight",
                "a=0.7",
                "--weight",
                "b=0.3",
                "-q",
            ],
        )
        assert res.exit_code == 0, res.output
        assert "Merged into" in res.output
        res = CliRunner().invoke(cli, ["merge", "a", "--density", "0"])
        assert res.exit_code == 1 and "density must be in (0, 1]" in res.output
    finally:
        os.chdir(cwd)


def test_all_tensors_leaves_integer_buffers_to_the_three_way_rules(tmp_path):
    base = {**random_weights(0), "position_ids": np.arange(16, dtype=np.int64)}
    repo = committed_base(tmp_path / "work", base)
    for name, seed in (("a", 1), ("b", 2)):
        repo.switch(name, create=True, start="main")
        tuned = fine_tuned(random_weights(0), seed=seed, only=("layer.0.weight",))
        write_model_folder(repo.root / "model", {**tuned, "position_ids": base["position_ids"]})
        repo.commit(name, all=True)
    repo.switch("main")
    merge(repo, ["a", "b"], MergeOptions(all_tensors=True, params=MergeParams(preset="mergekit")))
    merged = repo.load_state_dict("HEAD", "model/model.safetensors")
    assert merged["position_ids"].tolist() == list(range(16))
    record = merge_record(repo, "HEAD")[1]
    assert record["files"]["model/model.safetensors"]["tensors"]["position_ids"]["action"] == "base"
    assert (
        record["files"]["model/model.safetensors"]["tensors"]["layer.1.weight"]["action"]
        == "resolve"
    )


def test_cpu_merge_never_imports_torch(branched, assert_no_torch):
    """On the CPU the arithmetic runs on numpy: torch's import (seconds, ~200 MiB) is not paid."""
    repo, _ = branched
    code = (
        "from mvc.merge import MergeOptions, merge\n"
        "from mvc.repo import Repo\n"
        "merge(Repo.open('.'), ['a', 'b'], MergeOptions(device='cpu'))\n"
    )
    assert_no_torch(code, repo.root)


def test_torch_backend_commits_the_same_merge(branched):
    """The GPU code path (torch, here on its CPU device) writes the very same objects."""
    repo, _ = branched
    trees = []
    for name, device in (("via-numpy", "cpu"), ("via-torch", TorchOps("cpu"))):
        repo.switch(name, create=True, start="main")
        merge(repo, ["a", "b"], MergeOptions(params=MergeParams(density=0.3), device=device))
        trees.append(repo.model_files("HEAD")["model/model.safetensors"])
    assert trees[0] == trees[1]
    records = [merge_record(repo, rev)[1] for rev in ("via-numpy", "via-torch")]
    assert records[0]["files"] == records[1]["files"]
    assert records[1]["device"] == "cpu" and "torch" in records[1]["versions"]


def test_merged_chunks_are_stored_as_deltas_on_the_base(branched):
    """A merge stays close to its base: its chunks delta against the base's, one level deep."""
    repo, _ = branched
    merge(repo, ["a", "b"], MergeOptions(params=MergeParams(density=0.5)))
    merged = repo.model_files("HEAD")["model/model.safetensors"].by_name()["layer.0.weight"]
    base = repo.model_files("main~1")["model/model.safetensors"].by_name()["layer.0.weight"]
    for ours, theirs in zip(merged.chunks, base.chunks, strict=True):
        info = repo.store.info(ours.oid)
        assert info.codec in ("xor", "sub") and info.base == theirs.oid


def _checked_out_bytes(repo: Repo, rel: str, tmp_path) -> bytes:
    """What a checkout of HEAD writes for `rel` (materialized from the store)."""
    from mvc.repo.materialize import materialize

    out = tmp_path / "materialized.safetensors"
    materialize(repo.store, repo.model_files("HEAD")[rel], out)
    return out.read_bytes()


@pytest.mark.parametrize("commit", [True, False])
def test_merged_file_in_the_work_tree_is_exactly_the_commit(branched, tmp_path, commit):
    """The merge writes its file as it computes; it must equal a checkout byte for byte."""
    repo, _ = branched
    merge(repo, ["a", "b"], MergeOptions(params=MergeParams(density=0.5), commit=commit))
    rel = "model/model.safetensors"
    assert not repo.status().unstaged and not any(repo.scratch_dir().iterdir())
    if not commit:  # the staged merge, committed as it is, is what the file must hold
        repo.commit("merge")
    assert (repo.root / rel).read_bytes() == _checked_out_bytes(repo, rel, tmp_path)


def test_merged_file_with_a_changed_layout_matches_a_checkout(branched, tmp_path):
    """A tensor added on one side and one deleted on the other: a new header is laid out."""
    repo, base = branched
    repo.switch("c", create=True, start="main")
    grown = {**base, "extra.bias": np.linspace(0, 1, 7, dtype=np.float32)}
    grown["layer.0.weight"] = base["layer.0.weight"] + np.float32(0.01)
    write_model_folder(repo.root / "model", grown)
    repo.commit("c", all=True)
    repo.switch("d", create=True, start="main")
    shrunk = {k: v for k, v in base.items() if k != "layer.1.bias"}
    shrunk["layer.0.weight"] = base["layer.0.weight"] - np.float32(0.02)
    write_model_folder(repo.root / "model", shrunk)
    repo.commit("d", all=True)
    merge(repo, ["c"])
    rel = "model/model.safetensors"
    names = repo.model_files("HEAD")[rel].by_name()
    assert "extra.bias" in names and "layer.1.bias" not in names
    assert (repo.root / rel).read_bytes() == _checked_out_bytes(repo, rel, tmp_path)
    assert repo.status().clean


def test_a_failed_merge_leaves_no_scratch_file(branched, monkeypatch):
    repo, _ = branched
    from mvc.repo.repository import Repo as RepoClass

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(RepoClass, "commit_tree", fail)
    with pytest.raises(OSError, match="disk full"):
        merge(repo, ["a", "b"], MergeOptions(params=MergeParams(density=0.5)))
    assert not any(repo.scratch_dir().iterdir())
