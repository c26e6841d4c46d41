"""`mvc unmerge`: the merge as if one parent had never been in it, committed on top of it.

The merge's recipe (strategy, preset, parameters, seed, rules, base) is run again over the
remaining parents through the merge pipeline (`Recipe.without`, then
`mvc.merge.pipeline`), so the result is exactly what `mvc merge` of those parents with
those options gives. Per-branch values (every parameter declared per branch) lose the
dropped parent's entry. With one contributing parent left the
result is that parent's model; with none, the base's.

Like `git revert`, the result is a new commit on the current branch whose parent is HEAD.
Unlike a revert it replaces every weight, so HEAD must be the merge itself: a later commit's
changes would otherwise be silently discarded. The commit carries a provenance record
(`.mvc/provenance.json`) naming the merge and the dropped parent, and the recipe it ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mvc.errors import MvcError
from mvc.lineage.records import merge_parent, parent_entry, parent_label, with_provenance
from mvc.merge.recipe import Recipe
from mvc.repo.records import without_records

if TYPE_CHECKING:
    from mvc.progress import Progress
    from mvc.repo import Manifest, Repo


@dataclass
class UnmergeResult:
    commit: str
    unmerge_of: str
    dropped: int
    dropped_name: str
    result: str  # recomputed | parent | base
    remaining: list[str]
    resolved: int = 0


def unmerge(
    repo: Repo,
    rev: str,
    drop: str,
    message: str | None = None,
    device: str = "auto",
    progress: Progress | None = None,
) -> UnmergeResult:
    """Recompute merge `rev` without parent `drop` (name, commit or index) and commit it."""
    from mvc.merge.device import resolve_device
    from mvc.merge.pipeline import run_on_commits

    with repo.locked():
        sha, record, index = merge_parent(repo, rev, drop)
        head = repo.head()
        if head != sha:
            raise MvcError(
                f"HEAD is not {rev} ({sha[:12]}): unmerge commits on top of the merge itself",
                hint=f"switch to it first, e.g. `mvc switch -c unmerged {sha[:12]}`",
            )
        recipe = Recipe.from_record(record).without(index)
        merged = None
        if len(recipe.contributing) >= 2:
            merged = run_on_commits(
                repo, recipe, resolve_device(device), progress=progress, scratch=repo.scratch_dir()
            )
            files: dict[str, Manifest | bytes] = dict(merged.files)
            outcome = "recomputed"
        else:
            source = recipe.branches[0] if recipe.contributing else record["base"]
            files = without_records(repo.files(source))
            outcome = "parent" if recipe.contributing else "base"
        dropped_name = parent_label(record, index)
        nested = merged.record if merged is not None else None
        files = with_provenance(
            files,
            "unmerge",
            sha,
            dropped=parent_entry(record, index),
            remaining=[
                parent_entry(record, i) for i in range(len(record["parents"])) if i != index
            ],
            result=outcome,
            record=nested,
            store_objects=nested["store_objects"] if nested else [],
        )
        text = message or f"Unmerge {dropped_name} from {sha[:12]}"
        try:
            prewritten = merged.written if merged is not None else None
            commit = repo.commit_tree(files, [sha], text, prewritten=prewritten)
        finally:
            if merged is not None:
                merged.discard()
    return UnmergeResult(
        commit,
        sha,
        index,
        dropped_name,
        outcome,
        [parent_label(record, i) for i in record["contributing"] if i != index],
        merged.resolved if merged is not None else 0,
    )
