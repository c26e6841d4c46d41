"""The new methods through the repository: merge, verify, unmerge and the mergekit export,
as every strategy goes (three-way rules first: one-sided edits pass through exactly)."""

from __future__ import annotations

import pytest
import yaml
from model_factory import fine_tuned, random_weights, write_model_folder
from test_lineage_export import MODEL, checkout

from mvc.lineage.export import export
from mvc.lineage.unmerge import unmerge
from mvc.lineage.verify import verify
from mvc.merge import MergeOptions, MergeParams, merge
from mvc.merge.strategies import get_strategy
from mvc.repo import Repo

# (strategy, params) for three branches, then the two-branch methods.
THREE = [
    ("della", {"density": 0.5, "seed": 3}),
    ("della_linear", {"density": 0.6, "epsilon": 0.2}),
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.05}),
    ("sce", {"select_topk": 0.5}),
    ("model_stock", {}),
    ("multislerp", {"weights": (0.5, 0.3, 0.2)}),
    ("karcher", {}),
    ("ram", {}),
    ("ramplus_tl", {"r": 0.2}),
    ("tsv", {}),
    ("iso_c", {"lambda_": 1.2}),
    ("iso_cts", {"common": 0.5}),
    ("pcb", {"density": 0.3}),
    ("task_arithmetic", {"lines": (0.5, 0.5)}),
]
TWO = [
    ("nuslerp", {"weights": (0.4, 0.6)}),
    ("nearswap", {"distance": 0.005}),
    ("arcee_fusion", {}),
]


@pytest.fixture
def repo(tmp_path):
    """main = base; a, b, c fine-tune overlapping tensors; c alone changes the embeddings."""
    repo = Repo.init(tmp_path / "work")
    base = random_weights(0)
    write_model_folder(repo.root / "model", base)
    repo.add([repo.root / "model"])
    repo.commit("base")
    edits = {
        "a": ("layer.0.weight", "layer.0.bias", "layer.1.weight"),
        "b": ("layer.0.weight", "layer.1.weight", "layer.0.bias"),
        "c": ("layer.0.weight", "layer.1.weight", "embeddings.weight"),
    }
    for seed, (name, only) in enumerate(edits.items(), start=1):
        repo.switch(name, create=True, start="main")
        write_model_folder(repo.root / "model", fine_tuned(base, seed=seed, scale=1e-2, only=only))
        repo.commit(f"train {name}", all=True)
    repo.switch("main")
    return repo


def _tensors(repo: Repo, rev: str) -> dict[str, tuple[str, ...]]:
    return {n: e.chunk_ids for n, e in repo.manifest(rev, MODEL).by_name().items()}


@pytest.mark.parametrize(("strategy", "params"), THREE + TWO, ids=lambda x: str(x))
def test_merge_verifies_and_one_sided_edits_pass_through(repo, strategy, params):
    branches = ["a", "b", "c"] if (strategy, params) in THREE else ["a", "c"]
    options = MergeOptions(strategy=strategy, params=MergeParams(**params))
    base = repo.head()
    sha = merge(repo, branches, options).commit
    report = verify(repo, sha, device="cpu")
    assert report.ok, report.mismatches
    merged = _tensors(repo, sha)
    # embeddings: only c changed them, so they are c's bytes whatever the strategy.
    assert merged["embeddings.weight"] == _tensors(repo, "c")["embeddings.weight"]
    assert merged["layer.0.weight"] != _tensors(repo, base)["layer.0.weight"]


@pytest.mark.parametrize(
    ("strategy", "params"),
    [(s, p) for s, p in THREE if s not in ("model_stock",)],
    ids=lambda x: str(x),
)
def test_unmerge_equals_merging_the_others(repo, strategy, params):
    options = MergeOptions(strategy=strategy, params=MergeParams(**params))
    sha = merge(repo, ["a", "b", "c"], options).commit
    result = unmerge(repo, "HEAD", "b", device="cpu")
    assert result.result == "recomputed" and result.remaining == ["a", "c"]
    assert verify(repo, result.commit, device="cpu").ok
    repo.switch("direct", create=True, start=repo.commit_info(sha).parents[0])
    rest = dict(params)
    if "weights" in rest:
        rest["weights"] = (rest["weights"][0], rest["weights"][2])
    direct = merge(repo, ["a", "c"], MergeOptions(strategy=strategy, params=MergeParams(**rest)))
    assert _tensors(repo, result.commit) == _tensors(repo, direct.commit)


@pytest.mark.parametrize(("strategy", "params"), THREE + TWO, ids=lambda x: str(x))
def test_export_names_mergekit_method_and_parameters(repo, strategy, params):
    branches = ["a", "b", "c"] if (strategy, params) in THREE else ["a", "c"]
    options = MergeOptions(strategy=strategy, params=MergeParams(preset="mergekit", **params))
    if "mergekit" not in get_strategy(strategy).presets:
        options = MergeOptions(strategy=strategy, params=MergeParams(**params))
    sha = merge(repo, branches, options).commit
    kit = get_strategy(strategy).mergekit
    if kit is None:
        with pytest.raises(Exception, match="mergekit"):
            export(repo, sha, "mergekit", {})
        return
    doc = yaml.safe_load(export(repo, sha, "mergekit", {}))
    assert doc["merge_method"] == kit
    flat = dict(doc.get("parameters") or {})
    for model in doc["models"]:
        flat.update(model.get("parameters") or {})
    for name, value in params.items():
        declared = next(p for p in get_strategy(strategy).declared() if p.name == name)
        if declared.mergekit is not None and not declared.omitted_in_mergekit(value):
            assert declared.mergekit in flat, (name, doc)


