"""Repository round trips: commit, branch, switch, checkout give back every byte."""

from __future__ import annotations

import pytest
from model_factory import (
    fine_tuned,
    random_weights,
    snapshot,
    write_model_folder,
    write_safetensors_np,
    write_unusual,
)

from mvc.errors import ConflictError, FormatError, MvcError, NotFoundError
from mvc.repo import Repo


@pytest.fixture
def repo(tmp_path):
    return Repo.init(tmp_path / "work")


def commit_folder(repo: Repo, message: str) -> str:
    repo.add([repo.root / "model"])
    return repo.commit(message)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shards", [1, 3])
def test_branch_switch_round_trip_is_byte_identical(repo, bf16, shards):
    base = random_weights(0)
    write_model_folder(repo.root / "model", base, bf16=bf16, shards=shards)
    commit_folder(repo, "base")
    base_files = snapshot(repo.root)

    repo.switch("ft", create=True)
    write_model_folder(repo.root / "model", fine_tuned(base), bf16=bf16, shards=shards)
    repo.commit("fine-tune", all=True)
    ft_files = snapshot(repo.root)
    assert ft_files != base_files

    for _ in range(2):
        repo.switch("main")
        assert snapshot(repo.root) == base_files
        repo.switch("ft")
        assert snapshot(repo.root) == ft_files
    assert repo.status().clean


def test_foreign_header_layout_round_trips(repo):
    write_unusual(repo.root / "model" / "model.safetensors", random_weights(3))
    before = snapshot(repo.root)
    commit_folder(repo, "hand-written header")
    (repo.root / "model" / "model.safetensors").unlink()
    repo.checkout(paths=[repo.root / "model" / "model.safetensors"])
    assert snapshot(repo.root) == before


def test_metadata_preserved(repo):
    write_safetensors_np(
        repo.root / "model" / "model.safetensors",
        random_weights(4),
        metadata={"format": "pt", "origin": "test"},
    )
    before = snapshot(repo.root)
    commit_folder(repo, "meta")
    repo.switch("other", create=True)
    (repo.root / "model" / "model.safetensors").unlink()
    repo.commit("drop", all=True)
    repo.switch("main")
    assert snapshot(repo.root) == before


def test_status_tracks_changes(repo):
    write_model_folder(repo.root / "model", random_weights(0))
    st = repo.status()
    assert "model/model.safetensors" in st.untracked
    commit_folder(repo, "base")
    assert repo.status().clean and not repo.status().untracked
    write_model_folder(repo.root / "model", fine_tuned(random_weights(0)))
    assert repo.status().unstaged == {"model/model.safetensors": "modified"}
    (repo.root / "model" / "config.json").unlink()
    assert repo.status().unstaged["model/config.json"] == "deleted"
    repo.add([repo.root / "model"])
    st = repo.status()
    assert st.staged == {"model/model.safetensors": "modified", "model/config.json": "deleted"}


def test_touch_without_change_is_clean(repo):
    write_model_folder(repo.root / "model", random_weights(0))
    commit_folder(repo, "base")
    path = repo.root / "model" / "model.safetensors"
    path.write_bytes(path.read_bytes())  # new mtime, same bytes
    assert repo.status().clean


def test_readding_unchanged_model_costs_a_stat(repo, monkeypatch):
    write_model_folder(repo.root / "model", random_weights(0))
    commit_folder(repo, "base")
    import mvc.repo.changes as changes

    def refuse(*args, **kwargs):
        raise AssertionError("an unchanged file was re-read")

    monkeypatch.setattr(changes, "ingest_file", refuse)
    assert repo.add([repo.root / "model"]) == []


def test_fine_tune_only_stores_changed_tensors(repo):
    base = random_weights(0, rows=512)
    write_model_folder(repo.root / "model", base)
    commit_folder(repo, "base")
    objects_before = set(repo.store.ids())
    write_model_folder(repo.root / "model", fine_tuned(base, only=("layer.0.bias",)))
    repo.commit("bias only", all=True)
    new_objects = set(repo.store.ids()) - objects_before
    assert len(new_objects) == 1


