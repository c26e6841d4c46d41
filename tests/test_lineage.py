"""Lineage and audit on synthetic repositories: verify, forgery, unmerge, extract, blame, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from model_factory import committed_base, fine_tuned, random_weights, write_model_folder

from mvc.errors import FormatError, MvcError, NotFoundError
from mvc.lineage.blame import blame
from mvc.lineage.extract import extract
from mvc.lineage.records import merge_record
from mvc.lineage.unmerge import unmerge
from mvc.lineage.verify import verify
from mvc.merge import MergeOptions, MergeParams, merge
from mvc.merge.record import MERGE_RECORD, RECORD_PATH
from mvc.repo import Manifest, Repo
from mvc.repo.manifest import Chunk

MODEL = "model/model.safetensors"


def tensors(repo: Repo, rev: str) -> dict[str, tuple[str, ...]]:
    return {n: e.chunk_ids for n, e in repo.manifest(rev, MODEL).by_name().items()}


@pytest.fixture
def three(base_repo):
    """main = base; a, b, c fine-tune overlapping tensors; c alone changes the embeddings."""
    repo, base = base_repo, random_weights(0)
    edits = {
        "a": ("layer.0.weight", "layer.0.bias"),
        "b": ("layer.0.weight", "layer.1.weight"),
        "c": ("layer.0.weight", "layer.1.weight", "embeddings.weight"),
    }
    for seed, (name, only) in enumerate(edits.items(), start=1):
        repo.switch(name, create=True, start="main")
        write_model_folder(repo.root / "model", fine_tuned(base, seed=seed, scale=1e-2, only=only))
        repo.commit(f"train {name}", all=True)
    repo.switch("main")
    return repo


def octopus(repo: Repo, strategy: str = "ties", **params) -> str:
    options = MergeOptions(strategy=strategy, params=MergeParams(**params))
    return merge(repo, ["a", "b", "c"], options).commit


@pytest.mark.parametrize(
    ("strategy", "params"),
    [
        ("ties", {"density": 0.5}),
        ("dare_ties", {"density": 0.6, "seed": 7}),
        ("consensus", {}),
        ("task_arithmetic", {"lambda_": 0.7}),
    ],
)
def test_verify_passes_on_octopus_merges(three, strategy, params):
    sha = octopus(three, strategy, **params)
    objects = set(three.store.ids())
    report = verify(three, "HEAD", device="cpu")
    assert report.ok, report.mismatches
    assert report.commit == sha and report.resolved == 2  # layer.0.weight, layer.1.weight
    assert report.tensors == 5
    assert set(three.store.ids()) == objects  # verify stores nothing


def test_verify_two_way_merge_into_changed_head(three):
    three.switch("a")
    result = merge(three, ["b"], MergeOptions(params=MergeParams(density=0.4, preset="mergekit")))
    assert len(merge_record(three, result.commit)[1]["contributing"]) == 2
    assert verify(three, result.commit, device="cpu").ok


def forge(repo: Repo, sha: str, tensor: str, delta: float = 1e-3, record=None) -> str:
    """A commit with the merge's parents and record, but `tensor` edited."""
    files = {p: d for p, d in repo.files(sha).items()}
    manifest = Manifest.from_bytes(files[MODEL], MODEL)
    entries = []
    for entry in manifest.tensors:
        if entry.name == tensor:
            data = np.frombuffer(repo.tensor_bytes(entry), dtype=np.float32).copy()
            data[3] += delta
            shape = entry.shape
            oid = repo.store.put(data.tobytes(), entry.dtype, shape)
            entry = dataclasses.replace(entry, chunks=(Chunk(0, shape[0] if shape else 1, oid),))
        entries.append(entry)
    files[MODEL] = Manifest(manifest.header_raw, tuple(entries)).to_bytes()
    if record is not None:
        files[RECORD_PATH] = MERGE_RECORD.encode(record)
    parents = list(repo.commit_info(sha).parents)
    return repo.commit_tree(files, parents, "forged", update_ref=False, update_worktree=False)


@pytest.mark.parametrize("tensor", ["layer.0.weight", "embeddings.weight"])
def test_forged_merge_fails_verify_naming_the_tensor(three, tensor):
    sha = octopus(three, density=0.5)
    forged = forge(three, sha, tensor)
    report = verify(three, forged, device="cpu")
    assert not report.ok
    assert [(m.path, m.tensor) for m in report.mismatches] == [(MODEL, tensor)]
    assert report.mismatches[0].max_abs_diff == pytest.approx(1e-3, rel=1e-3)