def test_every_exported_parameter_is_one_mergekit_takes():
    """mergekit refuses unknown parameters: each declaration's mergekit name must be one."""
    merge_methods = pytest.importorskip("mergekit.merge_methods")
    from mvc.merge.strategies import strategies

    for strategy in strategies():
        if strategy.mergekit is None:
            continue
        known = {p.name for p in merge_methods.get(strategy.mergekit).spec.parameters}
        for param in strategy.parameters:
            assert param.mergekit is None or param.mergekit in known, (strategy.name, param.name)


@pytest.mark.slow  # mergekit's import and merges: about 40 s on these cores
def test_mergekit_reproduces_exported_merges(repo, tmp_path):
    pytest.importorskip("mergekit")
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions as KitOptions
    from safetensors.torch import load_file

    base = repo.head()
    paths = {"base": str(checkout(repo, base, tmp_path / "base"))}
    for name in "abc":
        paths[name] = str(checkout(repo, name, tmp_path / name))
    three = ["a", "b", "c"]
    for strategy, params, branches in [
        ("model_stock", {}, three),
        ("sce", {"select_topk": 0.5}, three),
        ("ramplus_tl", {"r": 0.2}, three),
        ("breadcrumbs_ties", {"density": 0.5, "weights": (0.5, 0.3, 0.2)}, three),
        ("karcher", {}, three),
        ("nuslerp", {"weights": (0.3, 0.7)}, ["a", "b"]),
        ("nearswap", {"distance": 0.004}, ["a", "b"]),
    ]:
        repo.switch(f"kit-{strategy}", create=True, start=base)
        options = MergeOptions(
            strategy=strategy, params=MergeParams(preset="mergekit", **params), all_tensors=True
        )
        sha = merge(repo, branches, options).commit
        given = {k: v for k, v in paths.items() if k == "base" or k in branches}
        doc = yaml.safe_load(export(repo, sha, "mergekit", given))
        out = tmp_path / f"out-{strategy}"
        run_merge(
            MergeConfiguration.model_validate(doc),
            str(out),
            options=KitOptions(copy_tokenizer=False, lazy_unpickle=False, quiet=True),
        )
        outputs = {}
        for file in out.glob("*.safetensors"):
            outputs.update(load_file(str(file)))
        mine = repo.load_state_dict(sha, MODEL)
        assert set(outputs) == set(mine)
        for name, value in mine.items():
            torch.testing.assert_close(
                outputs[name].float(), value.float(), rtol=1e-6, atol=1e-6, msg=strategy
            )


def _state(repo: Repo):
    return repo.head(), set(repo.store.ids()), sorted(p.name for p in repo.scratch_dir().iterdir())


def test_cli_takes_the_new_parameters_and_records_them(repo, monkeypatch):
    from click.testing import CliRunner

    from mvc.cli.main import cli
    from mvc.lineage.records import merge_record

    monkeypatch.chdir(repo.root)
    args = ["merge", "a", "b", "-q", "-s", "della", "--density", "0.5", "--epsilon", "0.1"]
    result = CliRunner().invoke(cli, [*args, "--lines", "0.5,0.25"])
    assert result.exit_code == 0, result.output
    _, record = merge_record(repo, "HEAD")
    assert record["params"]["lines"] == [0.5, 0.25] and record["params"]["epsilon"] == 0.1
    log = CliRunner().invoke(cli, ["log", "-n", "1"]).output
    assert "della" in log and "epsilon 0.1" in log and "lines" in log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a", "b", "c", "-s", "nuslerp"], "strategy nuslerp needs exactly 2 branches, got 3"),
        (["a", "b", "c", "-s", "slerp"], "strategy slerp needs exactly 2 branches, got 3"),
        (["a", "b", "-s", "della", "--density", "0.5", "--epsilon", "0.6"], "density ± epsilon"),
        (["a", "b", "-s", "sce", "--select-topk", "1.5"], "select topk must be in (0, 1]"),
        (["a", "b", "-s", "ties", "--lines", "0.5"], "lines takes 2 numbers"),
        (["a", "b", "-s", "linear", "--lines", "0.5,0.5"], "--lines scales task vectors"),
        (["a", "b", "-s", "karcher", "--max-iter", "0"], "max iter must be"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(repo, monkeypatch, args, message):
    from click.testing import CliRunner

    from mvc.cli.main import cli

    monkeypatch.chdir(repo.root)
    before = _state(repo)
    result = CliRunner().invoke(cli, ["merge", *args, "-q"])
    assert result.exit_code == 1, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("mvc: error: ") and message in first, result.output
    assert _state(repo) == before
