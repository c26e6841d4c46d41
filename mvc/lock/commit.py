"""Lock and unlock commits: the MergeLock transform applied to a repository revision.

Only the attention tensors are read into torch, transformed and stored again; every other
tensor keeps its manifest entry (same objects, nothing re-stored). Each model directory of
the commit (safetensors files beside a config.json) is locked as one model, and every one
must pass the equivalence check before anything is committed.

Locked tensors are stored as full objects, never as deltas against the unlocked weights:
a delta's base travels with it on push and clone, which would hand the original weights to
everyone who receives the locked model.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mvc.errors import ConflictError, MvcError, NotFoundError
from mvc.formats.dtypes import get_dtype
from mvc.formats.hf import is_model_file
from mvc.formats.torch_io import tensor_bytes, to_torch
from mvc.lock.equivalence import check_equivalence, probe_batch
from mvc.lock.families import LockPlan, plan_lock
from mvc.lock.keys import SCHEME, key_id, load_key
from mvc.lock.record import LOCK_RECORD, LOCK_RECORD_PATH, encode_record, lock_record
from mvc.lock.transform import apply_plan
from mvc.repo import Chunk, Manifest, TensorEntry
from mvc.repo.references import RECORD_PREFIX

if TYPE_CHECKING:
    from mvc.repo import Repo

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


@dataclass
class _Model:
    """One model directory of a commit: its config and the manifests of its weight files."""

    directory: str
    config: dict
    manifests: dict[str, Manifest]

    def entries(self) -> dict[str, tuple[str, TensorEntry]]:
        found: dict[str, tuple[str, TensorEntry]] = {}
        for path, manifest in self.manifests.items():
            for entry in manifest.tensors:
                if entry.name in found:
                    raise MvcError(f"tensor {entry.name!r} appears in two files of {self.label}")
                found[entry.name] = (path, entry)
        return found

    @property
    def label(self) -> str:
        return self.directory or "the repository root"


def _models(files: Mapping[str, bytes]) -> list[_Model]:
    by_dir: dict[str, dict[str, Manifest]] = {}
    for path, blob in files.items():
        if is_model_file(path) and not path.startswith(RECORD_PREFIX):
            by_dir.setdefault(posixpath.dirname(path), {})[path] = Manifest.from_bytes(blob, path)
    models = []
    for directory, manifests in sorted(by_dir.items()):
        config_path = posixpath.join(directory, "config.json")
        if config_path not in files and not _has_attention(manifests):
            # Weights beside no config and with no attention (task heads, probes): nothing
            # MergeLock transforms; they are committed unchanged.
            continue
        if config_path not in files:
            raise MvcError(
                f"cannot lock {sorted(manifests)[0]}: no config.json beside it",
                hint="MergeLock detects the architecture from the model's config.json",
            )
        try:
            config = json.loads(files[config_path])
        except (UnicodeDecodeError, ValueError) as err:
            raise MvcError(f"{config_path} is not valid JSON: {err}") from None
        models.append(_Model(directory, config, manifests))
    if not models:
        raise MvcError("the commit holds no safetensors model files to lock")
    return models


_ATTENTION_MARKERS = ("attn", "attention", "q_proj", "k_proj", "v_proj", "query", "key", "value")


def _has_attention(manifests: Mapping[str, Manifest]) -> bool:
    return any(
        marker in entry.name
        for manifest in manifests.values()
        for entry in manifest.tensors
        for marker in _ATTENTION_MARKERS
    )


def _plan(model: _Model) -> LockPlan:
    shapes = {name: entry.shape for name, (_, entry) in model.entries().items()}
    return plan_lock(model.config, shapes)


def _load(repo: Repo, model: _Model) -> dict[str, torch.Tensor]:
    return {
        name: to_torch(bytearray(repo.tensor_bytes(entry)), entry.dtype, entry.shape)
        for name, (_, entry) in model.entries().items()
    }


def _probe(model: _Model, files: Mapping[str, bytes]) -> dict[str, torch.Tensor]:
    """Real text through the commit's own tokenizer when it has one, else random token ids."""
    local = {
        posixpath.relpath(p, model.directory or "."): data
        for p, data in files.items()
        if posixpath.dirname(p) == model.directory and not is_model_file(p)
    }
    if not any(name in local for name in TOKENIZER_FILES):
        return probe_batch(model.config)
    with tempfile.TemporaryDirectory(prefix="mvc-lock-") as tmp:
        for name, data in local.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            return probe_batch(model.config, tmp)
        except (OSError, ValueError, ImportError):
            # A tokenizer transformers cannot load here is no reason to refuse: random ids
            # exercise the same arithmetic.
            return probe_batch(model.config)


