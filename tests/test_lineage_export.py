"""`mvc export`: mergekit YAML that mergekit itself runs to the same weights; model cards."""

from __future__ import annotations

import json

import pytest
import yaml
from model_factory import committed_base, fine_tuned, random_weights, write_model_folder

from mvc.errors import MvcError
from mvc.lineage.export import export
from mvc.merge import MergeOptions, MergeParams, merge
from mvc.repo import Repo

MODEL = "model/model.safetensors"


@pytest.fixture
def merged(tmp_path):
    base = random_weights(0, rows=16, cols=8)
    repo = committed_base(tmp_path / "work", base)
    for seed, name in enumerate("abc", start=1):
        repo.switch(name, create=True, start="main")
        write_model_folder(repo.root / "model", fine_tuned(base, seed=seed, scale=1e-2))
        repo.commit(f"train {name}", all=True)
    repo.switch("main")
    return repo


def checkout(repo: Repo, rev: str, folder):
    """The commit's model folder written out (what a user's checkout holds)."""
    from mvc.repo.materialize import materialize

    for path, data in repo.files(rev).items():
        if not path.startswith("model/"):
            continue
        out = folder / path.removeprefix("model/")
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".safetensors"):
            materialize(repo.store, repo.manifest(rev, path), out)
        elif path.endswith("config.json"):
            # mergekit looks the architecture up by name; an unknown one is inferred.
            config = {**json.loads(data), "architectures": ["MvcToyModel"]}
            out.write_text(json.dumps(config))
        else:
            out.write_bytes(data)
    return folder


@pytest.mark.slow  # mergekit's import and first merge cost about 10 s on these cores
@pytest.mark.parametrize(
    ("strategy", "params"),
    [
        ("ties", {"density": 0.4, "weights": (0.5, 0.3, 0.2)}),
        ("task_arithmetic", {"lambda_": 0.8, "weights": (0.6, 0.4, 0.3)}),
    ],
)
def test_mergekit_reproduces_the_exported_merge(merged, tmp_path, strategy, params):
    pytest.importorskip("mergekit")
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions as KitOptions
    from safetensors.torch import load_file

    options = MergeOptions(
        strategy=strategy,
        params=MergeParams(preset="mergekit", **params),
        all_tensors=True,
    )
    sha = merge(merged, ["a", "b", "c"], options).commit
    base = merged.commit_info(sha).parents[0]
    paths = {"base": str(checkout(merged, base, tmp_path / "base"))}
    for name in "abc":
        paths[name] = str(checkout(merged, name, tmp_path / name))
    text = export(merged, sha, "mergekit", paths)
    doc = yaml.safe_load(text)
    assert doc["merge_method"] == strategy and doc["base_model"] == paths["base"]
    assert [m["model"] for m in doc["models"]] == [paths[n] for n in "abc"]
    assert [m["parameters"]["weight"] for m in doc["models"]] == list(params["weights"])
    run_merge(
        MergeConfiguration.model_validate(doc),
        str(tmp_path / "out"),
        options=KitOptions(copy_tokenizer=False, lazy_unpickle=False, quiet=True),
    )
    outputs = {}
    for file in (tmp_path / "out").glob("*.safetensors"):
        outputs.update(load_file(str(file)))
    mine = merged.load_state_dict(sha, MODEL)
    assert set(outputs) == set(mine)
    for name, value in mine.items():
        torch.testing.assert_close(outputs[name].float(), value.float(), rtol=1e-6, atol=1e-6)


def test_export_notes_and_placeholders(merged):
    sha = merge(merged, ["a", "b"], MergeOptions(params=MergeParams(density=0.5))).commit
    text = export(merged, sha, "mergekit")
    assert "# note: not merged with --preset mergekit --all-tensors" in text
    doc = yaml.safe_load(text)
    assert doc["base_model"] == "./checkouts/base"
    assert [m["model"] for m in doc["models"]] == ["./checkouts/a", "./checkouts/b"]
    assert doc["models"][0]["parameters"] == {"weight": 1.0, "density": 0.5}
    with pytest.raises(MvcError, match="--model-path names 'zzz'"):
        export(merged, sha, "mergekit", {"zzz": "/x"})


def test_model_card(merged):
    sha = merge(merged, ["a", "b"], MergeOptions(params=MergeParams(density=0.5))).commit
    text = export(merged, sha, "model-card", {"a": "team/model-a"})
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == ["team/model-a", "./checkouts/b"]
    assert front["base_model_relation"] == "merge"
    assert {"mvc", "merge", "ties"} <= set(front["tags"])
    assert front["mvc"]["commit"] == sha


def test_export_refusals(merged):
    sha = merge(merged, ["a", "b"], MergeOptions(strategy="consensus")).commit
    with pytest.raises(MvcError, match="mergekit has no counterpart of strategy consensus"):
        export(merged, sha, "mergekit")
    with pytest.raises(MvcError, match="not an mvc merge commit"):
        export(merged, "a", "model-card")
