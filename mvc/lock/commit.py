"""Lock and unlock commits: the MergeLock transform applied to a repository revision.

Streaming: tensors are read from the store one at a time, transformed, and spooled to a
temporary folder; the equivalence check then runs the model with one module's weights in
memory at a time (``lazy_model``), reading the original from the store and the locked
weights from the spool. Only when every model of the commit passed are the spooled tensors
stored, so a refusal leaves not even loose objects. Peak memory is a few copies of the
largest tensor (fp64 while it is transformed), not the model.

Each model directory of the commit (safetensors files beside a config.json) is locked as one
model. Weight files in folders below it that have no config of their own (task heads) belong
to it: at the residual-stream level they must be named with ``reads_hidden`` (they read the
hidden state) or the lock is refused. Their tensors are called ``<relative path>:<name>``.

Locked tensors are stored as full objects, never as deltas against the unlocked weights:
a delta's base travels with it on push and clone, which would hand the original weights to
everyone who receives the locked model.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mvc.errors import ConflictError, MvcError, NotFoundError
from mvc.formats.dtypes import get_dtype
from mvc.formats.hf import is_model_file
from mvc.formats.torch_io import tensor_bytes, to_torch
from mvc.lock.equivalence import Report, compare, probe_batch
from mvc.lock.keys import SCHEME, key_id, load_key
from mvc.lock.models import LockModel, lockable_models, refuse_adapters
from mvc.lock.ops import WINDOW_BYTES
from mvc.lock.record import LOCK_RECORD, LOCK_RECORD_PATH, encode_record, lock_record
from mvc.lock.seal import seal, unseal
from mvc.lock.symmetries import DEFAULT_LEVEL, LockTransform, build
from mvc.lock.transform import apply_one, matching
from mvc.memory import return_large_buffers
from mvc.repo import Chunk, Manifest, TensorEntry
from mvc.repo.references import RECORD_PREFIX

if TYPE_CHECKING:
    from mvc.repo import Repo

# Blocks above this are mapped on their own and returned on free (``mvc.memory``): a lock
# frees tensors of every size in turn, and glibc's heap kept the holes between them.
OWN_MAPPING_BYTES = 1024 * 1024
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
Loader = Callable[[str], torch.Tensor]


def _read(repo: Repo, entry: TensorEntry) -> torch.Tensor:
    """One stored tensor, its chunks decoded straight into one buffer: joining the chunks
    and then copying them into a writable buffer would hold the tensor three times."""
    buf = bytearray(entry.nbytes)
    view = memoryview(buf)
    at = 0
    for chunk in entry.chunks:
        piece = repo.store.get_view(chunk.oid)
        view[at : at + piece.nbytes] = piece
        at += piece.nbytes
    if at != entry.nbytes:
        raise MvcError(f"stored {entry.name!r} has {at} bytes, expected {entry.nbytes}")
    return to_torch(buf, entry.dtype, entry.shape)


def _raw(tensor: torch.Tensor) -> memoryview:
    """A contiguous tensor's bytes without a copy (what ``tensor_bytes`` would copy)."""
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def _reader(repo: Repo, entries: Mapping[str, tuple[str, TensorEntry]]) -> Loader:
    def load(name: str) -> torch.Tensor:
        return _read(repo, entries[name][1])

    return load


def _plan(
    model: LockModel,
    key: bytes,
    level: str,
    reads_hidden: Collection[str],
    norm_weight: Loader,
) -> LockTransform:
    entries = model.entries()
    shapes = {name: entry.shape for name, (_, entry) in entries.items()}
    embedding = next(
        (n for n in entries if n.endswith(("embed_tokens.weight", "wte.weight"))), None
    )
    head = entries.get("lm_head.weight")
    tied = bool(embedding and head and head[1].chunk_ids == entries[embedding][1].chunk_ids)
    named = matching(shapes, reads_hidden)
    if reads_hidden and not named:
        raise MvcError(f"--reads-hidden {' '.join(reads_hidden)} matches no tensor of {model.label}")
    return build(
        model.config,
        shapes,
        key,
        level,
        named,
        norm_weight=lambda n: norm_weight(n).double().numpy(),
        head_is_embedding=tied,
    )


def _probe(model: LockModel, files: Mapping[str, bytes]) -> dict[str, torch.Tensor]:
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


