"""`mvc verify`: recompute a merge from its record and the stored parents, compare hashes.

The recomputation runs the merge pipeline (`mvc.merge.pipeline`) on the recorded recipe
(same strategy, parameters, branches, seed, rules), writing into a scratch store, so the repository gains nothing even
when the commit is forged. Three things must agree: the recomputed plan and the record's
per-tensor decisions; the recomputed output ids and the ids the record lists; the
recomputed files and the commit's tree (every manifest and ordinary file, which also
covers tensors taken whole from one parent). A tensor that differs is named with the
largest absolute difference between the commit's values and the recomputed ones.

Merge arithmetic is deterministic on one device class, but a GPU and a CPU may round
differently; when verify runs on another device class than the merge did, a resolved tensor
whose values differ by at most `tolerance` is reported as tolerated instead of failing.

Each resolved tensor is checked as soon as the recomputation has produced its chunk ids
(a watch on the merge pipeline), against the record and the commit; with `fail_fast` the
first tensor that differs stops the recomputation, and the report names only it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvc.lineage.records import find_provenance, merge_record
from mvc.lineage.tensors import max_abs_difference
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.records import without_records
from mvc.repo.worktree import is_model_path
from mvc.store import ObjectStore, object_id

if TYPE_CHECKING:
    from mvc.progress import Progress
    from mvc.repo import Repo

DEFAULT_TOLERANCE = 1e-5


class ScratchStore:
    """The repository's store for reading; new objects go to a scratch folder instead.

    `verify` must not leave objects behind when a recomputation differs from the commit,
    yet it needs the differing chunks afterwards to measure how far they are off.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.real = store
        self._tmp = tempfile.TemporaryDirectory(prefix="mvc-verify-")
        self.scratch = ObjectStore(Path(self._tmp.name))

    def has(self, oid: str) -> bool:
        return self.real.has(oid) or self.scratch.has(oid)

    def prefetch(self, oids) -> None:
        self.real.prefetch(oids)

    def get(self, oid: str, known: Mapping[str, bytes] | None = None) -> bytes:
        # The scratch folder first: a miss in the real store may fetch from its promisor.
        store = self.scratch if self.scratch.has(oid) else self.real
        return store.get(oid, known)

    def get_view(self, oid: str, known: Mapping[str, bytes] | None = None) -> memoryview:
        store = self.scratch if self.scratch.has(oid) else self.real
        return store.get_view(oid, known)

    def put(
        self,
        data: Any,
        dtype: str,
        shape: Sequence[int],
        base: str | None = None,
        base_data: bytes | None = None,
    ) -> str:
        """Store in the scratch folder, whole (a delta base may live in the real store)."""
        oid = object_id(dtype, shape, data)
        if self.real.has(oid):
            return oid
        return self.scratch.put(data, dtype, shape)

    def close(self) -> None:
        self.scratch.close()
        self._tmp.cleanup()


@dataclass
class Mismatch:
    path: str
    tensor: str | None
    reason: str
    max_abs_diff: float | None = None

    @property
    def where(self) -> str:
        return f"{self.path}::{self.tensor}" if self.tensor else self.path

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    commit: str
    recorded_device: str
    device: str
    tolerance: float
    files: int = 0
    tensors: int = 0
    resolved: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    tolerated: list[Mismatch] = field(default_factory=list)
    stopped: bool = False  # fail_fast stopped at the first mismatch; the rest is unchecked

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def same_device_class(self) -> bool:
        return _device_class(self.recorded_device) == _device_class(self.device)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _device_class(device: str) -> str:
    return device.split(":")[0]


def verifiable_record(repo: Repo, rev: str) -> tuple[str, dict[str, Any]]:
    """The record to recompute: a merge's own, or the recipe an unmerge commit ran."""
    sha = repo.resolve(rev)
    provenance = find_provenance(repo, sha)
    if provenance is not None and provenance.get("record"):
        return sha, provenance["record"]
    return merge_record(repo, rev)


