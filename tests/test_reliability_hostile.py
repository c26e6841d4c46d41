"""Hostile files: fuzzed parsers raise only MvcError, memory stays bounded, no path escapes,
no pickle is ever executed.

The readers fuzzed here take bytes that may come from a remote or a file someone handed
us: the safetensors header, a manifest blob, a stored object file and a merge record.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_factory import committed_base, random_weights

from mvc.errors import MvcError
from mvc.formats.safetensors import parse_header, read_header
from mvc.merge.record import MERGE_RECORD
from mvc.repo import Repo
from mvc.repo.manifest import Manifest
from mvc.store import ObjectStore

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture(scope="module")
def valid_manifest(tmp_path_factory) -> bytes:
    repo = committed_base(tmp_path_factory.mktemp("m") / "repo", random_weights(0, rows=8, cols=4))
    blob = repo.files("HEAD")["model/model.safetensors"]
    repo.close()
    return blob


def mutate(doc, path: list, value):
    """`doc` with the element at `path` (keys/indices, wrapped modulo) replaced by `value`."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, dict):
        key = sorted(doc)[path[0] % len(doc)]
        return {**doc, key: mutate(doc[key], path[1:], value)}
    i = path[0] % len(doc)
    return [*doc[:i], mutate(doc[i], path[1:], value), *doc[i + 1 :]]


def only_mvc_errors(fn, *args) -> None:
    try:
        fn(*args)
    except MvcError as err:
        assert "\n" not in err.message  # one line, as the CLI prints it


def refused(fn, *args) -> None:
    """`fn(*args)` must fail, and with a one-line MvcError."""
    with pytest.raises(MvcError) as info:
        fn(*args)
    assert "\n" not in info.value.message


# -- manifests ---------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_manifest_random_bytes(blob):
    only_mvc_errors(Manifest.from_bytes, blob)


@FUZZ
@given(json_values)
def test_manifest_random_json(value):
    only_mvc_errors(Manifest.from_bytes, json.dumps(value).encode())
    doc = {"mvc": "manifest", "version": 1, "header": "", "tensors": value}
    only_mvc_errors(Manifest.from_bytes, json.dumps(doc).encode())


@FUZZ
@given(st.lists(st.integers(0, 50), max_size=6), json_values)
def test_manifest_mutated_fields(valid_manifest, path, value):
    doc = mutate(json.loads(valid_manifest), path, value)
    only_mvc_errors(Manifest.from_bytes, json.dumps(doc).encode())


@pytest.mark.parametrize(
    "blob",
    [
        DEEP,
        b'{"mvc": "manifest", "version": 1, "header": "", "tensors": ' + DEEP + b"}",
        b"\xff\xfe garbage",
    ],
    ids=["deep", "deep-inside", "not-utf8"],
)
def test_manifest_pathological_json(blob):
    refused(Manifest.from_bytes, blob)


@pytest.mark.parametrize("nbytes", ["Infinity", "1e400", "-1", '"12"', "true"])
def test_manifest_with_odd_nbytes(valid_manifest, nbytes):
    doc = json.loads(valid_manifest)
    text = json.dumps(doc).replace(
        f'"nbytes": {doc["tensors"][0]["nbytes"]}', f'"nbytes": {nbytes}', 1
    )
    refused(Manifest.from_bytes, text.encode())


# -- merge records -------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_record_random_bytes(blob):
    only_mvc_errors(MERGE_RECORD.decode, blob)


@FUZZ
@given(json_values)
def test_record_random_json(value):
    only_mvc_errors(MERGE_RECORD.decode, json.dumps(value).encode())
    doc = {"mvc": "merge", "schema_version": 1, "base": value, "parents": value}
    only_mvc_errors(MERGE_RECORD.decode, json.dumps(doc).encode())


def test_record_pathological_json():
    refused(MERGE_RECORD.decode, DEEP)


# -- safetensors headers -----------------------------------------------------------------


def test_header_deep_json_and_huge_claims(tmp_path):
    refused(parse_header, DEEP, 0)
    huge = json.dumps(
        {"w": {"dtype": "F32", "shape": [25 * 2**30], "data_offsets": [0, 100 * 2**30]}}
    ).encode()
    with pytest.raises(MvcError, match="past the end|out of range|data"):
        parse_header(huge, 16)
    # A file whose length prefix claims a 100 GB header: refused before reading it.
    path = tmp_path / "claims.safetensors"
    path.write_bytes(struct.pack("<Q", 100 * 2**30) + b"{}")
    with pytest.raises(MvcError):
        read_header(path)


