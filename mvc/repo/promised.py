"""Which missing tensor objects a remote has promised, as in git's partial clone.

A lazy clone keeps only the tensor objects its checked-out commit needs; the remote it
came from is its *promisor* (`remote.<name>.promisor = true` in `.git/config`, git's own
key) and holds the rest. An object is promised when a commit reachable from that remote's
tracking branches (or tags) references it: those commits came from the remote, which
verified and kept every object they need. A missing object that only local commits
reference was never on the remote: it is lost. This module only reads the repository;
fetching promised objects is the remote layer's job (`mvc.remote.promisor`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from dulwich.object_store import iter_tree_contents

from mvc.repo.manifest import Manifest
from mvc.repo.references import referenced_objects
from mvc.repo.worktree import is_model_path

if TYPE_CHECKING:
    from mvc.repo.core import RepoCore as Repo
    from mvc.repo.trees import TreeFiles

PROMISOR_KEY = b"promisor"


def promisor_remote(repo: Repo) -> str | None:
    """The name of the remote that promises this repository's missing objects, if any."""
    config = repo.git.get_config()
    for section in config.sections():
        if len(section) == 2 and section[0] == b"remote":
            try:
                if config.get(section, PROMISOR_KEY).lower() in (b"true", b"yes", b"1"):
                    return section[1].decode()
            except KeyError:
                continue
    return None


def set_promisor(repo: Repo, remote: str | None) -> None:
    """Make `remote` the promisor (None: the repository is complete, no promisor)."""
    with repo.locked():
        config = repo.git.get_config()
        for section in list(config.sections()):
            if len(section) == 2 and section[0] == b"remote" and PROMISOR_KEY in config[section]:
                del config[section][PROMISOR_KEY]
        if remote is not None:
            config.set((b"remote", remote.encode()), PROMISOR_KEY, b"true")
        config.write_to_path()


def prefetch_checkout(repo: Repo, old: TreeFiles, new: TreeFiles) -> None:
    """Before a checkout writes anything: fetch, in one batch, the missing objects of the
    model files it will write, so an unreachable remote stops it with nothing changed."""
    ids = [
        oid
        for path, (blob, _) in new.items()
        if is_model_path(path) and old.get(path, (None,))[0] != blob
        for oid in Manifest.from_bytes(repo.read_blob(blob), path).object_ids()
    ]
    repo.store.prefetch(ids)


def promised_commits(repo: Repo, remote: str) -> list[bytes]:
    """Commits reachable from `remote`'s tracking branches."""
    prefix = f"refs/remotes/{remote}/".encode()
    tips = [sha for ref, sha in repo.git.get_refs().items() if ref.startswith(prefix)]
    if not tips:
        return []
    return [entry.commit.id for entry in repo.git.get_walker(include=list(set(tips)))]


def promised_objects(repo: Repo, missing: Iterable[str]) -> set[str]:
    """Those of `missing` that the promisor remote holds (by the rule above)."""
    wanted = set(missing)
    remote = promisor_remote(repo)
    if remote is None or not wanted:
        return set()
    found: set[str] = set()
    seen: set[bytes] = set()
    for sha in promised_commits(repo, remote):
        for entry in iter_tree_contents(repo.git.object_store, repo.git[sha].tree):
            if entry.sha in seen:
                continue
            seen.add(entry.sha)
            ids = set(referenced_objects(entry.path.decode(), repo.read_blob(entry.sha)))
            found |= ids & wanted
            if found == wanted:
                return found
    return found