def verify(
    repo: Repo,
    rev: str = "HEAD",
    device: str = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress | None = None,
    fail_fast: bool = False,
) -> VerifyReport:
    """Recompute the merge `rev` and compare it with its record and its tree; with
    `fail_fast`, stop at the first resolved tensor that differs."""
    from mvc.merge.device import resolve_device
    from mvc.merge.pipeline import run_on_commits
    from mvc.merge.recipe import Recipe

    provenance = find_provenance(repo, repo.resolve(rev))
    if provenance is not None and provenance.get("kind") == "bake":
        return _verify_bake(repo, repo.resolve(rev), provenance, tolerance)
    sha, record = verifiable_record(repo, rev)
    compute_device = resolve_device(device)
    report = VerifyReport(sha, str(record.get("device", "cpu")), str(compute_device), tolerance)
    store = ScratchStore(repo.store)
    commit_files = without_records(repo.files(sha))
    watch = _Watch(record, commit_files, report, store) if fail_fast else None
    try:
        result = run_on_commits(
            repo,
            Recipe.from_record(record),
            compute_device,
            store=store,  # type: ignore[arg-type]
            progress=progress,
            record=False,
            watch=watch,
        )
        _compare_decisions(record, result, report, store)
        _compare_files(store, result.files, commit_files, result.results, report)
    except _Stopped:
        report.stopped = True
    finally:
        store.close()
    return report


class _Stopped(Exception):
    """The first mismatch under fail_fast (already in the report)."""


class _Watch:
    """Checks each resolved tensor as the recomputation produces it: its chunk ids against
    the record's output and the commit's tensor; the first that differs (beyond what another
    device class tolerates) goes into the report and stops the merge."""

    def __init__(
        self,
        record: Mapping[str, Any],
        commit_files: Mapping[str, bytes],
        report: VerifyReport,
        store: ScratchStore,
    ) -> None:
        self.recorded: Mapping[str, Any] = record["files"]
        self.commit_files = commit_files
        self.report = report
        self.store = store
        self._manifests: dict[str, dict[str, TensorEntry] | None] = {}

    def _committed(self, path: str) -> dict[str, TensorEntry] | None:
        if path not in self._manifests:
            blob = self.commit_files.get(path)
            manifest = Manifest.from_bytes(blob, path) if blob and is_model_path(path) else None
            self._manifests[path] = manifest.by_name() if manifest is not None else None
        return self._manifests[path]

    def __call__(self, path: str, entry: TensorEntry) -> None:
        ids = list(entry.chunk_ids)
        recorded = self.recorded.get(path, {}).get("tensors", {}).get(entry.name, {})
        if recorded.get("output") != ids:
            self._stop(Mismatch(path, entry.name, "recomputed output ids differ from the record"))
        theirs = (self._committed(path) or {}).get(entry.name)
        found = _tensor_mismatch(self.store, path, entry.name, entry, theirs, True, self.report)
        if found is not None and not found[1]:  # a tolerated one is reported afterwards
            self._stop(found[0])

    def _stop(self, mismatch: Mismatch) -> None:
        self.report.mismatches.append(mismatch)
        raise _Stopped


def _verify_bake(
    repo: Repo, sha: str, provenance: Mapping[str, Any], tolerance: float
) -> VerifyReport:
    """Bake the recorded adapter into the recorded source commit again; compare the trees."""
    from mvc.lineage.bake import baked_files

    report = VerifyReport(sha, "cpu", "cpu", tolerance)
    store = ScratchStore(repo.store)
    try:
        files, _ = baked_files(repo, store, provenance["bake_of"], provenance["adapter"])  # type: ignore[arg-type]
        _compare_files(store, files, without_records(repo.files(sha)), {}, report)
    finally:
        store.close()
    return report


def _same_masks(store: ScratchStore, computed: str, recorded: Any) -> bool:
    """The recomputed mask object against the record's: one id, or (records written before
    masks were packed) one object per branch whose bytes, in order, are its rows."""
    if isinstance(recorded, str) or recorded is None:
        return computed == recorded
    return b"".join(store.get(oid) for oid in recorded) == store.get(computed)