# -- object files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_object(tmp_path_factory):
    import numpy as np

    store = ObjectStore(tmp_path_factory.mktemp("s") / "mvc")
    data = np.random.default_rng(0).standard_normal(300).astype(np.float32).tobytes()
    oid = store.put(data, "F32", (300,))
    raw = store.read_raw(oid)
    store.close()
    return oid, raw


@FUZZ
@given(data=st.data())
def test_hostile_object_files(tmp_path_factory, good_object, data):
    oid, raw = good_object
    choice = data.draw(st.sampled_from(["random", "flip", "truncate", "splice"]))
    if choice == "random":
        stored = data.draw(st.binary(max_size=400))
    elif choice == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        stored = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    elif choice == "truncate":
        stored = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        stored = raw[:20] + data.draw(st.binary(max_size=60)) + raw[20:]
    store = ObjectStore(tmp_path_factory.mktemp("h") / "mvc")
    check = only_mvc_errors if stored == raw else refused  # anything else must be refused
    check(store.write_raw, oid, stored)  # as a remote delivers it
    path = store.path(oid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stored)  # as a damaged disk holds it
    check(store.get, oid)
    only_mvc_errors(store.info, oid)
    store.close()


_BOMB_SCRIPT = """
import resource, sys, zstandard
from mvc.errors import CorruptObjectError
from mvc.store import ObjectStore, object_id
from mvc.store.chunking import PIECE_BYTES
from mvc.store.codecs import Codec
from mvc.store.objfile import pack_header, trailer

def build(codec, dtype, shape, raw, frames):
    sizes = [len(f) for f in frames]
    chunks = [pack_header(codec, dtype, shape, raw, 0, None, PIECE_BYTES, sizes), *frames]
    return b"".join([*chunks, trailer(chunks)])

store = ObjectStore(sys.argv[1])
n = 1000
bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(2**29))
fhd = bomb[4]
lying = bomb[:4] + bytes([fhd | 0x80]) + bomb[5:6] + n.to_bytes(4, "little") + bomb[6:]
frame = zstandard.ZstdCompressor().compress(bytes(PIECE_BYTES))
cases = [
    (object_id("U8", (n,), bytes(n)), build(Codec.PLANES, "U8", (n,), n, [lying])),
    ("1" * 32, build(Codec.PLANES, "U8", (100 * 2**30,), 100 * 2**30, [frame] * 1600)),
]
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
          if line.startswith("VmSize:"))
cap = vm + 2**28  # what is mapped now + 256 MiB: far below any of the claimed sizes
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
for oid, stored in cases:
    try:
        store.write_raw(oid, stored)
    except CorruptObjectError:
        print("refused")
"""


def test_zstd_bomb_and_100gb_object_under_an_address_space_limit(tmp_path):
    """A 512 MiB zstd bomb claiming 1000 bytes, a 100 GB object: refused with 256 MiB spare."""
    script = _BOMB_SCRIPT
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "mvc")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["refused", "refused"]


# -- paths and pickles ------------------------------------------------------------------------


def hostile_commit(repo: Repo, entries: list[tuple[bytes, bytes, int]]) -> str:
    """A commit whose tree is built with dulwich directly, bypassing mvc's path checks."""
    from dulwich.objects import Blob, Commit, Tree

    def tree_of(items: list[tuple[bytes, bytes, int]]) -> bytes:
        tree = Tree()
        subdirs: dict[bytes, list] = {}
        for name, data, mode in items:
            head, sep, rest = name.partition(b"/")
            if sep:
                subdirs.setdefault(head, []).append((rest, data, mode))
                continue
            blob = Blob.from_string(data)
            repo.git.object_store.add_object(blob)
            tree.add(name, mode, blob.id)
        for head, sub in subdirs.items():
            tree.add(head, 0o040000, tree_of(sub))
        repo.git.object_store.add_object(tree)
        return tree.id

    commit = Commit()
    commit.tree = tree_of(entries)
    commit.parents = [repo.head().encode()]
    commit.author = commit.committer = b"Mallory <m@example.com>"
    commit.author_time = commit.commit_time = 0
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"hostile\n"
    repo.git.object_store.add_object(commit)
    return commit.id.decode()


