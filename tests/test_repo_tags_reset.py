"""`mvc tag` and `mvc reset`: annotated tags, the three reset modes, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from dulwich.objects import Tag
from model_factory import committed_base, fine_tuned, random_weights, snapshot, write_model_folder

from mvc.cli.main import cli
from mvc.errors import MvcError, NotFoundError
from mvc.repo import Repo
from mvc.repo.reset import reset
from mvc.repo.tags import create_tag, delete_tag, list_tags


@pytest.fixture
def history(tmp_path) -> tuple[Repo, str, str]:
    repo = committed_base(tmp_path / "repo")
    first = repo.head()
    write_model_folder(repo.root / "model", fine_tuned(random_weights(0), seed=1))
    second = repo.commit("tuned", all=True)
    return repo, first, second


def _run(repo: Repo, *args: str):
    return CliRunner().invoke(cli, ["-C", str(repo.root), *args])


def test_tag_is_annotated_lists_resolves_and_deletes(history):
    repo, first, second = history
    info = create_tag(repo, "v1", first, "first release\n\nnotes")
    obj = repo.git[repo.git.refs[b"refs/tags/v1"]]
    assert isinstance(obj, Tag) and obj.object[1].decode() == first
    assert obj.message == b"first release\n\nnotes\n"
    assert info.commit == first and repo.resolve("v1") == first
    create_tag(repo, "v2")
    assert [(t.name, t.commit) for t in list_tags(repo)] == [("v1", first), ("v2", second)]
    assert delete_tag(repo, "v1") == first
    assert [t.name for t in list_tags(repo)] == ["v2"]
    with pytest.raises(NotFoundError):
        repo.resolve("v1")


def test_tag_cli_and_bad_input_change_nothing(history):
    repo, first, _ = history
    assert _run(repo, "tag", "v1", first, "-m", "release").exit_code == 0
    listing = _run(repo, "tag")
    assert listing.output.split()[:3] == ["v1", first[:12], "release"]
    refs_before = dict(repo.git.get_refs())
    again = _run(repo, "tag", "v1")
    assert again.exit_code == 1
    assert again.output.splitlines()[0] == "mvc: error: tag 'v1' already exists"
    unknown = _run(repo, "tag", "v3", "nosuchrev")
    assert unknown.exit_code == 1 and "unknown revision 'nosuchrev'" in unknown.output
    bad = _run(repo, "tag", "a..b")
    assert bad.exit_code == 1 and "not a valid tag name" in bad.output
    assert dict(repo.git.get_refs()) == refs_before
    gone = _run(repo, "tag", "-d", "v9")
    assert gone.exit_code == 1 and "tag 'v9' not found" in gone.output
    assert _run(repo, "tag", "-d", "v1").exit_code == 0
    assert b"refs/tags/v1" not in repo.git.refs


def test_reset_soft_mixed_hard(history):
    repo, first, second = history
    tuned = snapshot(repo.root / "model")

    reset(repo, first, "soft")
    assert repo.head() == first
    st = repo.status()
    assert st.staged and not st.unstaged  # the index still holds the tuned model
    assert snapshot(repo.root / "model") == tuned

    reset(repo, second, "soft")
    assert repo.status().clean

    reset(repo, first, "mixed")
    st = repo.status()
    assert repo.head() == first and not st.staged and st.unstaged
    assert snapshot(repo.root / "model") == tuned

    reset(repo, second, "mixed")
    assert repo.status().clean

    reset(repo, "HEAD~1", "hard")
    assert repo.head() == first and repo.status().clean
    assert snapshot(repo.root / "model") != tuned
    assert repo.branches()[0].commit == first


def test_reset_to_unknown_revision_changes_nothing(history):
    repo, _, second = history
    (repo.root / "model" / "config.json").write_text("{}")
    before = snapshot(repo.root)
    index = Path(repo.root / ".git" / "index").read_bytes()
    result = _run(repo, "reset", "--hard", "nosuchrev")
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "mvc: error: unknown revision 'nosuchrev'"
    assert repo.head() == second and snapshot(repo.root) == before
    assert Path(repo.root / ".git" / "index").read_bytes() == index
    with pytest.raises(MvcError):
        reset(repo, "HEAD", "sideways")
