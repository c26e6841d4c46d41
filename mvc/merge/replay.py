"""`mvc revert C` and `mvc cherry-pick C`: git's three-way merges with a chosen base.

For weights they are task arithmetic. With P the parent of C and τ_C = C − P:

- revert C merges HEAD with P over base C: HEAD − τ_C, C's change negated ("forgetting
  by negation");
- cherry-pick C merges HEAD with C over base P: HEAD + τ_C, C's change added elsewhere.

Both run `mvc.merge.api.merge` with that base and the caller's recipe (strategy, λ,
weights, ...), so the planner, strategies, executor and record are the merge's own: a
tensor that only one side changed is taken byte-exact, which is why reverting C on top of
C gives P exactly, and cherry-picking C onto P gives C. The commit has HEAD as its only
parent, as git's does; its merge record names the operation, C and P, so `lineage`,
`verify` and `unmerge` read it like any merge.
"""

from __future__ import annotations

import dataclasses

from mvc.errors import MvcError
from mvc.merge.api import MergeOptions, MergeResult, merge
from mvc.progress import Progress
from mvc.repo import Repo

OPERATIONS = ("revert", "cherry-pick")


def replay(
    repo: Repo,
    operation: str,
    rev: str,
    options: MergeOptions | None = None,
    mainline: int | None = None,
    progress: Progress | None = None,
) -> MergeResult:
    """Revert or cherry-pick commit `rev` onto HEAD; `mainline` (1-based) picks P of a merge."""
    if operation not in OPERATIONS:
        raise MvcError(f"unknown operation '{operation}'")
    sha = repo.resolve(rev)
    parents = list(repo.commit_info(sha).parents)
    if not parents:
        raise MvcError(
            f"cannot {operation} {rev} ({sha[:12]}): it is a root commit, with no parent "
            "to compare it with"
        )
    if mainline is None:
        if len(parents) > 1:
            raise MvcError(
                f"commit {sha[:12]} is a merge of {len(parents)} parents and -m was not given",
                hint=f"name the parent to measure the change against, e.g. `-m 1` "
                f"(mvc {operation} -m 1 {rev})",
            )
        mainline = 1
    if not 1 <= mainline <= len(parents):
        raise MvcError(
            f"commit {sha[:12]} has no parent {mainline}",
            hint=f"-m takes 1..{len(parents)}",
        )
    parent = parents[mainline - 1]
    if operation == "revert":
        base, name = sha, f"{rev}^{mainline}"
        default_message = f'Revert "{repo.commit_info(sha).message.splitlines()[0]}"'
    else:
        base, name = parent, rev
        default_message = repo.commit_info(sha).message.rstrip("\n")
    options = options or MergeOptions(strategy="task_arithmetic")
    options = dataclasses.replace(
        options,
        base=base,
        fast_forward=False,
        message=options.message or f"{default_message}\n\n({operation} of {sha})",
        replay={"kind": operation, "commit": sha, "parent": parent, "mainline": mainline},
    )
    return merge(repo, [name], options, progress=progress)