def _compare_decisions(
    record: Mapping[str, Any], result: Any, report: VerifyReport, store: ScratchStore
) -> None:
    """The recomputed plan and outputs against what the record says happened."""
    contributing: list[int] = record["contributing"]
    recorded: Mapping[str, Any] = record["files"]
    for path in sorted(set(recorded) | set(result.plan.files)):
        entry, plan = recorded.get(path), result.plan.files.get(path)
        if entry is None or plan is None:
            where = "record" if entry is None else "recomputed plan"
            report.mismatches.append(Mismatch(path, None, f"missing from the {where}"))
            continue
        if entry["action"] != plan.action:
            report.mismatches.append(
                Mismatch(path, None, f"record says {entry['action']}, recomputed {plan.action}")
            )
            continue
        tensors = entry.get("tensors", {})
        for decision in plan.tensors:
            item = tensors.get(decision.name)
            expected: dict[str, Any] = {"action": decision.action}
            if decision.source is not None:
                expected["source"] = contributing[decision.source]
            if item is None or any(item.get(k) != v for k, v in expected.items()):
                report.mismatches.append(
                    Mismatch(path, decision.name, f"record says {item}, recomputed {expected}")
                )
                continue
            if decision.action != "resolve":
                continue
            report.resolved += 1
            computed = result.results[(path, decision.name)]
            if list(computed.entry.chunk_ids) != item.get("output"):
                report.mismatches.append(
                    Mismatch(path, decision.name, "recomputed output ids differ from the record")
                )
            if computed.mask_id and not _same_masks(store, computed.mask_id, item.get("masks")):
                report.mismatches.append(
                    Mismatch(path, decision.name, "recomputed TALL masks differ from the record")
                )
        extra = set(tensors) - {d.name for d in plan.tensors}
        for name in sorted(extra):
            report.mismatches.append(Mismatch(path, name, "in the record but not in the plan"))


def _compare_files(
    store: ScratchStore,
    computed: Mapping[str, Manifest | bytes],
    committed: Mapping[str, bytes],
    results: Mapping[tuple[str, str], Any],
    report: VerifyReport,
) -> None:
    """Every recomputed file against the commit's tree, tensor by tensor for model files."""
    for path in sorted(set(computed) | set(committed)):
        report.files += 1
        if path not in committed:
            report.mismatches.append(Mismatch(path, None, "missing from the commit"))
            continue
        if path not in computed:
            report.mismatches.append(Mismatch(path, None, "not produced by the recipe"))
            continue
        mine = computed[path]
        if not isinstance(mine, Manifest):
            if mine != committed[path]:
                report.mismatches.append(Mismatch(path, None, "file content differs"))
            continue
        theirs = Manifest.from_bytes(committed[path], path) if is_model_path(path) else None
        if theirs is None:
            report.mismatches.append(Mismatch(path, None, "not a model file in the commit"))
            continue
        _compare_manifest(store, path, mine, theirs, results, report)


def _compare_manifest(
    store: ScratchStore,
    path: str,
    mine: Manifest,
    theirs: Manifest,
    results: Mapping[tuple[str, str], Any],
    report: VerifyReport,
) -> None:
    ours_by_name, theirs_by_name = mine.by_name(), theirs.by_name()
    for name in sorted(set(ours_by_name) | set(theirs_by_name)):
        report.tensors += 1
        resolved = (path, name) in results
        a, b = ours_by_name.get(name), theirs_by_name.get(name)
        found = _tensor_mismatch(store, path, name, a, b, resolved, report)
        if found is not None:
            mismatch, tolerated = found
            (report.tolerated if tolerated else report.mismatches).append(mismatch)
    if mine.header_raw != theirs.header_raw and not any(m.path == path for m in report.mismatches):
        report.mismatches.append(Mismatch(path, None, "safetensors header differs"))


def _tensor_mismatch(
    store: ScratchStore,
    path: str,
    name: str,
    mine: TensorEntry | None,
    theirs: TensorEntry | None,
    resolved: bool,
    report: VerifyReport,
) -> tuple[Mismatch, bool] | None:
    """How the recomputed tensor differs from the committed one (None: not at all), and
    whether the difference is tolerated: a resolved tensor recomputed on another device
    class than the merge's, within the report's tolerance."""
    if mine is None or theirs is None:
        where = "commit" if theirs is None else "recomputed merge"
        return Mismatch(path, name, f"missing from the {where}"), False
    if (mine.dtype, mine.shape) != (theirs.dtype, theirs.shape):
        shown = f"{theirs.dtype}{list(theirs.shape)} in the commit, "
        return Mismatch(path, name, shown + f"{mine.dtype}{list(mine.shape)} recomputed"), False
    if mine.chunk_ids == theirs.chunk_ids:
        return None
    diff = max_abs_difference(store, mine, theirs)
    if resolved and not report.same_device_class and diff <= report.tolerance:
        return Mismatch(path, name, "differs within tolerance (other device class)", diff), True
    return Mismatch(path, name, "content differs", diff), False