class _Spool:
    """Transformed tensors on disk until the check passes (memory holds one at a time)."""

    def __init__(self, folder: str, entries: Mapping[str, tuple[str, TensorEntry]]) -> None:
        self.folder = Path(folder)
        self.entries = entries
        self.paths: dict[str, Path] = {}

    def put(self, name: str, tensor: torch.Tensor) -> None:
        path = self.folder / f"{len(self.paths)}.bin"
        path.write_bytes(_raw(tensor))
        self.paths[name] = path

    def load(self, name: str) -> torch.Tensor:
        entry = self.entries[name][1]
        buf = bytearray(entry.nbytes)
        with open(self.paths[name], "rb") as f:
            f.readinto(buf)
        return to_torch(buf, entry.dtype, entry.shape)

    def loader(self, fallback: Loader) -> Loader:
        def load(name: str) -> torch.Tensor:
            return self.load(name) if name in self.paths else fallback(name)

        return load


def _transform_model(
    model: LockModel, plan: LockTransform, read: Loader, folder: str, inverse: bool
) -> _Spool:
    entries = model.entries()
    spool = _Spool(folder, entries)
    for name in plan.tensor_names:
        spool.put(name, apply_one(plan, name, read(name), inverse))
    return spool


def _check(
    model: LockModel, plan: LockTransform, before: Loader, after: Loader, files: Mapping
) -> Report:
    entries = model.entries()
    low = any(get_dtype(entries[n][1].dtype).itemsize <= 2 for n in plan.tensor_names)
    return compare(
        plan, model.config, set(entries), before, after, _probe(model, files), low_precision=low
    )


def _store(repo: Repo, entry: TensorEntry, data: bytes) -> TensorEntry:
    """Store a transformed tensor with the old entry's chunk layout, as full objects."""
    view = memoryview(data)
    if len(view) != entry.nbytes:
        raise MvcError(f"transformed {entry.name!r} has {len(view)} bytes, expected {entry.nbytes}")
    row_bytes = get_dtype(entry.dtype).itemsize * math.prod(entry.shape[1:])
    chunks = []
    for chunk in entry.chunks:
        piece = view[chunk.start * row_bytes : chunk.stop * row_bytes]
        shape = (chunk.stop - chunk.start, *entry.shape[1:])
        chunks.append(Chunk(chunk.start, chunk.stop, repo.store.put(piece, entry.dtype, shape)))
    return TensorEntry(entry.name, entry.dtype, entry.shape, entry.nbytes, tuple(chunks))


def _rewrite(model: LockModel, new_entries: Mapping[str, TensorEntry]) -> dict[str, Manifest]:
    """The model's manifests with some entries replaced; header bytes stay verbatim."""
    by_path: dict[str, dict[str, TensorEntry]] = {}
    for name, (path, entry) in model.entries().items():
        if name in new_entries:
            by_path.setdefault(path, {})[entry.name] = new_entries[name]
    return {
        path: Manifest(
            header_raw=manifest.header_raw,
            tensors=tuple(by_path.get(path, {}).get(e.name, e) for e in manifest.tensors),
        )
        for path, manifest in {**model.manifests, **model.attached}.items()
    }


def _digest(entries: Mapping[str, TensorEntry]) -> str:
    """A fingerprint of the locked tensors' stored objects: did they change since the lock?"""
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


def lock_commit(
    repo: Repo,
    rev: str,
    key_path: str | Path,
    message: str | None = None,
    level: str = DEFAULT_LEVEL,
    reads_hidden: Collection[str] = (),
) -> str:
    """Commit a MergeLock'ed copy of ``rev`` on the current branch; returns the new sha.

    Refuses (committing nothing) when ``rev`` is already locked, when any model's
    architecture or tensors are not understood, or when the locked model's outputs move
    beyond tolerance.
    """
    key = load_key(key_path)
    source = repo.resolve(rev)
    _refuse_if_dirty(repo)
    return_large_buffers(OWN_MAPPING_BYTES)
    files = repo.files(source)
    if LOCK_RECORD_PATH in files:
        raise MvcError(f"{rev} is already locked", hint="unlock it first with `mvc unlock`")
    refuse_adapters(files)
    out: dict[str, Manifest | bytes] = {
        p: b for p, b in files.items() if not p.startswith(RECORD_PREFIX)
    }
    summaries = []
    with tempfile.TemporaryDirectory(prefix="mvc-lock-spool-") as tmp:
        checked = []
        for index, model in enumerate(lockable_models(files)):
            read = _reader(repo, model.entries())
            plan = _plan(model, key, level, reads_hidden, read)
            folder = Path(tmp) / str(index)
            folder.mkdir()
            spool = _transform_model(model, plan, read, str(folder), inverse=False)
            report = _check(model, plan, read, spool.loader(read), files)
            checked.append((model, plan, spool, report))
        for model, plan, spool, report in checked:
            entries = model.entries()
            stored = {n: _store(repo, entries[n][1], _raw(spool.load(n))) for n in spool.paths}
            out.update(_rewrite(model, stored))
            summary = {
                "path": model.directory,
                "locked_digest": _digest(stored),
                "family": plan.family,
                "level": plan.level,
                "stream": plan.stream,
                "tensors": len(stored),
                "max_abs_diff": report.max_abs_diff,
                "tolerance": report.tolerance,
                "reads_hidden": sorted(reads_hidden),
            }
            if report.top1 is not None:
                summary["top1_agreement"] = report.top1
            if plan.folded:
                read = _reader(repo, entries)
                summary["sealed"] = seal(
                    key, source, {n: tensor_bytes(read(n)) for n in sorted(plan.folded)}
                )
            summaries.append(summary)
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
    return _commit(repo, out, message or f"MergeLock {source[:10]} ({families}, {level})")


