"""Plain git through mvc's drivers (the real git binary), and `mvc pull` that merges."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from dulwich.protocol import pkt_seq
from hypothesis import given, settings
from hypothesis import strategies as st
from model_factory import committed_base, fine_tuned, random_weights, snapshot, write_model_folder

from mvc.cli.main import cli
from mvc.errors import ConflictError
from mvc.gitdriver.filter import MAX_PAYLOAD, GitContext, Packets, clean, serve, smudge, textconv
from mvc.gitdriver.install import ATTRIBUTES_LINE, install_git
from mvc.merge import MergeOptions, merge
from mvc.remote import add_remote, clone, pull, push
from mvc.repo import Manifest, Repo
from mvc.repo.ingest import manifest_ids_only

MODEL = "model/model.safetensors"
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")


@pytest.fixture
def git_env(tmp_path, monkeypatch):
    """An isolated git identity and config (no user or system config leaks in)."""
    home = tmp_path / "home"
    home.mkdir()
    for key, value in {
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "Ada",
        "GIT_COMMITTER_EMAIL": "ada@example.com",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("GIT_DIR", raising=False)
    return home


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{result.stderr}")
    return result


def tune(root: Path, seed: int, only: tuple[str, ...]) -> None:
    write_model_folder(root / "model", fine_tuned(random_weights(0), seed=seed, only=only))


@pytest.fixture
def repo(tmp_path, git_env):
    """`mvc init`, `mvc install-git`, then a base model committed by git itself."""
    mvc_repo = Repo.init(tmp_path / "work")
    report = install_git(mvc_repo.root)
    assert report.attributes_added
    write_model_folder(mvc_repo.root / "model", random_weights(0))
    git(mvc_repo.root, "add", ".")
    git(mvc_repo.root, "commit", "-q", "-m", "base")
    return mvc_repo


def tensor(repo: Repo, rev: str, name: str) -> bytes:
    return repo.tensor_bytes(repo.manifest(rev, MODEL).tensor(name))


def test_git_add_stores_manifests_and_checkout_is_byte_identical(repo):
    root = repo.root
    blob = git(root, "cat-file", "blob", f"HEAD:{MODEL}").stdout.encode()
    manifest = Manifest.from_bytes(blob, MODEL)
    assert all(repo.store.has(oid) for oid in manifest.object_ids())
    assert len(blob) < (root / MODEL).stat().st_size
    base = snapshot(root)

    git(root, "checkout", "-q", "-b", "math")
    tune(root, 1, ("layer.0.weight",))
    tuned = snapshot(root)
    git(root, "commit", "-q", "-am", "math")
    tuned_manifest = repo.manifest("math", MODEL).by_name()
    # Only the tuned tensor got new objects, stored as a delta against the index's version.
    assert tuned_manifest["layer.1.weight"] == manifest.by_name()["layer.1.weight"]
    new_oid = tuned_manifest["layer.0.weight"].chunk_ids[0]
    assert repo.store.info(new_oid).base == manifest.by_name()["layer.0.weight"].chunk_ids[0]

    git(root, "checkout", "-q", "main")
    assert snapshot(root) == base
    git(root, "checkout", "-q", "math")
    assert snapshot(root) == tuned
    assert git(root, "status", "--porcelain").stdout == ""
    diff = git(root, "diff", "main", "math", "--", MODEL).stdout
    changed = {
        line[1:].split("\t")[0]
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    }
    assert changed == {"layer.0.weight"}  # the textconv names the one tuned tensor


def test_mvc_and_git_agree_about_one_repository(repo):
    root = repo.root
    assert repo.status().clean
    assert [c.message.strip() for c in repo.log()] == ["base"]
    tune(root, 2, ("scale",))
    assert repo.status().unstaged == {MODEL: "modified"}
    assert git(root, "status", "--porcelain").stdout.strip() == f"M {MODEL}"
    sha = repo.commit("mvc commit", all=True)
    assert git(root, "rev-parse", "HEAD").stdout.strip() == sha
    assert git(root, "status", "--porcelain").stdout == ""
    assert git(root, "log", "--format=%s").stdout.split("\n")[:2] == ["mvc commit", "base"]
    git(root, "fsck", "--no-progress")


def _diverge(repo: Repo) -> None:
    root = repo.root
    git(root, "checkout", "-q", "-b", "a")
    tune(root, 1, ("layer.0.weight", "scale"))
    git(root, "commit", "-q", "-am", "a")
    git(root, "checkout", "-q", "-b", "b", "main")
    tune(root, 2, ("layer.0.weight", "layer.1.weight"))
    git(root, "commit", "-q", "-am", "b")


def test_git_merge_equals_mvc_merge(repo):
    root = repo.root
    _diverge(repo)
    git(root, "branch", "via-mvc", "b")
    git(root, "merge", "-q", "--no-edit", "a")
    assert git(root, "status", "--porcelain").stdout == ""
    merged_file = (root / MODEL).read_bytes()

    repo.switch("via-mvc")
    result = merge(repo, ["a"], MergeOptions())
    assert result.resolved == 1  # layer.0.weight: both sides changed it
    for name in ("embeddings.weight", "layer.0.weight", "layer.1.weight", "scale"):
        assert tensor(repo, result.commit, name) == _git_tensor(repo, "b", name)
    assert (root / MODEL).read_bytes() == merged_file


def _git_tensor(repo: Repo, rev: str, name: str) -> bytes:
    blob = git(repo.root, "cat-file", "blob", f"{rev}:{MODEL}").stdout.encode()
    return repo.tensor_bytes(Manifest.from_bytes(blob, MODEL).tensor(name))


def test_git_merge_conflict_keeps_ours_and_lists_conflicts(repo):
    root = repo.root
    git(root, "checkout", "-q", "-b", "grow")
    weights = random_weights(0)
    weights["layer.0.bias"] = weights["layer.0.bias"][:16].copy()
    write_model_folder(root / "model", weights)
    git(root, "commit", "-q", "-am", "shrink a bias")
    git(root, "checkout", "-q", "main")
    tune(root, 3, ("layer.0.bias",))
    git(root, "commit", "-q", "-am", "tune the bias")
    ours = (root / MODEL).read_bytes()
    result = git(root, "merge", "grow", check=False)
    assert result.returncode != 0
    assert "layer.0.bias: shape/dtype differ" in result.stderr
    assert (root / MODEL).read_bytes() == ours
    git(root, "merge", "--abort")
    git(root, "config", "mvc.mergeStrategy", "theirs")
    git(root, "merge", "-q", "--no-edit", "grow")
    assert repo.manifest("HEAD", MODEL).tensor("layer.0.bias").shape == (16,)


def test_smudge_passes_other_blobs_through_and_textconv_reads_both_forms(repo, tmp_path):
    ctx = GitContext.discover(repo.root)
    with ctx.spool() as spool:
        spool.write(b"not a manifest")
        spool.flush()
        assert b"".join(smudge(ctx, "x.safetensors", spool)) == b"not a manifest"
    manifest_file = tmp_path / "manifest"
    manifest_file.write_bytes(repo.read_blob(repo.tree_files("HEAD")[MODEL][0]))
    assert textconv(manifest_file) == textconv(repo.root / MODEL)
    assert "layer.0.weight\tF32[32, 32]\t" in textconv(manifest_file)


def _packets(*lists: list[bytes] | None) -> bytes:
    return b"".join(pkt_seq(*(items or [])) for items in lists)


def test_filter_process_protocol_round_trip(repo):
    ctx = GitContext.discover(repo.root)
    data = (repo.root / MODEL).read_bytes()
    chunks = [data[i : i + MAX_PAYLOAD] for i in range(0, len(data), MAX_PAYLOAD)]
    request = _packets(
        [b"git-filter-client\n", b"version=2\n"],
        [b"capability=clean\n", b"capability=smudge\n", b"capability=delay\n"],
        [b"command=clean\n", f"pathname={MODEL}\n".encode()],
        chunks,
        [b"command=smudge\n", b"pathname=broken.safetensors\n"],
        [b'{"mvc":"manifest","version":1}'],
    )
    out, errors = io.BytesIO(), io.StringIO()
    serve(ctx, io.BytesIO(request), out, errors)
    out.seek(0)
    answer = Packets(out, io.BytesIO())
    assert answer.read_list() == ["git-filter-server", "version=2"]
    assert answer.read_list() == ["capability=clean", "capability=smudge"]
    assert answer.read_list() == ["status=success"]
    manifest = b"".join(answer.read_content())
    assert answer.read_list() == []
    assert manifest == git(repo.root, "cat-file", "blob", f"HEAD:{MODEL}").stdout.encode()
    assert answer.read_list() == ["status=error"]
    assert "broken.safetensors: malformed manifest" in errors.getvalue()


@settings(deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=200), max_size=5))
def test_pktline_round_trip(payloads):
    stream = io.BytesIO()
    writer = Packets(io.BytesIO(), stream)
    writer.write_content(payloads)
    writer.flush()
    stream.seek(0)
    assert b"".join(Packets(stream, io.BytesIO()).read_content()) == b"".join(payloads)


def test_install_git_cli_is_idempotent(tmp_path, git_env, monkeypatch):
    git(tmp_path, "init", "-q", "plain")
    monkeypatch.chdir(tmp_path / "plain")
    runner = CliRunner()
    first = runner.invoke(cli, ["install-git"])
    assert first.exit_code == 0, first.output
    assert "added to" in first.output
    again = runner.invoke(cli, ["install-git"])
    assert "already in" in again.output
    assert (tmp_path / "plain" / ".gitattributes").read_text() == ATTRIBUTES_LINE + "\n"
    assert (tmp_path / "plain" / ".git" / "mvc" / "objects").is_dir()
    config = git(tmp_path / "plain", "config", "merge.mvc.driver").stdout
    assert config.strip().endswith("-m mvc.cli.main git-merge %O %A %B %P")
    assert runner.invoke(cli, ["install-git", "--global"]).exit_code == 0
    assert "git-filter-process" in (git_env / ".gitconfig").read_text()
    monkeypatch.chdir(tmp_path)
    outside = runner.invoke(cli, ["install-git"])
    assert outside.exit_code == 1 and "not a git repository" in outside.output


# ---------------------------------------------------------------------------------- pull
@pytest.fixture
def team(tmp_path):
    """alice pushed a base to a path remote; bob cloned it."""
    alice = committed_base(tmp_path / "alice")
    add_remote(alice, "origin", str(tmp_path / "remote"))
    push(alice, "origin", "main", quiet=True)
    bob = clone(str(tmp_path / "remote"), str(tmp_path / "bob"), quiet=True).repo
    return alice, bob


def _commit_tune(repo: Repo, seed: int, only: tuple[str, ...], message: str) -> str:
    tune(repo.root, seed, only)
    return repo.commit(message, all=True)


def test_pull_fast_forwards_or_merges_diverged_branches_with_ties(team):
    alice, bob = team
    first = _commit_tune(alice, 1, ("layer.0.weight",), "alice 1")
    push(alice, quiet=True)
    assert pull(bob, quiet=True).outcome == "fast-forward" and bob.head() == first

    theirs = _commit_tune(alice, 2, ("layer.0.weight", "scale"), "alice 2")
    push(alice, quiet=True)
    ours = _commit_tune(bob, 3, ("layer.0.weight", "layer.1.weight"), "bob")
    result = pull(bob, quiet=True)
    assert result.outcome == "merged" and result.merge is not None
    assert bob.git[result.commit.encode()].parents == [ours.encode(), theirs.encode()]
    assert result.merge.resolved == 1

    bob.create_branch("check", ours)
    bob.switch("check")
    direct = merge(bob, [theirs], MergeOptions())
    for name in ("layer.0.weight", "layer.1.weight", "scale", "embeddings.weight"):
        assert tensor(bob, result.commit, name) == tensor(bob, direct.commit, name)
    assert bob.fsck() == []


def test_pull_conflict_writes_nothing(team):
    alice, bob = team
    weights = random_weights(0)
    weights["scale"] = weights["scale"].reshape(1)
    write_model_folder(alice.root / "model", weights)
    alice.commit("reshape scale", all=True)
    push(alice, quiet=True)
    ours = _commit_tune(bob, 4, ("scale",), "tune scale")
    before = snapshot(bob.root)
    with pytest.raises(ConflictError, match="scale: shape/dtype differ"):
        pull(bob, quiet=True)
    assert bob.head() == ours and snapshot(bob.root) == before and bob.status().clean
    assert bob.resolve("origin/main") == alice.head()  # the fetch itself is kept


def test_pull_cli_options_and_ff_only(team, monkeypatch):
    alice, bob = team
    _commit_tune(alice, 5, ("layer.0.weight",), "alice")
    push(alice, quiet=True)
    ours = _commit_tune(bob, 6, ("layer.0.weight",), "bob")
    monkeypatch.chdir(bob.root)
    runner = CliRunner()
    refused = runner.invoke(cli, ["pull", "--ff-only", "-q"])
    assert refused.exit_code == 1 and "diverged" in refused.output
    done = runner.invoke(
        cli, ["pull", "origin", "main", "--strategy", "ties", "--density", "0.5", "-m", "sync"]
    )
    assert done.exit_code == 0, done.output
    assert "Merged into" in done.output
    head = Repo.open(bob.root)
    assert head.commit_info("HEAD").message.strip() == "sync"
    assert head.git[head.head().encode()].parents[0] == ours.encode()
    assert os.path.exists(bob.root / MODEL)


def _safetensors_starting_with_brace(path: Path) -> None:
    """A valid file whose header length (its first 8 bytes) begins with the byte "{"."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    header = header.ljust(0x17B)  # 0x17b: low byte 0x7b is "{"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(8))


def test_a_model_file_starting_with_a_brace_is_not_taken_for_a_manifest(repo, tmp_path):
    ctx = GitContext.discover(repo.root)
    model = tmp_path / "odd.safetensors"
    _safetensors_starting_with_brace(model)
    assert model.read_bytes()[:1] == b"{"
    assert textconv(model) == f"w\tF32[2]\t{manifest_ids_only(model).tensors[0].chunk_ids[0]}\n"
    with ctx.spool() as spool:
        spool.write(model.read_bytes())
        spool.flush()
        blob = clean(ctx, "odd.safetensors", spool)
    assert Manifest.from_bytes(blob, "odd.safetensors").tensors[0].name == "w"


def test_a_deeply_nested_blob_passes_through_the_filter(repo):
    """A blob that is JSON but no manifest (here nested past Python's recursion limit)."""
    ctx = GitContext.discover(repo.root)
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with ctx.spool() as spool:
        spool.write(deep)
        spool.flush()
        assert b"".join(smudge(ctx, "deep.safetensors", spool)) == deep