def test_switch_refuses_dirty_tree_unless_forced(repo):
    write_model_folder(repo.root / "model", random_weights(0))
    commit_folder(repo, "base")
    repo.switch("ft", create=True)
    write_model_folder(repo.root / "model", fine_tuned(random_weights(0)))
    repo.commit("ft", all=True)
    dirty = fine_tuned(random_weights(0), seed=9)
    write_model_folder(repo.root / "model", dirty)
    before = snapshot(repo.root)
    with pytest.raises(ConflictError, match="uncommitted changes"):
        repo.switch("main")
    assert snapshot(repo.root) == before and repo.current_branch() == "ft"
    repo.switch("main", force=True)
    assert repo.current_branch() == "main" and repo.status().clean


def test_bad_model_file_changes_nothing(repo):
    write_model_folder(repo.root / "model", random_weights(0))
    commit_folder(repo, "base")
    index_before = (repo.root / ".git" / "index").read_bytes()
    objects_before = set(repo.store.ids())
    good = repo.root / "model" / "model.safetensors"
    (repo.root / "model" / "broken.safetensors").write_bytes(good.read_bytes()[:-10])
    with pytest.raises(FormatError, match="broken.safetensors"):
        repo.add([repo.root / "model"])
    assert (repo.root / ".git" / "index").read_bytes() == index_before
    assert set(repo.store.ids()) == objects_before


def test_pickles_are_refused(repo):
    (repo.root / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(FormatError, match="pickle"):
        repo.add([repo.root / "pytorch_model.bin"])


def test_paths_outside_the_tree_are_refused(repo, tmp_path):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    with pytest.raises(FormatError, match="outside"):
        repo.add([outside])


def test_manifest_with_escaping_path_is_refused(repo):
    with pytest.raises(FormatError, match="unsafe path"):
        repo.commit_tree({"../evil.txt": b"x"}, [], "evil")


def test_log_and_detached_checkout(repo):
    write_model_folder(repo.root / "model", random_weights(0))
    first = commit_folder(repo, "base")
    write_model_folder(repo.root / "model", fine_tuned(random_weights(0)))
    second = repo.commit("second", all=True)
    assert [c.id for c in repo.log()] == [second, first]
    assert repo.resolve("HEAD~1") == first and repo.resolve(second[:8]) == second
    repo.checkout(first)
    assert repo.current_branch() is None and repo.head() == first
    repo.switch("main")
    assert repo.head() == second


def test_unknown_revision_and_empty_commit(repo):
    with pytest.raises(NotFoundError):
        repo.resolve("nope")
    write_model_folder(repo.root / "model", random_weights(0))
    commit_folder(repo, "base")
    with pytest.raises(MvcError, match="nothing to commit"):
        repo.commit("again")


def test_state_dict_round_trip(repo):
    torch = pytest.importorskip("torch")
    sd = {"w": torch.randn(5, 3), "b": torch.randn(3).to(torch.bfloat16)}
    repo.commit_state_dict(sd, "model/model.safetensors", "from a training loop")
    loaded = repo.load_state_dict("HEAD", "model/model.safetensors")
    assert set(loaded) == {"w", "b"}
    assert torch.equal(loaded["w"], sd["w"]) and torch.equal(loaded["b"], sd["b"])
    assert (repo.root / "model" / "model.safetensors").exists()
    assert repo.status().clean
    from safetensors.torch import load_file

    on_disk = load_file(str(repo.root / "model" / "model.safetensors"))
    assert torch.equal(on_disk["w"], sd["w"])


def test_fsck_finds_flipped_byte(repo):
    write_model_folder(repo.root / "model", random_weights(0))
    commit_folder(repo, "base")
    assert repo.fsck() == []
    victim = sorted(repo.store.ids())[0]
    path = repo.store.path(victim)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    problems = repo.fsck()
    assert any(victim in p for p in problems)


def test_gc_keeps_committed_and_drops_orphans(repo):
    base = random_weights(0)
    write_model_folder(repo.root / "model", base)
    commit_folder(repo, "base")
    write_model_folder(repo.root / "model", fine_tuned(base))
    repo.add([repo.root / "model"])  # staged, referenced by the index
    kept = set(repo.store.ids())
    repo.gc()
    assert set(repo.store.ids()) == kept
    write_model_folder(repo.root / "model", base)  # the staged fine-tune is abandoned
    repo.add([repo.root / "model"])
    repo.gc()
    assert len(set(repo.store.ids())) < len(kept)
    assert repo.fsck() == []
