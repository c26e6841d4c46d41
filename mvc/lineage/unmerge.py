"""`mvc unmerge`: the merge as if one parent had never been in it, committed on top of it.

The merge's recipe (strategy, preset, parameters, seed, rules, base) is run again over the
remaining parents with the merge's own planner and executor, so the result is exactly what
`mvc merge` of those parents with those options gives. Per-branch values (weights,
densities, TALL λ) lose the dropped parent's entry. With one contributing parent left the
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
from mvc.lineage.recompute import Recipe, recompute, record_rules
from mvc.lineage.records import (
    PROVENANCE_KIND,
    PROVENANCE_PATH,
    PROVENANCE_VERSION,
    encode_provenance,
    merge_record,
    parent_index,
    parent_label,
)
from mvc.merge.layout import LayoutChoice
from mvc.merge.params import MergeParams, drop_branch
from mvc.merge.planner import RECORD_PREFIX

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
    from mvc.merge.api import MergeOptions, build_record
    from mvc.merge.device import resolve_device

    with repo.locked():
        sha, record = merge_record(repo, rev)
        index = parent_index(record, drop, repo)
        head = repo.head()
        if head != sha:
            raise MvcError(
                f"HEAD is not {rev} ({sha[:12]}): unmerge commits on top of the merge itself",
                hint=f"switch to it first, e.g. `mvc switch -c unmerged {sha[:12]}`",
            )
        parents: list[str] = record["parents"]
        contributing: list[int] = record["contributing"]
        names = list(record.get("parent_names") or [p[:12] for p in parents])
        kept = [i for i in range(len(parents)) if i != index]
        kept_contributing = [i for i in contributing if i != index]
        nested = None
        resolved = 0
        if len(kept_contributing) >= 2:
            params, rules = record["params"], record_rules(record)
            if index in contributing:
                position, n = contributing.index(index), len(contributing)
                params = drop_branch(params, position, n)
                rules = [
                    type(r)(r.pattern, r.strategy, drop_branch(r.params, position, n))
                    for r in rules
                ]
            recipe = Recipe(
                base=record["base"],
                branches=[parents[i] for i in kept_contributing],
                strategy=record["strategy"],
                params=MergeParams.from_record(params),
                rules=rules,
                all_tensors=bool(record.get("all_tensors")),
                masks=bool(record.get("masks", True)),
                layout=LayoutChoice.from_record(record),
            )
            result = recompute(repo, recipe, resolve_device(device), progress=progress)
            files: dict[str, Manifest | bytes] = dict(result.files)
            options = MergeOptions(
                strategy=recipe.strategy,
                rules=recipe.rules,
                all_tensors=recipe.all_tensors,
                masks=recipe.masks,
            )
            nested = build_record(
                result.plan,
                result.results,
                recipe.base,
                [parents[i] for i in kept],
                [names[i] for i in kept],
                [kept.index(i) for i in kept_contributing],
                recipe.params,
                options,
                result.device,
            )
            if result.layout is not None:
                nested["layout"] = result.layout
            resolved = result.plan.resolve_count
            outcome = "recomputed"
        else:
            source = parents[kept_contributing[0]] if kept_contributing else record["base"]
            files = {
                path: data
                for path, data in repo.files(source).items()
                if not path.startswith(RECORD_PREFIX)
            }
            outcome = "parent" if kept_contributing else "base"
        dropped_name = parent_label(record, index)
        provenance = {
            "mvc": PROVENANCE_KIND,
            "schema_version": PROVENANCE_VERSION,
            "kind": "unmerge",
            "unmerge_of": sha,
            "dropped": {"index": index, "name": dropped_name, "commit": parents[index]},
            "remaining": [
                {"index": i, "name": parent_label(record, i), "commit": parents[i]} for i in kept
            ],
            "result": outcome,
            "commit_parents": [sha],
            "record": nested,
            "store_objects": nested["store_objects"] if nested else [],
        }
        files[PROVENANCE_PATH] = encode_provenance(provenance)
        text = message or f"Unmerge {dropped_name} from {sha[:12]}"
        commit = repo.commit_tree(files, [sha], text)
    return UnmergeResult(
        commit,
        sha,
        index,
        dropped_name,
        outcome,
        [parent_label(record, i) for i in kept_contributing],
        resolved,
    )
