"""One recipe and one pipeline for every merge; one record type; each input read once."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from model_factory import fine_tuned, random_weights, write_model_folder

from mvc.errors import ConflictError, FormatError
from mvc.gitdriver.merge import _parse, config_key
from mvc.lineage.records import PROVENANCE_RECORD, recipe_line
from mvc.merge import MergeOptions, merge
from mvc.merge.declare import DENSITY, LAMBDA, NORMALIZE
from mvc.merge.layout import LayoutChoice
from mvc.merge.params import MergeParams
from mvc.merge.pipeline import run
from mvc.merge.planner import TensorRule
from mvc.merge.recipe import Recipe
from mvc.merge.record import MERGE_RECORD
from mvc.repo import Manifest, Repo
from mvc.repo.records import LOCK_RECORD, RecordType, is_locked
from mvc.repo.references import LOCK_RECORD_PATH


@pytest.fixture
def three(tmp_path):
    """main = base; a, b and c each fine-tune the same tensors."""
    repo = Repo.init(tmp_path / "work")
    base = random_weights(0, rows=8, cols=4)
    write_model_folder(repo.root / "model", base)
    repo.add([repo.root / "model"])
    repo.commit("base")
    for seed, name in enumerate("abc", start=1):
        repo.switch(name, create=True, start="main")
        write_model_folder(repo.root / "model", fine_tuned(base, seed=seed))
        repo.commit(name, all=True)
    repo.switch("main")
    return repo


def _recipe() -> Recipe:
    return Recipe(
        base="0" * 40,
        parents=("1" * 40, "2" * 40, "3" * 40),
        contributing=(1, 2),
        names=("HEAD", "a", "b"),
        strategy="dare_ties",
        params=MergeParams(weights=(0.3, 0.7), density=0.5, seed=4, preset="mergekit"),
        rules=(TensorRule("*.bias", "ties", {"density": [0.2, 0.9], "lambda": 0.5}),),
        all_tensors=True,
        masks=False,
        layout=LayoutChoice("1" * 40),
    )


def test_the_recipe_round_trips_through_the_record():
    recipe = _recipe()
    fields = recipe.record_fields()
    assert Recipe.from_record(json.loads(json.dumps(fields))) == recipe
    assert fields["params"]["weights"] == [0.3, 0.7] and fields["seed"] == 4
    replay = {"kind": "revert", "commit": "4" * 40, "parent": "5" * 40, "mainline": 1}
    reverted = dataclasses.replace(recipe, operation=replay)
    fields = reverted.record_fields()
    assert fields["commit_parents"] == ["1" * 40] and fields["operation"] == replay
    assert Recipe.from_record(json.loads(json.dumps(fields))) == reverted
    assert reverted.without(2).operation is None


def test_without_drops_the_branch_everywhere_its_declarations_say():
    dropped = _recipe().without(1)
    assert dropped.parents == ("1" * 40, "3" * 40) and dropped.contributing == (1,)
    assert dropped.names == ("HEAD", "b") and dropped.branches == ["3" * 40]
    assert dropped.params.weights == (0.7,) and dropped.params.density == 0.5
    assert dict(dropped.rules[0].params) == {"density": [0.9], "lambda": 0.5}
    untouched = _recipe().without(0)  # HEAD did not contribute: nothing per branch changes
    assert untouched.params.weights == (0.3, 0.7) and untouched.contributing == (0, 1)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=3),
            max_leaves=6,
        ),
        max_size=5,
    )
)
def test_record_types_round_trip_and_refuse_others(body):
    kind = RecordType("thing", 3, ".mvc/thing.json", "thing record", required=())
    record = {**body, **kind.header()}
    data = kind.encode(record)
    assert kind.decode(data) == record and kind.encode(kind.decode(data)) == data
    for other in (MERGE_RECORD, PROVENANCE_RECORD, LOCK_RECORD):
        with pytest.raises(FormatError):
            other.decode(data)
    with pytest.raises(FormatError, match="schema version 4"):
        kind.decode(kind.encode({**record, "schema_version": 4}))


def test_encodings_are_the_ones_committed_trees_hold():
    """Merge and provenance records as they always were (indent 1), lock records indent 2."""
    assert MERGE_RECORD.encode({"b": 1, "a": [2]}) == b'{\n "a": [\n  2\n ],\n "b": 1\n}\n'
    assert LOCK_RECORD.encode({"b": 1}) == b'{\n  "b": 1\n}\n'
    assert MERGE_RECORD.header() == {"mvc": "merge-record", "schema_version": 1}
    assert LOCK_RECORD.header() == {"mvc": "lock", "version": 2}
    old = {"mvc": "lock", "version": 1, "locked": True}  # attention-only locks still read
    assert LOCK_RECORD.decode(LOCK_RECORD.encode(old)) == old
    with pytest.raises(FormatError, match="has version 3; this mvc reads version 2"):
        LOCK_RECORD.decode(LOCK_RECORD.encode({**old, "version": 3}))


@pytest.mark.parametrize(
    "blob",
    [
        b"{not json",
        json.dumps({"mvc": "lock", "version": 1, "locked": "yes"}).encode(),
        json.dumps({"mvc": "lock", "version": 1}).encode(),
        json.dumps({"mvc": "merge-record", "version": 1, "locked": True}).encode(),
    ],
)
def test_a_malformed_lock_record_is_refused_everywhere(three, blob):
    files = {**three.files("a"), LOCK_RECORD_PATH: blob}
    bad = three.commit_tree(files, [three.resolve("a")], "odd lock", update_ref=False)
    three.create_branch("odd", bad)
    head, objects = three.head(), set(three.store.ids())
    with pytest.raises(FormatError):
        is_locked(three, bad)
    with pytest.raises(FormatError):
        merge(three, ["odd", "b"])
    with pytest.raises(FormatError):
        recipe_line(three, bad)
    assert three.head() == head and set(three.store.ids()) == objects
    unlocked = {**three.files("a"), LOCK_RECORD_PATH: LOCK_RECORD.encode(
        {**LOCK_RECORD.header(), "locked": False}
    )}  # fmt: skip
    free = three.commit_tree(unlocked, [three.resolve("a")], "unlocked", update_ref=False)
    assert not is_locked(three, free)


def test_a_merge_reads_each_tree_and_manifest_once_and_checks_status_once(three, monkeypatch):
    reads: list[str] = []
    statuses: list[int] = []
    parsed: dict[bytes, int] = {}
    files, status, from_bytes = Repo.files, Repo.status, Manifest.from_bytes.__func__

    def counting_files(self, rev):
        reads.append(self.resolve(rev))
        return files(self, rev)

    def counting_status(self):
        statuses.append(1)
        return status(self)

    def counting_parse(cls, blob, path="<manifest>"):
        parsed[bytes(blob)] = parsed.get(bytes(blob), 0) + 1
        return from_bytes(cls, blob, path)

    monkeypatch.setattr(Repo, "files", counting_files)
    monkeypatch.setattr(Repo, "status", counting_status)
    result = merge(three, ["a", "b", "c"], MergeOptions(masks=False))
    assert result.resolved and result.commit
    assert len(reads) == len(set(reads)) == 1 + len(result.record["contributing"])
    assert len(statuses) == 1
    monkeypatch.setattr(Manifest, "from_bytes", classmethod(counting_parse))
    recipe = Recipe.from_record(result.record)
    sides = [three.files(sha) for sha in recipe.branches]
    from mvc.merge.arrays import NumpyOps

    base_files = three.files(recipe.base)
    assert recipe.layout.source == recipe.base  # HEAD (the layout's source) is the base here
    run(recipe, three.store, base_files, sides, NumpyOps(), record=False, layout_files=base_files)
    assert parsed and max(parsed.values()) == 1


def test_an_untracked_file_a_merge_would_overwrite_stops_it(three):
    three.switch("a")
    (three.root / "notes.txt").write_text("from a\n")
    three.add([three.root / "notes.txt"])
    three.commit("notes on a")
    three.switch("main")
    (three.root / "notes.txt").write_text("mine, untracked\n")
    head = three.head()
    with pytest.raises(ConflictError, match="untracked files would be overwritten: notes.txt"):
        merge(three, ["a", "b"])
    assert three.head() == head
    assert (three.root / "notes.txt").read_text() == "mine, untracked\n"


def test_git_driver_config_keys_come_from_the_declarations():
    assert [config_key(p) for p in (DENSITY, LAMBDA, NORMALIZE)] == [
        "mergeDensity",
        "mergeLambda",
        "mergeNormalize",
    ]
    assert _parse(DENSITY, "0.5") == 0.5 and _parse(NORMALIZE, "off") is False
    with pytest.raises(Exception, match="mvc.mergeDensity is not a number"):
        _parse(DENSITY, "half")
