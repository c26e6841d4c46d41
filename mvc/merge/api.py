"""`mvc merge` as a library call: base discovery, checks, plan, execute, record, commit."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mvc.errors import ConflictError, MvcError, NotFoundError
from mvc.merge.adapter_plan import (
    AdapterOptions,
    adapter_folders_to_merge,
    without_folders,
)
from mvc.merge.arrays import ArrayOps, TorchOps
from mvc.merge.device import resolve_device
from mvc.merge.executor import Executor
from mvc.merge.layout import Aligned, LayoutChoice, align_revisions
from mvc.merge.params import MergeParams
from mvc.merge.planner import MergePlan, Planner, TensorRule, raise_conflicts
from mvc.merge.record import RECORD_KIND, RECORD_PATH, SCHEMA_VERSION, encode_record
from mvc.merge.strategies import get_strategy
from mvc.progress import Progress
from mvc.repo import Repo
from mvc.repo.references import LOCK_RECORD_PATH


@dataclass
class MergeOptions:
    """Everything `mvc merge` can be told. Weights are per named branch (or `HEAD`)."""

    strategy: str = "ties"
    params: MergeParams = field(default_factory=MergeParams)
    weights: Mapping[str, float] | Sequence[float] | None = None
    rules: Sequence[TensorRule] = ()
    all_tensors: bool = False
    device: str | ArrayOps = "auto"  # a backend instance: the Python API's own choice
    masks: bool = True
    message: str | None = None
    commit: bool = True
    fast_forward: bool = True
    base: str | None = None
    allow_locked: bool = False
    # Set by revert/cherry-pick (mvc.merge.replay): the operation recorded in the merge
    # record; every named commit enters the merge and the commit's only parent is HEAD.
    replay: Mapping[str, Any] | None = None
    layout: str = "ours"  # whose shard layout the result takes: ours | theirs
    max_shard_size: int | None = None  # or cut shards of this many bytes
    adapter: AdapterOptions | None = None  # how merged LoRA adapters are written back


@dataclass
class MergeResult:
    commit: str | None
    base: str
    parents: list[str]
    fast_forward: bool = False
    up_to_date: bool = False
    resolved: int = 0
    taken: int = 0
    record: dict[str, Any] | None = None


def merge(
    repo: Repo,
    others: Sequence[str],
    options: MergeOptions | None = None,
    progress: Progress | None = None,
) -> MergeResult:
    """Merge branches `others` into HEAD (a three-way parameter merge against the base)."""
    options = options or MergeOptions()
    if not others:
        raise MvcError("nothing to merge", hint="name one or more branches")
    get_strategy(options.strategy)
    with repo.locked():
        head = repo.head()
        if head is None:
            raise MvcError("cannot merge into an empty branch", hint="commit something first")
        resolved = [repo.resolve(rev) for rev in others]
        if len(set(resolved)) != len(resolved):
            raise MvcError("the same commit is named twice in the merge")
        pending = [
            (name, sha)
            for name, sha in zip(others, resolved, strict=True)
            if options.replay or not repo.is_ancestor(sha, head)
        ]
        if not pending:
            return MergeResult(None, head, [head], up_to_date=True)
        others = [name for name, _ in pending]
        parents = [head] + [sha for _, sha in pending]
        names = ["HEAD", *others]
        _refuse_locked(repo, parents, names, options.allow_locked)
        base = _merge_base(repo, parents, options.base)
        if not repo.status().clean:
            raise ConflictError(
                "you have uncommitted changes",
                hint="commit them first (a merge writes the work tree)",
            )
        contributing = [i for i, sha in enumerate(parents) if sha != base]
        if not contributing:
            return MergeResult(None, base, parents, up_to_date=True)
        if (
            len(contributing) == 1
            and contributing[0] != 0
            and options.fast_forward
            and len(parents) == 2
        ):
            repo.update_worktree(parents[1])
            repo.move_branch(head, parents[1], f"merge {others[0]}: fast-forward")
            return MergeResult(parents[1], base, parents, fast_forward=True)
        if contributing == [0]:
            return MergeResult(head, base, parents, up_to_date=True)
        params = _params_for(options, names, contributing)
        get_strategy(options.strategy).check(params, len(contributing))
        choice = LayoutChoice.pick(options.layout, parents, options.max_shard_size)
        aligned = align_revisions(repo, base, [parents[i] for i in contributing], choice)
        adapters = adapter_folders_to_merge(aligned.base_files, aligned.branch_files)
        plan = Planner(
            without_folders(aligned.base_files, adapters),
            [without_folders(f, adapters) for f in aligned.branch_files],
            options.strategy,
            options.rules,
            options.all_tensors,
        ).plan()
        raise_conflicts(plan.conflicts)
        executor = _executor(repo, aligned, params, options, progress)
        try:
            files = aligned.finish(executor.run(plan))
            if adapters:
                from mvc.merge.adapter_merge import merge_adapters  # torch, only for adapters

                adapter_files, adapter_record = merge_adapters(
                    repo, repo.store, base, adapters, aligned.base_files, aligned.branch_files,
                    options.strategy, params, options.adapter,
                )
                files.update(adapter_files)
            record = build_record(
                plan,
                executor.results,
                base,
                parents,
                names,
                contributing,
                params,
                options,
                executor.ops,
            )
            commit_parents = [head] if options.replay else parents
            if options.replay:
                record.update(operation=dict(options.replay), commit_parents=commit_parents)
            if aligned.record() is not None:
                record["layout"] = aligned.record()
            if adapters:
                record["adapters"] = adapter_record
            files[RECORD_PATH] = encode_record(record)
            message = options.message or f"Merge {', '.join(others)} ({options.strategy})"
            if options.commit:
                sha = repo.commit_tree(files, commit_parents, message, prewritten=executor.written)
            else:
                sha = None
                repo.stage_tree(files, prewritten=executor.written)
                repo.set_merge_state(commit_parents[1:], message)
        finally:
            for leftover in executor.written.values():  # those not moved into the work tree
                leftover.unlink(missing_ok=True)
        return MergeResult(
            sha, base, parents, resolved=plan.resolve_count, taken=_taken(plan), record=record
        )


def _refuse_locked(repo: Repo, parents: list[str], names: list[str], allow: bool) -> None:
    if allow:
        return
    for sha, name in zip(parents, names, strict=True):
        if LOCK_RECORD_PATH in repo.tree_files(sha):
            raise MvcError(
                f"{name} ({sha[:12]}) is MergeLock'ed and cannot be merged",
                hint="unlock it with its key, or pass --allow-locked to merge anyway",
            )


def _merge_base(repo: Repo, parents: list[str], explicit: str | None) -> str:
    if explicit:
        return repo.resolve(explicit)
    bases = repo.merge_base(parents)
    if not bases:
        raise MvcError("refusing to merge unrelated histories (no common ancestor)")
    if len(bases) > 1:
        raise MvcError(
            f"several merge bases ({', '.join(b[:12] for b in bases)})",
            hint="choose one with --base REV",
        )
    return bases[0]


def _params_for(options: MergeOptions, names: list[str], contributing: list[int]) -> MergeParams:
    """Per-branch weights in the order of the branches that enter the arithmetic."""
    weights = options.weights
    if weights is None:
        return options.params
    if isinstance(weights, Mapping):
        unknown = [n for n in weights if n not in names]
        if unknown:
            raise NotFoundError(f"--weight names '{unknown[0]}', which is not being merged")
        per_name = {n: float(weights.get(n, 1.0)) for n in names}
    else:
        if len(weights) != len(names) - 1:
            raise MvcError(
                f"{len(weights)} weights given for {len(names) - 1} branches",
                hint="give one --weight per branch, or NAME=W",
            )
        per_name = {"HEAD": 1.0, **{n: float(w) for n, w in zip(names[1:], weights, strict=True)}}
    return options.params.replace(weights=tuple(per_name[names[i]] for i in contributing))


def _executor(
    repo: Repo,
    aligned: Aligned,
    params: MergeParams,
    options: MergeOptions,
    progress: Progress | None,
) -> Executor:
    """The executor for this merge; it also writes the merged model files in the repository's
    scratch folder as it goes, so the work tree gets them without a second pass."""
    return Executor(
        repo.store,
        aligned.manifests(aligned.base_files),
        [aligned.manifests(files) for files in aligned.branch_files],
        params,
        resolve_device(options.device),
        masks=options.masks,
        progress=progress,
        scratch=repo.scratch_dir(),
    )


def _taken(plan: MergePlan) -> int:
    return sum(
        1
        for f in plan.files.values()
        for t in f.tensors
        if t.action in ("one-sided", "identical", "added")
    )


def _versions(device: ArrayOps) -> dict[str, str]:
    """What computed the merge: numpy on the CPU, torch when a torch backend ran it."""
    import numpy

    import mvc

    versions = {"mvc": mvc.__version__, "numpy": numpy.__version__}
    if isinstance(device, TorchOps):
        versions["torch"] = device.torch.__version__
    versions["python"] = platform.python_version()
    return versions


def build_record(
    plan: MergePlan,
    results,
    base: str,
    parents: list[str],
    names: list[str],
    contributing: list[int],
    params: MergeParams,
    options: MergeOptions,
    device: ArrayOps,
) -> dict[str, Any]:

    files: dict[str, Any] = {}
    mask_ids: set[str] = set()
    for path, file_plan in plan.files.items():
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
            if decision.action == "resolve":
                result = results[(path, decision.name)]
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
    return {
        "mvc": RECORD_KIND,
        "schema_version": SCHEMA_VERSION,
        "base": base,
        "parents": parents,
        "parent_names": names,
        "contributing": contributing,
        "strategy": options.strategy,
        "preset": params.preset,
        "params": params.to_record(),
        "seed": params.seed,
        "all_tensors": options.all_tensors,
        "rules": [
            {"match": r.pattern, "strategy": r.strategy, **dict(r.params)} for r in options.rules
        ],
        "masks": options.masks,
        "device": str(device),
        "versions": _versions(device),
        "files": files,
        "store_objects": sorted(mask_ids),
    }