def _restores_original(restored: torch.Tensor, original: torch.Tensor) -> bool:
    """Within a few roundings of the original: the unlock undid the lock of that very tensor.

    Compared in fp64 windows: whole fp64 copies of an embedding would be 0.5 GB each."""
    eps = torch.finfo(original.dtype).eps
    a, b = restored.reshape(-1), original.reshape(-1)
    step = WINDOW_BYTES // 8
    scale = diff = 0.0
    for at in range(0, b.numel(), step):
        window = b[at : at + step].double()
        scale = max(scale, window.abs().max().item())
        diff = max(diff, (a[at : at + step].double() - window).abs().max().item())
    return diff <= 8 * eps * max(scale, 1.0)


def _original_entries(repo: Repo, record: Mapping, model: LockModel) -> dict[str, TensorEntry]:
    """The locked-from commit's entries of this model, when that commit is still stored."""
    try:
        files = repo.files(str(record.get("from", "")))
    except NotFoundError:
        return {}
    present = {p: Manifest.from_bytes(files[p], p) for p in {**model.manifests, **model.attached} if p in files}
    same = LockModel(model.directory, model.config,
                  {p: m for p, m in present.items() if p in model.manifests},
                  {p: m for p, m in present.items() if p in model.attached})
    return {name: entry for name, (_, entry) in same.entries().items()}


def _unlocked_entries(
    repo: Repo, record: Mapping, summary: Mapping, model: LockModel, spool: _Spool
) -> dict[str, TensorEntry]:
    """Entries for the restored tensors: the original objects when the locked tensors are
    exactly as the lock wrote them and the locked-from commit is stored, else new objects
    (a model fine-tuned after locking unlocks to its own weights, not the original's)."""
    entries = model.entries()
    untouched = summary.get("locked_digest") == _digest({n: entries[n][1] for n in spool.paths})
    originals = _original_entries(repo, record, model) if untouched else {}
    result = {}
    for name in spool.paths:
        entry = entries[name][1]
        before = originals.get(name)
        restored = spool.load(name)
        if before is None or before.dtype != entry.dtype or before.shape != entry.shape:
            result[name] = _store(repo, entry, _raw(restored))
            continue
        if not _restores_original(restored, _read(repo, before)):
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
    return_large_buffers(OWN_MAPPING_BYTES)
    files = repo.files(rev)
    out: dict[str, Manifest | bytes] = {p: b for p, b in files.items() if p != LOCK_RECORD_PATH}
    with tempfile.TemporaryDirectory(prefix="mvc-unlock-spool-") as tmp:
        checked = []
        for index, model in enumerate(lockable_models(files)):
            summary = next(
                (m for m in record.get("models", []) if m.get("path") == model.directory), {}
            )
            entries = model.entries()
            read = _reader(repo, entries)
            sealed = unseal(key, record["from"], summary["sealed"]) if "sealed" in summary else {}

            def norm_weight(name: str, sealed: dict = sealed, entries: dict = entries) -> torch.Tensor:
                entry = entries[name][1]
                return to_torch(bytearray(sealed[name]), entry.dtype, entry.shape)

            plan = _plan(
                model, key, summary.get("level", "attention"), summary.get("reads_hidden", []),
                norm_weight,
            )
            folder = Path(tmp) / str(index)
            folder.mkdir()
            spool = _transform_model(model, plan, read, str(folder), inverse=True)
            _check(model, plan, spool.loader(read), read, files)
            checked.append((model, summary, spool))
        for model, summary, spool in checked:
            out.update(_rewrite(model, _unlocked_entries(repo, record, summary, model, spool)))
    return _commit(repo, out, message or f"MergeLock: unlock {repo.resolve(rev)[:10]}")