def _store_entry(repo: Repo, entry: TensorEntry, tensor: torch.Tensor) -> TensorEntry:
    """Store a transformed tensor with the old entry's chunk layout, as full objects."""
    data = memoryview(tensor_bytes(tensor))
    if len(data) != entry.nbytes:
        raise MvcError(f"transformed {entry.name!r} has {len(data)} bytes, expected {entry.nbytes}")
    row_bytes = get_dtype(entry.dtype).itemsize * math.prod(entry.shape[1:])
    chunks = []
    for chunk in entry.chunks:
        piece = data[chunk.start * row_bytes : chunk.stop * row_bytes]
        shape = (chunk.stop - chunk.start, *entry.shape[1:])
        chunks.append(Chunk(chunk.start, chunk.stop, repo.store.put(piece, entry.dtype, shape)))
    return TensorEntry(entry.name, entry.dtype, entry.shape, entry.nbytes, tuple(chunks))


def _rewrite(model: _Model, new_entries: Mapping[str, TensorEntry]) -> dict[str, Manifest]:
    """The model's manifests with some entries replaced; header bytes stay verbatim."""
    return {
        path: Manifest(
            header_raw=manifest.header_raw,
            tensors=tuple(new_entries.get(e.name, e) for e in manifest.tensors),
        )
        for path, manifest in model.manifests.items()
    }


def _digest(entries: Mapping[str, TensorEntry]) -> str:
    """A fingerprint of the attention tensors' stored objects: did they change since the lock?"""
    text = ";".join(f"{n}:{','.join(entries[n].chunk_ids)}" for n in sorted(entries))
    return hashlib.sha256(text.encode()).hexdigest()


def _refuse_if_dirty(repo: Repo) -> None:
    """Fail before the expensive part: the new commit is checked out, like a merge's."""
    if not repo.status().clean:
        raise ConflictError(
            "you have uncommitted changes",
            hint="commit them first (lock and unlock write the work tree)",
        )


def _commit(repo: Repo, files: dict[str, Manifest | bytes], message: str) -> str:
    head = repo.head()
    return repo.commit_tree(files, [head] if head else [], message)


def lock_commit(repo: Repo, rev: str, key_path: str | Path, message: str | None = None) -> str:
    """Commit a MergeLock'ed copy of ``rev`` on the current branch; returns the new sha.

    Refuses (committing nothing) when ``rev`` is already locked, when any model's
    architecture is unknown, or when the locked model's outputs move beyond tolerance.
    """
    key = load_key(key_path)
    source = repo.resolve(rev)
    _refuse_if_dirty(repo)
    files = repo.files(source)
    if LOCK_RECORD_PATH in files:
        raise MvcError(f"{rev} is already locked", hint="unlock it first with `mvc unlock`")
    out: dict[str, Manifest | bytes] = {
        p: b for p, b in files.items() if not p.startswith(RECORD_PREFIX)
    }
    checked = []
    for model in _models(files):
        plan = _plan(model)
        original = _load(repo, model)
        locked = apply_plan(plan, original, key, inverse=False)
        diff = check_equivalence(
            original, {**original, **locked}, model.config, batch=_probe(model, files)
        )
        checked.append((model, plan, locked, diff))
    # Store only once every model passed, so a refusal leaves not even loose objects.
    summaries = []
    for model, plan, locked, diff in checked:
        entries = model.entries()
        stored = {name: _store_entry(repo, entries[name][1], t) for name, t in locked.items()}
        out.update(_rewrite(model, stored))
        summaries.append(
            {
                "path": model.directory,
                "locked_digest": _digest(stored),
                "family": plan.family,
                "tensors": len(locked),
                "max_abs_diff": diff,
            }
        )
    record = {
        **LOCK_RECORD.header(),
        "locked": True,
        "scheme": SCHEME,
        "from": source,
        "key_id": key_id(key),
        "models": summaries,
    }
    out[LOCK_RECORD_PATH] = encode_record(record)
    families = ", ".join(sorted({s["family"] for s in summaries}))
    return _commit(repo, out, message or f"MergeLock {source[:10]} ({families})")