def test_other_device_class_tolerates_small_differences(three):
    sha = octopus(three, density=0.5)
    record = merge_record(three, sha)[1]
    forged = forge(three, sha, "layer.0.weight", delta=1e-7, record={**record, "device": "cuda:0"})
    report = verify(three, forged, device="cpu", tolerance=1e-5)
    assert report.ok and [m.tensor for m in report.tolerated] == ["layer.0.weight"]
    assert not verify(three, forged, device="cpu", tolerance=1e-9).ok


def test_verify_cli_exit_codes(three, monkeypatch):
    from click.testing import CliRunner

    from mvc.cli.main import cli

    sha = octopus(three, density=0.5)
    forged = forge(three, sha, "layer.0.weight")
    monkeypatch.chdir(three.root)
    ok = CliRunner().invoke(cli, ["verify", "HEAD", "-q", "--device", "cpu"])
    assert ok.exit_code == 0 and "verified" in ok.output
    bad = CliRunner().invoke(cli, ["verify", forged, "-q", "--device", "cpu"])
    assert bad.exit_code == 1
    assert f"MISMATCH {MODEL}::layer.0.weight" in bad.output and "max abs diff" in bad.output


@pytest.mark.parametrize("strategy", ["ties", "consensus", "dare_ties"])
def test_unmerge_equals_merging_the_others(three, strategy):
    sha = octopus(three, strategy, density=0.5, weights=(0.5, 0.3, 0.2))
    result = unmerge(three, "HEAD", "b", device="cpu")
    assert result.result == "recomputed" and result.remaining == ["a", "c"]
    assert three.head() == result.commit
    assert list(three.commit_info(result.commit).parents) == [sha]
    unmerged = tensors(three, result.commit)
    assert verify(three, result.commit, device="cpu").ok
    # Merging a and c directly, weights without b's.
    three.switch("direct", create=True, start=three.commit_info(sha).parents[0])
    options = MergeOptions(strategy=strategy, params=MergeParams(density=0.5, weights=(0.5, 0.2)))
    direct = merge(three, ["a", "c"], options).commit
    assert unmerged == tensors(three, direct)
    assert three.read_file(result.commit, "model/config.json") == three.read_file(
        direct, "model/config.json"
    )


def test_unmerge_down_to_one_parent_is_that_parent(three):
    three.switch("ab", create=True, start="main")  # main is still the base here
    merge(three, ["a", "b"], MergeOptions(params=MergeParams(density=0.5)))
    result = unmerge(three, "HEAD", "a", message="drop a")
    assert result.result == "parent"
    assert tensors(three, result.commit) == tensors(three, "b")
    assert three.commit_info(result.commit).message.strip() == "drop a"
    from mvc.lineage import recipe_line

    assert recipe_line(three, result.commit) == f"unmerge of {result.unmerge_of[:12]} dropping a"


def test_unmerge_by_index_and_commit(three):
    octopus(three, density=0.5)
    record = merge_record(three, "HEAD")[1]
    from mvc.lineage.records import parent_index

    assert parent_index(record, "2") == 2
    assert parent_index(record, three.resolve("c")[:10]) == 3
    assert parent_index(record, "c") == 3
    with pytest.raises(NotFoundError, match="'zzz' is not a parent"):
        parent_index(record, "zzz", three)


def test_extract_one_sided_exact_and_resolved_close(three):
    sha = octopus(three, density=1.0)
    out = three.root.parent / "c-out"
    result = extract(three, sha, "c", out)
    assert result.reconstructed == 2 and result.relative_l2 is not None
    from safetensors.numpy import load_file

    rebuilt = load_file(str(out / MODEL))
    parent = {k: v.float().numpy() for k, v in three.load_state_dict("c", MODEL).items()}
    base_sha = three.commit_info(sha).parents[0]
    base = {k: v.float().numpy() for k, v in three.load_state_dict(base_sha, MODEL).items()}
    np.testing.assert_array_equal(rebuilt["embeddings.weight"], parent["embeddings.weight"])
    np.testing.assert_array_equal(rebuilt["layer.0.bias"], base["layer.0.bias"])  # a's edit
    for name in ("layer.0.weight", "layer.1.weight"):
        err = np.linalg.norm(rebuilt[name] - parent[name]) / np.linalg.norm(parent[name])
        moved = np.linalg.norm(base[name] - parent[name]) / np.linalg.norm(parent[name])
        assert err < moved  # closer to the parent than the base is
        assert result.tensor_errors[name] == pytest.approx(err, rel=1e-4)
    assert (out / "model/config.json").read_bytes() == three.read_file(sha, "model/config.json")
    assert not (out / ".mvc").exists()


