"""fsck: prove that every committed model can still be checked out, byte for byte."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dulwich.object_store import iter_tree_contents

from mvc.errors import CorruptObjectError, FormatError
from mvc.repo.promised import promised_objects, promisor_remote
from mvc.repo.references import referenced_objects

if TYPE_CHECKING:
    from mvc.repo.repository import Repo


@dataclass
class FsckReport:
    problems: list[str] = field(default_factory=list)
    promised: set[str] = field(default_factory=set)  # missing here, held by the promisor
    promisor: str | None = None


def check_repository(repo: Repo) -> list[str]:
    """Every problem `fsck_report` finds."""
    return fsck_report(repo).problems


def fsck_report(repo: Repo) -> FsckReport:
    """Verify git objects of every reachable commit, every manifest, and every store object.

    A missing tensor object that the promisor remote holds (a lazy clone's, see
    `mvc.repo.promised`) is not a problem: it is listed as promised. One that no commit
    from the promisor references is lost.
    """
    problems: list[str] = []
    needed: set[str] = set()
    seen: set[bytes] = set()
    for sha in repo.reachable_commits():
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


def _check_git_object(repo: Repo, sha: bytes) -> list[str]:
    try:
        obj = repo.git.object_store[sha]
    except KeyError:
        return [f"git object {sha.decode()}: missing"]
    except Exception as err:  # dulwich raises assorted errors on damaged objects
        return [f"git object {sha.decode()}: unreadable ({err})"]
    if obj.id != sha:
        return [f"git object {sha.decode()}: content does not match its id"]
    return []


def _check_store(repo: Repo) -> list[str]:
    def verify(oid: str) -> str | None:
        try:
            repo.store.verify(oid)
        except CorruptObjectError as err:
            return err.message
        return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [msg for msg in pool.map(verify, sorted(repo.store.ids())) if msg]
