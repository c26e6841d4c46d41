"""Defaults and refusals that live in the library, so the Python API and the CLI agree."""

from __future__ import annotations

import pytest
from model_factory import fine_tuned, random_weights, write_model_folder

from mvc.errors import MvcError
from mvc.formats.hf import import_checkpoint
from mvc.lineage.extract import extract
from mvc.merge import MergeOptions, MergeParams, merge
from mvc.remote import add_remote, push, set_upstream


def test_push_without_a_remote_goes_to_the_branch_upstream(tmp_path, base_repo):
    repo = base_repo
    add_remote(repo, "origin", str(tmp_path / "origin"))
    add_remote(repo, "team", str(tmp_path / "team"))
    set_upstream(repo, "main", "team")
    report = push(repo, quiet=True)
    assert report.remote == str(tmp_path / "team")
    assert "refs/heads/main" in report.refs
    assert not (tmp_path / "origin").exists()


def test_push_without_upstream_goes_to_origin(tmp_path, base_repo):
    repo = base_repo
    add_remote(repo, "origin", str(tmp_path / "origin"))
    assert push(repo, quiet=True).remote == str(tmp_path / "origin")


def test_import_refuses_to_replace_a_file_before_loading_anything(tmp_path):
    source = tmp_path / "pytorch_model.bin"
    source.write_bytes(b"not a pickle: loading it would fail differently")
    (tmp_path / "pytorch_model.safetensors").write_bytes(b"keep me")
    with pytest.raises(MvcError, match="pytorch_model.safetensors already exists"):
        import_checkpoint(source)
    with pytest.raises(MvcError, match="keep.safetensors already exists"):
        (tmp_path / "keep.safetensors").write_bytes(b"")
        import_checkpoint(source, tmp_path / "keep.safetensors")
    assert (tmp_path / "pytorch_model.safetensors").read_bytes() == b"keep me"


def test_extract_writes_extract_parent_by_default(tmp_path, base_repo, monkeypatch):
    repo = base_repo
    base = random_weights(0)
    for seed, name in enumerate(("a", "b"), start=1):
        repo.switch(name, create=True, start="main")
        write_model_folder(repo.root / "model", fine_tuned(base, seed=seed, only=("scale",)))
        repo.commit(f"train {name}", all=True)
    repo.switch("main")
    sha = merge(repo, ["a", "b"], MergeOptions(params=MergeParams(density=1.0))).commit
    monkeypatch.chdir(tmp_path)
    result = extract(repo, sha, "a")
    assert result.out_dir is not None and str(result.out_dir) == "extract-a"
    assert (tmp_path / "extract-a" / "model" / "model.safetensors").is_file()
