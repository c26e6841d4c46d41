"""Maintenance: what is reachable, what the store must keep, fsck and gc.

fsck proves that every committed model can still be checked out, byte for byte; gc deletes
the store objects that nothing reachable (a commit, the index, a record) refers to.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dulwich.object_store import iter_tree_contents

from mvc.errors import CorruptObjectError, FormatError
from mvc.repo.commits import merge_heads
from mvc.repo.core import RepoCore
from mvc.repo.promised import promised_objects, promisor_remote
from mvc.repo.references import referenced_objects
from mvc.repo.refs import head
from mvc.repo.staging import Staging
from mvc.store import GcReport


def reachable_commits(repo: RepoCore) -> list[bytes]:
    """Every commit reachable from a ref, HEAD or an uncommitted merge's MERGE_HEAD."""
    heads = [sha for ref, sha in repo.git.get_refs().items() if ref != b"HEAD"]
    current = head(repo)
    if current:
        heads.append(current.encode())
    heads.extend(h.encode() for h in merge_heads(repo))
    commits = {}
    if heads:
        for entry in repo.git.get_walker(include=list(set(heads))):
            commits[entry.commit.id] = entry.commit
    return list(commits)


def live_objects(repo: RepoCore) -> set[str]:
    """Store objects referenced by any reachable commit, the index, or a merge record."""
    live: set[str] = set()
    seen_blobs: set[bytes] = set()
    blobs: list[tuple[str, bytes]] = []
    for sha in reachable_commits(repo):
        tree = repo.git[sha].tree
        for entry in iter_tree_contents(repo.git.object_store, tree):
            blobs.append((entry.path.decode(), entry.sha))
    staging = Staging(repo.git)
    for path in staging.paths():
        entry = staging.get(path)
        if entry is not None:
            blobs.append((path, entry.blob_id))
    for path, blob_id in blobs:
        if blob_id in seen_blobs:
            continue
        seen_blobs.add(blob_id)
        live.update(referenced_objects(path, repo.read_blob(blob_id)))
    return live


def gc(repo: RepoCore) -> GcReport:
    """Delete store objects that nothing reachable references."""
    with repo.locked():
        return repo.store.gc(live_objects(repo))


@dataclass
class FsckReport:
    problems: list[str] = field(default_factory=list)
    promised: set[str] = field(default_factory=set)  # missing here, held by the promisor
    promisor: str | None = None


def fsck(repo: RepoCore) -> list[str]:
    """Every problem found (empty when the repository is sound)."""
    return fsck_report(repo).problems


def fsck_report(repo: RepoCore) -> FsckReport:
    """Verify git objects of every reachable commit, every manifest, and every store object.

    A missing tensor object that the promisor remote holds (a lazy clone's, see
    `mvc.repo.promised`) is not a problem: it is listed as promised. One that no commit
    from the promisor references is lost.
    """
    problems: list[str] = []
    needed: set[str] = set()
    seen: set[bytes] = set()
    for sha in reachable_commits(repo):
        problems.extend(_check_git_object(repo, sha))
        commit = repo.git[sha]
        problems.extend(_check_git_object(repo, commit.tree))
        try:
            entries = list(iter_tree_contents(repo.git.object_store, commit.tree))
        except KeyError as err:
            problems.append(f"commit {sha.decode()}: missing tree object {err}")
            continue
        for entry in entries:
            if entry.sha in seen:
                continue
            seen.add(entry.sha)
            problems.extend(_check_git_object(repo, entry.sha))
            try:
                blob = repo.read_blob(entry.sha)
                needed.update(referenced_objects(entry.path.decode(), blob))
            except KeyError:
                problems.append(f"{entry.path.decode()}: missing blob {entry.sha.decode()}")
            except FormatError as err:
                problems.append(f"{entry.path.decode()}: {err.message}")
    missing = {oid for oid in needed if not repo.store.has(oid)}
    promised = promised_objects(repo, missing)
    remote = promisor_remote(repo)
    for oid in sorted(missing - promised):
        if remote is None:
            problems.append(f"object {oid}: missing (referenced by a committed model)")
        else:
            problems.append(f"object {oid}: lost (missing, and not promised by {remote})")
    problems.extend(_check_store(repo))
    return FsckReport(problems, promised, remote)


def _check_git_object(repo: RepoCore, sha: bytes) -> list[str]:
    try:
        obj = repo.git.object_store[sha]
    except KeyError:
        return [f"git object {sha.decode()}: missing"]
    except Exception as err:  # dulwich raises assorted errors on damaged objects
        return [f"git object {sha.decode()}: unreadable ({err})"]
    if obj.id != sha:
        return [f"git object {sha.decode()}: content does not match its id"]
    return []


def _check_store(repo: RepoCore) -> list[str]:
    def verify(oid: str) -> str | None:
        try:
            repo.store.verify(oid)
        except CorruptObjectError as err:
            return err.message
        return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [msg for msg in pool.map(verify, sorted(repo.store.ids())) if msg]
