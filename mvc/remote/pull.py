"""pull: fetch, then fast-forward or merge the remote branch into the current one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mvc.errors import ConflictError, MvcError, NotFoundError
from mvc.progress import Progress
from mvc.remote.config import upstream
from mvc.remote.sync import DEFAULT_WORKERS, TransferReport, fetch
from mvc.repo import Repo

if TYPE_CHECKING:  # pull imports the merge layer only when it has to merge
    from mvc.merge.api import MergeOptions, MergeResult


@dataclass
class PullResult:
    """What `pull` did: the fetch, then "up-to-date", "fast-forward", "merged" or "staged"."""

    report: TransferReport
    outcome: str
    commit: str | None
    merge: MergeResult | None = None


def pull(
    repo: Repo,
    remote: str | None = None,
    branch: str | None = None,
    options: MergeOptions | None = None,
    *,
    ff_only: bool = False,
    endpoint: str | None = None,
    quiet: bool = False,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> PullResult:
    """Fetch, then bring the remote branch into the current one, as `git pull` does.

    Fast-forwards when the current branch has nothing of its own (unless the options ask
    for a merge commit); diverged histories get a three-way parameter merge of
    `REMOTE/BRANCH` into HEAD with `options` (TIES by default). A conflicting merge stops
    before writing anything: the branch and work tree stay as they were, while the
    fetched remote-tracking branch stays, ready for `mvc merge` with other options.
    """
    current = repo.current_branch()
    if current is None:
        raise MvcError("HEAD is detached; switch to a branch before pulling")
    tracked = upstream(repo, current)
    remote = remote or (tracked[0] if tracked else "origin")
    if branch is None:
        branch = tracked[1] if tracked and tracked[0] == remote else current
    report = fetch(repo, remote, endpoint=endpoint, quiet=quiet, workers=workers)
    tracking = f"refs/remotes/{remote}/{branch}"
    if tracking.encode() not in repo.git.refs:
        raise NotFoundError(f"remote '{remote}' has no branch '{branch}'")
    theirs = repo.git.refs[tracking.encode()].decode()
    ours = repo.head()
    with repo.locked():
        if ours == theirs or (ours is not None and repo.is_ancestor(theirs, ours)):
            return PullResult(report, "up-to-date", ours or theirs)
        fast_forward = options is None or options.fast_forward
        if ours is None or (fast_forward and repo.is_ancestor(ours, theirs)):
            repo.update_worktree(theirs)
            repo.move_branch(ours, theirs, f"pull: fast-forward to {remote}/{branch}")
            return PullResult(report, "fast-forward", theirs)
    if ff_only:
        raise ConflictError(
            f"'{current}' and '{remote}/{branch}' have diverged; not fast-forwarding",
            hint=f"pull without --ff-only to merge, or run `mvc merge {remote}/{branch}`",
        )
    from mvc.merge.api import MergeOptions, merge

    options = options or MergeOptions()
    if options.message is None:
        options = dataclasses.replace(
            options, message=f"Merge {remote}/{branch} into {current} ({options.strategy})"
        )
    result = merge(repo, [f"{remote}/{branch}"], options, progress=progress)
    return PullResult(report, "merged" if result.commit else "staged", result.commit, result)