def _restores_original(restored: torch.Tensor, original: torch.Tensor) -> bool:
    """Within a few roundings of the original: the unlock undid the lock of that very tensor."""
    eps = torch.finfo(original.dtype).eps
    scale = original.double().abs().max().item()
    return (restored.double() - original.double()).abs().max().item() <= 8 * eps * max(scale, 1.0)


def _original_entries(repo: Repo, record: Mapping, model: _Model) -> dict[str, TensorEntry]:
    """The locked-from commit's entries of this model, when that commit is still stored."""
    try:
        files = repo.files(str(record.get("from", "")))
    except NotFoundError:
        return {}
    found: dict[str, TensorEntry] = {}
    for path in model.manifests:
        if path in files:
            found.update(Manifest.from_bytes(files[path], path).by_name())
    return found


def _unlocked_entries(
    repo: Repo, record: Mapping, model: _Model, restored: Mapping[str, torch.Tensor]
) -> dict[str, TensorEntry]:
    """Entries for the restored tensors: the original objects when the attention tensors are
    exactly as the lock wrote them and the locked-from commit is stored, else new objects
    (a model fine-tuned after locking unlocks to its own weights, not the original's)."""
    entries = model.entries()
    summary = next((m for m in record.get("models", []) if m.get("path") == model.directory), {})
    untouched = summary.get("locked_digest") == _digest({n: entries[n][1] for n in restored})
    originals = _original_entries(repo, record, model) if untouched else {}
    result = {}
    for name, tensor in restored.items():
        before = originals.get(name)
        if before is None or before.dtype != entries[name][1].dtype or before.shape != tensor.shape:
            result[name] = _store_entry(repo, entries[name][1], tensor)
            continue
        original = to_torch(bytearray(repo.tensor_bytes(before)), before.dtype, before.shape)
        if not _restores_original(tensor, original):
            raise MvcError(
                f"unlocking {name!r} does not give back the weights of {record['from'][:10]}",
                hint="the lock record does not belong to these weights; nothing was committed",
            )
        result[name] = before
    return result


def unlock_commit(repo: Repo, rev: str, key_path: str | Path, message: str | None = None) -> str:
    """Commit the unlocked model of a locked ``rev`` on the current branch; returns the new sha.

    Unlocking with any key is itself an output-preserving transform, so the equivalence
    check cannot notice a wrong key on its own: the record's key fingerprint does. When the
    weights are as the lock left them and the locked-from commit is still stored, every
    restored tensor is compared with the original and its entry reused, so the result is
    bit-identical to the commit that was locked.
    """
    key = load_key(key_path)
    record = lock_record(repo, rev)
    if record is None:
        raise MvcError(
            f"{rev} is not locked", hint="only commits made by `mvc lock` can be unlocked"
        )
    if record.get("key_id") != key_id(key):
        raise MvcError(
            f"wrong key: {rev} was locked with key {record.get('key_id')}, not {key_id(key)}",
            hint="nothing was committed",
        )
    _refuse_if_dirty(repo)
    files = repo.files(rev)
    out: dict[str, Manifest | bytes] = {p: b for p, b in files.items() if p != LOCK_RECORD_PATH}
    checked = []
    for model in _models(files):
        locked = _load(repo, model)
        restored = apply_plan(_plan(model), locked, key, inverse=True)
        check_equivalence(locked, {**locked, **restored}, model.config, batch=_probe(model, files))
        checked.append((model, restored))
    for model, restored in checked:
        out.update(_rewrite(model, _unlocked_entries(repo, record, model, restored)))
    return _commit(repo, out, message or f"MergeLock: unlock {repo.resolve(rev)[:10]}")