def test_extract_commit_as_branch(three):
    sha = octopus(three, density=0.5)
    result = extract(three, sha, "a", branch="a-rebuilt")
    assert three.resolve("a-rebuilt") == result.commit
    rebuilt = tensors(three, "a-rebuilt")
    assert rebuilt["layer.0.bias"] == tensors(three, "a")["layer.0.bias"]
    base_sha = three.commit_info(sha).parents[0]
    assert rebuilt["embeddings.weight"] == tensors(three, base_sha)["embeddings.weight"]
    from mvc.lineage import recipe_line

    assert recipe_line(three, result.commit) == f"extract of a from {sha[:12]}"
    assert not three.fsck()


def test_blame_shares_and_last_change(three):
    three.switch("c")
    weights = {k: v.float().numpy() for k, v in three.load_state_dict("c", MODEL).items()}
    weights["layer.1.weight"] = weights["layer.1.weight"] + 0.01
    write_model_folder(three.root / "model", weights)
    later = three.commit("c again", all=True)
    three.switch("main")
    base_sha = three.head()
    sha = octopus(three, density=0.5)
    report = blame(three, sha, f"{MODEL}::layer.0.weight")
    assert report.action == "resolve" and report.strategy == "ties"
    shares = {s.name: s.share for s in report.sides}
    stats = merge_record(three, sha)[1]["files"][MODEL]["tensors"]["layer.0.weight"]["stats"]
    assert shares["a"] == stats["contributed"][0] / report.numel
    assert 0 < shares["a"] <= 0.5 and shares[base_sha[:12]] == 0
    assert report.conflicts == stats["conflicts"] > 0
    last = {s.name: s.last_changed for s in report.sides}
    assert last["a"] == three.resolve("a") and last["c"] == three.resolve("c~1")
    assert last[base_sha[:12]] == base_sha
    moved = {s.name: s.last_changed for s in blame(three, sha, f"{MODEL}::layer.1.weight").sides}
    assert moved["c"] == later
    one = blame(three, sha, f"{MODEL}::embeddings.weight")
    assert [s.share for s in one.sides] == [0, 0, 0, 1.0]


def test_errors(three):
    sha = octopus(three, density=0.5)
    with pytest.raises(MvcError, match="not an mvc merge commit"):
        unmerge(three, "a", "b")
    with pytest.raises(MvcError, match="not an mvc merge commit"):
        extract(three, "a", "b", three.root.parent / "x")
    with pytest.raises(NotFoundError, match="not a parent"):
        extract(three, sha, "nobody", three.root.parent / "x")
    with pytest.raises(NotFoundError, match="not a parent"):
        unmerge(three, sha, "nobody")
    with pytest.raises(MvcError, match="does not name a tensor"):
        blame(three, sha, MODEL)
    record = merge_record(three, sha)[1]
    future = {**record, "schema_version": 99}
    files = {**three.files(sha), RECORD_PATH: json.dumps(future).encode()}
    odd = three.commit_tree(files, record["parents"], "future", update_ref=False)
    for call in (lambda: verify(three, odd), lambda: unmerge(three, odd, "a")):
        with pytest.raises(FormatError, match="schema version 99"):
            call()
    three.switch("a")
    with pytest.raises(MvcError, match="HEAD is not"):
        unmerge(three, sha, "b")


def _with_unpacked_masks(repo: Repo, sha: str) -> str:
    """The same merge as an older mvc recorded it: one mask object per branch."""
    record = merge_record(repo, sha)[1]
    for item in record["files"][MODEL]["tensors"].values():
        packed = item.get("masks")
        if packed is None:
            continue
        data = repo.store.get(packed)
        rows = len(item["branches"])
        width = len(data) // rows
        item["masks"] = [
            repo.store.put(data[i * width : (i + 1) * width], "U8", (width,)) for i in range(rows)
        ]
    record["store_objects"] = sorted(
        oid for item in record["files"][MODEL]["tensors"].values() for oid in item.get("masks", [])
    )
    files = dict(repo.files(sha))
    files[RECORD_PATH] = MERGE_RECORD.encode(record)
    parents = list(repo.commit_info(sha).parents)
    return repo.commit_tree(files, parents, "old", update_ref=False, update_worktree=False)


