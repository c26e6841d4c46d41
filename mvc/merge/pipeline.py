"""The one merge pipeline: plan, check, execute, record.

Every merge in mvc runs here, whoever asks for it: `mvc merge` and `mvc pull` (through
:func:`mvc.merge.api.merge`), `mvc verify` (into a scratch store), `mvc unmerge` (the
recorded recipe without one parent) and the plain-git merge driver (over the blobs git
hands it). So they all decide tensors with the same planner, refuse bad input with the same
checks before anything is written, compute with the same streaming executor and describe
the result with the same record.

Each input file is read once: callers pass every side's files as stored (manifests for
model files), and each manifest is parsed once, for the planner and the executor alike.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvc.merge.adapter_plan import adapter_folders_to_merge, without_folders
from mvc.merge.arrays import ArrayOps, TorchOps
from mvc.merge.executor import Executor, TensorResult
from mvc.merge.layout import align
from mvc.merge.planner import MergePlan, Planner, raise_conflicts
from mvc.merge.recipe import Recipe
from mvc.merge.record import MERGE_RECORD
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.worktree import is_model_path

if TYPE_CHECKING:
    from mvc.progress import Progress
    from mvc.repo import Repo
    from mvc.store import ObjectStore


@dataclass
class MergeOutcome:
    """A computed merge: its plan, the merged file set (manifests for model files, bytes
    otherwise), each resolved tensor's result, and the record describing it.

    ``written`` holds the merged model files already written out in the repository's
    scratch folder (path -> file), for the commit step to move into the work tree instead
    of writing them again from the store; :meth:`discard` removes those it did not take.
    """

    recipe: Recipe
    plan: MergePlan
    files: dict[str, Manifest | bytes]
    results: dict[tuple[str, str], TensorResult]
    device: ArrayOps
    record: dict[str, Any] | None = None
    written: dict[str, Path] = field(default_factory=dict)
    layout: dict[str, Any] | None = None  # the record's `layout` entry, when one is due
    adapters: dict[str, Any] | None = None  # the record's `adapters` entry (LoRA merges)

    @property
    def resolved(self) -> int:
        return self.plan.resolve_count

    @property
    def taken(self) -> int:
        """Tensors taken whole from one side (changed there only, identically, or added)."""
        return sum(
            1
            for f in self.plan.files.values()
            for t in f.tensors
            if t.action in ("one-sided", "identical", "added")
        )

    def files_with_record(self) -> dict[str, Manifest | bytes]:
        """The merged files and, under `.mvc/merge.json`, the merge record."""
        assert self.record is not None, "this merge was run without a record"
        return {**self.files, MERGE_RECORD.path: MERGE_RECORD.encode(self.record)}

    def discard(self) -> None:
        for leftover in self.written.values():  # those not moved into the work tree
            leftover.unlink(missing_ok=True)


def run(
    recipe: Recipe,
    store: ObjectStore,
    base_files: Mapping[str, bytes],
    branch_files: Sequence[Mapping[str, bytes]],
    device: ArrayOps,
    *,
    progress: Progress | None = None,
    scratch: Path | None = None,
    record: bool = True,
    layout_files: Mapping[str, bytes] | None = None,
    watch: Callable[[str, TensorEntry], None] | None = None,
) -> MergeOutcome:
    """Plan, check, execute and (with ``record``) record ``recipe``.

    ``base_files`` and ``branch_files`` (one mapping per contributing branch, in order) map
    paths to stored blobs; with a ``recipe.layout``, ``layout_files`` are the files of its
    source commit, and every side's model folders are first aligned to that layout.
    Conflicts raise :class:`~mvc.merge.planner.MergeConflicts` and bad parameters
    :class:`~mvc.errors.MvcError`, both before anything is computed or stored. New objects go into ``store``; with ``scratch``, merged model files are also
    written there as they are computed (``MergeOutcome.written``). ``watch`` is told each
    resolved tensor's entry as soon as its chunk ids are known (see :class:`Executor`).
    """
    recipe.check()
    manifests = _Manifests()
    aligned = None
    if recipe.layout is not None:
        assert layout_files is not None, "a layout needs its source commit's files"
        aligned = align(base_files, branch_files, layout_files, recipe.layout, manifests.models)
        base_files, branch_files = aligned.base_files, aligned.branch_files
    adapters = adapter_folders_to_merge(base_files, branch_files)
    plan = Planner(
        without_folders(base_files, adapters),
        [without_folders(files, adapters) for files in branch_files],
        recipe.strategy,
        recipe.rules,
        recipe.all_tensors,
        parse=manifests.parse,
    ).plan()
    raise_conflicts(plan.conflicts)
    executor = Executor(
        store,
        manifests.models(base_files),
        [manifests.models(files) for files in branch_files],
        recipe.params,
        device,
        masks=recipe.masks,
        progress=progress,
        scratch=scratch,
        watch=watch,
    )
    try:
        files = executor.run(plan)
        if aligned is not None:
            files = aligned.finish(files)
        if adapters:  # LoRA adapters changed on several sides: merged in ΔW space
            from mvc.merge.adapter_merge import merge_adapters  # torch, only for adapters

            adapter_files, adapter_record = merge_adapters(
                store,
                manifests.models(base_files),
                adapters,
                base_files,
                branch_files,
                recipe,
                files,
            )
            for path in adapter_files:  # a model baked into (--into model) is written anew
                stale = executor.written.pop(path, None)
                if stale is not None:
                    stale.unlink(missing_ok=True)
            files.update(adapter_files)
    except BaseException:
        for leftover in executor.written.values():
            leftover.unlink(missing_ok=True)
        raise
    outcome = MergeOutcome(recipe, plan, files, executor.results, device, None, executor.written)
    if aligned is not None:
        outcome.layout = aligned.record()
    if adapters:
        outcome.adapters = adapter_record
    if record:
        outcome.record = _record(outcome)
    return outcome


def run_on_commits(
    repo: Repo,
    recipe: Recipe,
    device: ArrayOps,
    *,
    store: ObjectStore | None = None,
    progress: Progress | None = None,
    scratch: Path | None = None,
    record: bool = True,
    files: Mapping[str, Mapping[str, bytes]] | None = None,
    watch: Callable[[str, TensorEntry], None] | None = None,
) -> MergeOutcome:
    """:func:`run` over the recipe's commits; ``files`` are those :func:`read_commits`
    read (read here when not given)."""
    assert recipe.base is not None
    if files is None:
        recipe.check()  # before reading any tree
        files = read_commits(repo, recipe)
    return run(
        recipe,
        store if store is not None else repo.store,
        files[recipe.base],
        [files[sha] for sha in recipe.branches],
        device,
        progress=progress,
        scratch=scratch,
        record=record,
        layout_files=files[recipe.layout.source] if recipe.layout is not None else None,
        watch=watch,
    )


def read_commits(repo: Repo, recipe: Recipe, *extra: str) -> dict[str, dict[str, bytes]]:
    """Every commit the recipe reads (base, branches, the layout's source) and ``extra``
    ones, each tree and its blobs read once: commit -> path -> blob."""
    layout = [recipe.layout.source] if recipe.layout is not None else []
    shas = [recipe.base, *recipe.branches, *layout, *extra]
    return {sha: repo.files(sha) for sha in dict.fromkeys(s for s in shas if s is not None)}


class _Manifests:
    """Each model file's manifest parsed once, shared by the planner and the executor.

    Keyed on the blob object itself (the same bytes object every reader of one side's
    files gets), so no blob is hashed or compared to find its manifest.
    """

    def __init__(self) -> None:
        self._parsed: dict[int, tuple[bytes, Manifest]] = {}

    def parse(self, blob: bytes, path: str) -> Manifest:
        hit = self._parsed.get(id(blob))
        if hit is None or hit[0] is not blob:
            hit = (blob, Manifest.from_bytes(blob, path))
            self._parsed[id(blob)] = hit
        return hit[1]

    def models(self, files: Mapping[str, bytes]) -> Mapping[str, Manifest]:
        return _Models(files, self)


class _Models(Mapping[str, Manifest]):
    """One side's model files as manifests, parsed when first asked for."""

    def __init__(self, files: Mapping[str, bytes], manifests: _Manifests) -> None:
        self._files = {p: b for p, b in files.items() if is_model_path(p)}
        self._manifests = manifests

    def __getitem__(self, path: str) -> Manifest:
        return self._manifests.parse(self._files[path], path)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _versions(device: ArrayOps) -> dict[str, str]:
    """What computed the merge: numpy on the CPU, torch when a torch backend ran it."""
    import numpy

    import mvc

    versions = {"mvc": mvc.__version__, "numpy": numpy.__version__}
    if isinstance(device, TorchOps):
        versions["torch"] = device.torch.__version__
    versions["python"] = platform.python_version()
    return versions


def _record(outcome: MergeOutcome) -> dict[str, Any]:
    """The merge record (docs/merge-record.md): the recipe, then what happened to every
    file and tensor, with each resolved tensor's statistics, output and masks."""
    contributing = outcome.recipe.contributing
    files: dict[str, Any] = {}
    mask_ids: set[str] = set()
    for path, file_plan in outcome.plan.files.items():
        entry: dict[str, Any] = {"action": file_plan.action, "kind": file_plan.kind}
        if file_plan.action != "merged":
            if file_plan.action not in ("base", "deleted"):
                entry["source"] = contributing[file_plan.header_source]
            files[path] = entry
            continue
        tensors = {}
        for decision in file_plan.tensors:
            item: dict[str, Any] = {"action": decision.action}
            if decision.source is not None:
                item["source"] = contributing[decision.source]
            if decision.appended is not None:  # rows past the base's came from this parent
                item["appended"] = contributing[decision.appended]
            if decision.action == "resolve":
                result = outcome.results[(path, decision.name)]
                item["branches"] = [contributing[i] for i in result.branches]
                item["strategy"] = result.strategy
                if decision.params:
                    item["params"] = dict(decision.params)
                item["stats"] = result.stats.to_record()
                item["output"] = list(result.entry.chunk_ids)
                if result.mask_id:
                    item["masks"] = result.mask_id
                    mask_ids.add(result.mask_id)
            tensors[decision.name] = item
        entry["tensors"] = tensors
        files[path] = entry
    extra: dict[str, Any] = {"layout": outcome.layout} if outcome.layout is not None else {}
    if outcome.adapters is not None:
        extra["adapters"] = outcome.adapters
    return {
        **MERGE_RECORD.header(),
        **outcome.recipe.record_fields(),
        **extra,
        "device": str(outcome.device),
        "versions": _versions(outcome.device),
        "files": files,
        "store_objects": sorted(mask_ids),
    }