@pytest.mark.parametrize(
    "entries",
    [
        [(b"../escaped.txt", b"pwned", 0o100644)],
        [(b"a/../../escaped.txt", b"pwned", 0o100644)],
        [(b".git/hooks/post-checkout", b"#!/bin/sh\necho pwned\n", 0o100755)],
        [(b"link", b"../outside", 0o120000), (b"readme.txt", b"x", 0o100644)],
        [(b"link", b"/tmp", 0o120000), (b"readme.txt", b"x", 0o100644)],
    ],
    ids=["dotdot", "nested-dotdot", "dot-git", "relative-symlink", "absolute-symlink"],
)
def test_hostile_trees_never_write_outside_the_work_tree(tmp_path, entries):
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = Repo.init(tmp_path / "repo")
    (repo.root / "readme.txt").write_text("hi")
    repo.add([repo.root / "readme.txt"])
    repo.commit("base")
    sha = hostile_commit(repo, entries)
    # A symlink first, then a commit with a folder of the same name: files written "into"
    # the folder must not follow the symlink that is still in the work tree.
    follow_up = hostile_commit(repo, [(b"link/escaped.txt", b"pwned", 0o100644)])
    before = sorted(p for p in tmp_path.rglob("*") if ".git" not in p.parts)
    for rev in (sha, follow_up):
        try:
            repo.checkout(rev, force=True)
        except MvcError:
            pass
    assert not (tmp_path / "escaped.txt").exists()
    assert not (outside / "escaped.txt").exists()
    assert not Path("/tmp/escaped.txt").exists()
    assert not (repo.root / ".git" / "hooks" / "post-checkout").exists()
    after = sorted(p for p in tmp_path.rglob("*") if ".git" not in p.parts)
    assert [p for p in after if p not in before and not p.is_relative_to(repo.root)] == []
    repo.close()


def test_manifest_naming_an_escaping_path_is_refused_by_checkout(tmp_path):
    repo = committed_base(tmp_path / "repo", random_weights(0, rows=8, cols=4))
    manifest = repo.files("HEAD")["model/model.safetensors"]
    sha = hostile_commit(repo, [(b"../evil.safetensors", manifest, 0o100644)])
    with pytest.raises(MvcError):
        repo.checkout(sha, force=True)
    assert not (tmp_path / "evil.safetensors").exists()
    repo.close()


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickles_are_refused_and_import_never_executes_them(tmp_path, run_mvc):
    work = tmp_path / "work"
    Repo.init(work).close()
    (work / "model.bin").write_bytes(pickle.dumps({"w": _Boom()}))

    def mvc(*args):
        return run_mvc(work, *args, check=False)

    add = mvc("add", "model.bin")
    assert add.returncode == 1 and "mvc import" in add.stderr
    imp = mvc("import", "model.bin")
    assert imp.returncode == 1, imp.stderr
    assert "mvc: error:" in imp.stderr and "Traceback" not in imp.stderr
    assert not (work / "PWNED").exists()
    assert not (work / "model.safetensors").exists()


def test_base64_header_bomb_in_manifest_is_refused():
    """A manifest whose embedded header is huge garbage fails as a FormatError."""
    header = base64.b64encode(b"{" * 200_000).decode()
    doc = {"mvc": "manifest", "version": 1, "header": header, "tensors": []}
    with pytest.raises(MvcError):
        Manifest.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "blob",
    [DEEP, b'{"store_objects": 5}', b'{"store_objects": {"a": 1}}', b"[1, 2]", b"\xff"],
    ids=["deep", "int", "dict", "list", "not-utf8"],
)
def test_record_object_references_of_hostile_records(blob):
    """gc, fsck and remotes read `.mvc/*.json` for object ids: hostile ones fail cleanly
    (not JSON) or name no object (JSON of the wrong shape)."""
    from mvc.repo.references import referenced_objects

    if blob in (DEEP, b"\xff"):
        refused(lambda: list(referenced_objects(".mvc/merge.json", blob)))
    else:
        assert list(referenced_objects(".mvc/merge.json", blob)) == []