def test_records_with_a_mask_object_per_branch_still_verify_and_extract(three):
    sha = octopus(three, density=0.5)
    old = _with_unpacked_masks(three, sha)
    assert isinstance(
        merge_record(three, sha)[1]["files"][MODEL]["tensors"]["layer.0.weight"]["masks"], str
    )
    assert verify(three, old, device="cpu").ok
    new_out, old_out = three.root.parent / "new-out", three.root.parent / "old-out"
    extract(three, sha, "b", new_out)
    extract(three, old, "b", old_out)
    assert (new_out / MODEL).read_bytes() == (old_out / MODEL).read_bytes()


def test_extract_of_a_bf16_merge_follows_the_masks_bit_for_bit(tmp_path):
    """bf16 is kept as bit patterns (numpy has none): the rebuild picks merged or base bits."""
    import torch

    base = random_weights(0)
    repo = committed_base(tmp_path / "work", base, bf16=True)
    for seed, name in enumerate(("a", "b"), start=1):
        repo.switch(name, create=True, start="main")
        tuned = fine_tuned(base, seed=seed, scale=1e-2, only=("layer.0.weight",))
        write_model_folder(repo.root / "model", tuned, bf16=True)
        repo.commit(name, all=True)
    repo.switch("main")
    sha = merge(repo, ["a", "b"], MergeOptions(params=MergeParams(density=0.5))).commit
    out = tmp_path / "a-out"
    result = extract(repo, sha, "a", out)
    assert result.reconstructed == 1 and result.relative_l2 is not None
    item = merge_record(repo, sha)[1]["files"][MODEL]["tensors"]["layer.0.weight"]
    masks = np.frombuffer(repo.store.get(item["masks"]), dtype=np.uint8).reshape(2, -1)
    keep = np.unpackbits(masks[item["branches"].index(1)], bitorder="little")[: 32 * 32]

    def bits(rev: str) -> np.ndarray:
        t = repo.load_state_dict(rev, MODEL)["layer.0.weight"]
        return t.view(torch.int16).numpy().reshape(-1)

    from safetensors.torch import load_file

    rebuilt = load_file(str(out / MODEL))["layer.0.weight"].view(torch.int16).numpy().reshape(-1)
    expected = np.where(keep.astype(bool), bits(sha), bits(repo.commit_info(sha).parents[0]))
    assert np.array_equal(rebuilt, expected)


def test_verify_and_extract_never_import_torch(three, assert_no_torch):
    """Like a CPU merge, they compute on numpy: no torch import for the CLI to pay."""
    sha = octopus(three, density=0.5)
    code = (
        "from mvc.lineage.extract import extract\n"
        "from mvc.lineage.verify import verify\n"
        "from mvc.repo import Repo\n"
        "repo = Repo.open('.')\n"
        f"assert verify(repo, '{sha}', device='cpu').ok\n"
        f"extract(repo, '{sha}', 'b', '../b-out')\n"
    )
    assert_no_torch(code, three.root)


@pytest.mark.parametrize("tensor", ["layer.0.weight", "layer.1.weight"])
def test_verify_fail_fast_stops_at_the_tampered_tensor_and_names_it(three, monkeypatch, tensor):
    from click.testing import CliRunner

    from mvc.cli.main import cli

    sha = octopus(three, density=0.5)
    assert verify(three, sha, device="cpu", fail_fast=True).ok
    forged = forge(three, sha, tensor)
    report = verify(three, forged, device="cpu", fail_fast=True)
    assert report.stopped and not report.ok
    assert [(m.path, m.tensor, m.reason) for m in report.mismatches] == [
        (MODEL, tensor, "content differs")
    ]
    assert report.mismatches[0].max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    monkeypatch.chdir(three.root)
    bad = CliRunner().invoke(cli, ["verify", forged, "-q", "--device", "cpu", "--fail-fast"])
    assert bad.exit_code == 1
    assert bad.output.splitlines()[0].startswith(f"MISMATCH {MODEL}::{tensor}: content differs")


@pytest.mark.parametrize("preset", [None, "mergekit"])
def test_verify_recomputes_ties_on_the_merges_own_fast_path(three, monkeypatch, preset):
    """verify costs what the merge costs: it recomputes through the same numpy fast path,
    window for window, not through a slower generic one."""
    from mvc.merge.strategies import ties_numpy

    calls: list[str] = []
    fused = ties_numpy.combine

    def counting(job, chunk):
        calls.append(job.spec.name)
        return fused(job, chunk)

    monkeypatch.setattr(ties_numpy, "combine", counting)
    merge(three, ["a", "b", "c"], MergeOptions(params=MergeParams(density=0.5, preset=preset)))
    merged = sorted(calls)
    calls.clear()
    assert verify(three, "HEAD", device="cpu").ok
    assert merged and sorted(calls) == merged
