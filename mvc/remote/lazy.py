"""What a lazy fetch brings: every git object, but tensor objects only where they are used.

A repository whose remote is its promisor (see `mvc.repo.promised`) fetches the history
(commits, trees, manifests: small) and only the tensor objects of the branches it has
checked out or was asked for, at their tips; everything else stays promised and is
fetched on demand (`mvc.remote.promisor`). `--all-objects` completes the local copy.
"""

from __future__ import annotations

from collections.abc import Iterable

from dulwich.objects import Commit, ShaFile, Tree

from mvc.remote.config import upstream
from mvc.remote.negotiate import SUBMODULE_MODE
from mvc.repo import Repo
from mvc.repo.references import referenced_objects


def checked_out_branches(repo: Repo, remote: str, heads: Iterable[str]) -> list[str]:
    """The remote branch the current branch tracks (or of the same name), if it exists."""
    branch = repo.current_branch()
    if branch is None:
        return []
    tracked = upstream(repo, branch)
    name = tracked[1] if tracked and tracked[0] == remote else branch
    return [name] if name in set(heads) else []


def tensor_ids_at(repo: Repo, held: dict[str, ShaFile], commits: Iterable[str]) -> set[str]:
    """Tensor objects the trees of `commits` reference (received or already local)."""

    def get(sha: str) -> ShaFile:
        return held[sha] if sha in held else repo.git[sha.encode()]

    ids: set[str] = set()
    done: set[str] = set()
    stack: list[tuple[str, str]] = []
    for sha in commits:
        commit = get(sha)
        if isinstance(commit, Commit):
            stack.append((commit.tree.decode(), ""))
    while stack:
        tree_sha, prefix = stack.pop()
        if tree_sha in done:
            continue
        done.add(tree_sha)
        tree = get(tree_sha)
        if not isinstance(tree, Tree):
            continue
        for entry in tree.iteritems():
            path = prefix + entry.path.decode()
            if entry.mode == SUBMODULE_MODE:
                continue
            if entry.mode & 0o040000:
                stack.append((entry.sha.decode(), path + "/"))
            else:
                ids.update(referenced_objects(path, repo.read_blob(entry.sha)))
    return ids


def missing_live_objects(repo: Repo) -> list[str]:
    """Every tensor object a reachable commit or the index needs that is not stored here."""
    return sorted(oid for oid in repo.live_objects() if not repo.store.has(oid))
