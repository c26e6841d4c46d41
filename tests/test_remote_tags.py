"""Tags travel: push carries the tags on the pushed history, fetch and clone bring them back."""

from __future__ import annotations

import pytest
from dulwich.objects import Tag
from model_factory import committed_base, fine_tuned, random_weights, write_model_folder

from mvc.remote import add_remote, clone, fetch, push
from mvc.repo.tags import create_tag, delete_tag, list_tags


@pytest.fixture(params=["path", pytest.param("s3", marks=pytest.mark.s3)])
def remote_url(request, tmp_path, monkeypatch):
    if request.param == "path":
        return str(tmp_path / "remote")
    server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{server.new_bucket()}/team/tags"


def test_tags_push_clone_and_fetch(tmp_path, remote_url):
    alice = committed_base(tmp_path / "alice")
    base = alice.head()
    create_tag(alice, "v1", message="first release")
    alice.switch("side", create=True)
    write_model_folder(alice.root / "model", fine_tuned(random_weights(0), seed=3))
    alice.commit("side work", all=True)
    create_tag(alice, "side-only")
    alice.switch("main")
    add_remote(alice, "origin", remote_url)

    report = push(alice, "origin", "main")
    assert report.refs["refs/tags/v1"] == (None, alice.git.refs[b"refs/tags/v1"].decode())
    assert "refs/tags/side-only" not in report.refs  # not on main's history
    assert push(alice, "origin", "main").refs == {}

    bob = clone(remote_url, str(tmp_path / "bob")).repo
    tags = list_tags(bob)
    assert [(t.name, t.commit, t.message) for t in tags] == [("v1", base, "first release")]
    tag_obj = bob.git[bob.git.refs[b"refs/tags/v1"]]
    assert isinstance(tag_obj, Tag) and tag_obj.id == alice.git.refs[b"refs/tags/v1"]
    assert bob.resolve("v1") == base and bob.fsck() == []

    pushed = push(alice, "origin", "side")
    assert "refs/tags/side-only" in pushed.refs
    fetched = fetch(bob, "origin")
    assert fetched.refs["refs/tags/side-only"][1] == alice.git.refs[b"refs/tags/side-only"].decode()
    assert bob.resolve("side-only") == alice.resolve("side")

    # A tag of the same name but another value is never overwritten, either way.
    delete_tag(alice, "v1")
    create_tag(alice, "v1", "side", "moved")
    again = push(alice, "origin", "side")
    assert again.rejected_tags == ["v1"] and "refs/tags/v1" not in again.refs
    assert fetch(alice, "origin").refs == {}
    assert alice.resolve("v1") == alice.resolve("side")
