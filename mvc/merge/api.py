"""`mvc merge` as a library call: base discovery and the repository's checks, then the
merge pipeline (:mod:`mvc.merge.pipeline`: plan, check, execute, record), then the commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mvc.errors import ConflictError, MvcError, NotFoundError
from mvc.merge.adapter_plan import AdapterOptions
from mvc.merge.arrays import ArrayOps
from mvc.merge.device import resolve_device
from mvc.merge.layout import LayoutChoice
from mvc.merge.params import MergeParams
from mvc.merge.pipeline import read_commits, run_on_commits
from mvc.merge.planner import TensorRule
from mvc.merge.recipe import Recipe
from mvc.merge.strategies import get_strategy
from mvc.progress import Progress
from mvc.repo import Repo
from mvc.repo.records import is_locked


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
        status = repo.status()  # the one work-tree check of the merge (see _refuse_clobber)
        if not status.clean:
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
        recipe = Recipe(
            base=base,
            parents=tuple(parents),
            contributing=tuple(contributing),
            names=tuple(names),
            strategy=options.strategy,
            params=_params_for(options, names, contributing),
            rules=tuple(options.rules),
            all_tensors=options.all_tensors,
            masks=options.masks,
            layout=LayoutChoice.pick(options.layout, parents, options.max_shard_size),
            operation=options.replay,
            adapter=options.adapter,
        )
        recipe.check()  # before reading any tree
        inputs = read_commits(repo, recipe, head)  # each read once, HEAD's for the clobber check
        outcome = run_on_commits(
            repo,
            recipe,
            resolve_device(options.device),
            progress=progress,
            scratch=repo.scratch_dir(),
            files=inputs,
        )
        try:
            _refuse_clobber(status.untracked, outcome.files, inputs[head])
            files = outcome.files_with_record()
            message = options.message or f"Merge {', '.join(others)} ({options.strategy})"
            # The work tree was checked above, under the lock that is still held: the
            # commit step need not run status() again (force=True).
            if options.commit:
                sha = repo.commit_tree(
                    files, recipe.commit_parents, message, prewritten=outcome.written, force=True
                )
            else:
                sha = None
                repo.stage_tree(files, prewritten=outcome.written, force=True)
                repo.set_merge_state(recipe.commit_parents[1:], message)
        finally:
            outcome.discard()
        return MergeResult(
            sha, base, parents, resolved=outcome.resolved, taken=outcome.taken, record=outcome.record
        )


def _refuse_clobber(
    untracked: Sequence[str], merged: Mapping[str, Any], head_files: Mapping[str, bytes]
) -> None:
    """Refuse to write a merged file over an untracked one the merge would replace."""
    clobbered = [p for p in untracked if p in merged and p not in head_files]
    if clobbered:
        raise ConflictError(
            f"untracked files would be overwritten: {', '.join(clobbered[:5])}",
            hint="move them away, then merge again",
        )


def _refuse_locked(repo: Repo, parents: list[str], names: list[str], allow: bool) -> None:
    if allow:
        return
    for sha, name in zip(parents, names, strict=True):
        if is_locked(repo, sha):
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
