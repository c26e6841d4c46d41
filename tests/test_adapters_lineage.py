"""Adapter merges through the rest of mvc: unmerge recomputes in ΔW space, export gives
mergekit its LoRA syntax (each adapter applied to its model), and MergeLock refuses a
commit that holds an adapter."""

from __future__ import annotations

import pytest
import yaml
from adapter_helpers import adapter_repo
from click.testing import CliRunner
from safetensors.torch import load_file

from mvc.cli.main import cli
from mvc.lineage.records import find_merge_record, parent_label
from mvc.lineage.unmerge import unmerge
from mvc.merge import MergeOptions, merge
from mvc.merge.adapter_plan import AdapterOptions

SMALL = {"layers_to_transform": [0]}
WEIGHTS = "adapter/adapter_model.safetensors"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    sides = {name: {"seed": seed, **SMALL} for name, seed in (("a", 1), ("b", 2), ("c", 3))}
    return adapter_repo(tmp_path_factory.mktemp("lineage") / "repo", sides, init=SMALL)


def run(repo, *args):
    return CliRunner().invoke(cli, ["-C", str(repo.root), *args])


def ties():
    return MergeOptions(strategy="ties", adapter=AdapterOptions(rank=8))


def test_unmerge_of_an_adapter_merge_is_the_merge_of_the_others(repo):
    repo.switch("abc", create=True, start="a")
    merge(repo, ["b", "c"], ties())
    result = unmerge(repo, "HEAD", "c")
    assert result.result == "recomputed"
    unmerged = load_file(str(repo.root / WEIGHTS))
    repo.switch("ab", create=True, start="a")
    merge(repo, ["b"], ties())
    direct = load_file(str(repo.root / WEIGHTS))
    assert unmerged.keys() == direct.keys()
    assert all(unmerged[k].equal(direct[k]) for k in direct)
    assert run(repo, "verify", "abc").exit_code == 0
    repo.switch("main")


def test_export_applies_each_adapter_to_its_model(repo):
    repo.switch("exported", create=True, start="a")
    merge(repo, ["b"], ties())
    result = run(repo, "export", "HEAD", "--format", "mergekit")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.output)
    assert config["base_model"] == "./checkouts/base/model+./checkouts/base/adapter"
    labels = [parent_label(find_merge_record(repo, repo.head()), i) for i in (0, 1)]
    assert [m["model"] for m in config["models"]] == [
        f"./checkouts/{label}/model+./checkouts/{label}/adapter" for label in labels
    ]
    assert "LoRA" in result.output and "--into model" in result.output
    repo.switch("main")


def test_mergelock_refuses_a_commit_with_an_adapter(repo, tmp_path):
    repo.switch("a")
    key = tmp_path / "k.key"
    assert run(repo, "keygen", str(key)).exit_code == 0
    head = repo.head()
    result = run(repo, "lock", "HEAD", "--key", str(key))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if not line.startswith("hint:")]
    assert lines == [
        "mvc: error: cannot lock a commit holding the LoRA adapter adapter/: its factors "
        "update the unlocked weights and would not fit the locked ones"
    ], result.output
    assert repo.head() == head and repo.status().clean
    repo.switch("main")
