"""What one side lacks: content ids make it a set difference.

Git objects to send are those reachable from the pushed commit but not from any commit
the remote's refs already hold (dulwich's `MissingObjectFinder`), then minus the objects
the remote lists (so an interrupted push resumes instead of re-sending). Tensor objects to
send are those that the new manifests and records reference, minus those the remote
lists, plus the delta bases the remote lacks (found as the deltas are read for sending).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from dulwich.object_store import MissingObjectFinder, iter_tree_contents
from dulwich.objects import Commit, ShaFile, Tree, TreeEntry

from mvc.remote.layout import GIT_OBJECT_PREFIX, TENSOR_OBJECT_PREFIX, ids_from_keys
from mvc.remote.transport import Transport
from mvc.repo import Repo
from mvc.repo.references import referenced_objects

GIT_ID_LENGTH = 40
TENSOR_ID_LENGTH = 32
SUBMODULE_MODE = 0o160000


def remote_git_ids(transport: Transport) -> set[str]:
    return ids_from_keys(transport.list(GIT_OBJECT_PREFIX), GIT_OBJECT_PREFIX, GIT_ID_LENGTH)


def remote_tensor_ids(transport: Transport) -> set[str]:
    return ids_from_keys(
        transport.list(TENSOR_OBJECT_PREFIX), TENSOR_OBJECT_PREFIX, TENSOR_ID_LENGTH
    )


def git_objects_missing(repo: Repo, wants: Iterable[str], haves: Iterable[str]) -> list[str]:
    """Objects reachable from `wants` and not from the (locally known) `haves`."""
    store = repo.git.object_store
    known = [h.encode() for h in haves if h.encode() in store]
    finder = MissingObjectFinder(store, haves=known, wants=[w.encode() for w in wants])
    return [sha.decode() for sha, _ in finder]


def referenced_tensor_ids(repo: Repo, commits: Iterable[str], blobs: set[str]) -> set[str]:
    """Tensor objects referenced by those of `blobs` that these commits' trees hold."""
    ids: set[str] = set()
    seen: set[bytes] = set()
    for sha in commits:
        commit = repo.git[sha.encode()]
        for entry in iter_tree_contents(repo.git.object_store, commit.tree):
            if entry.sha in seen or entry.sha.decode() not in blobs:
                continue
            seen.add(entry.sha)
            ids.update(referenced_objects(entry.path.decode(), repo.read_blob(entry.sha)))
    return ids


def tree_entries(
    roots: Iterable[str], get: Callable[[str], ShaFile | None], walked: set[str] | None = None
) -> Iterator[tuple[str, TreeEntry]]:
    """(path, entry) of every file below the trees `roots`, submodules left out.

    A tree `get` does not give (None, or not a tree) is not walked. With `walked`, a tree
    met twice is walked once: for callers that collect what files reference, not where.
    """
    stack = [(sha, "") for sha in roots]
    while stack:
        sha, prefix = stack.pop()
        if walked is not None:
            if sha in walked:
                continue
            walked.add(sha)
        tree = get(sha)
        if not isinstance(tree, Tree):
            continue
        for entry in tree.iteritems():
            path = prefix + entry.path.decode()
            if entry.mode == SUBMODULE_MODE:
                continue
            if entry.mode & 0o040000:
                stack.append((entry.sha.decode(), path + "/"))
            else:
                yield path, entry


def tree_tensor_ids(
    repo: Repo, trees: Iterable[str], get: Callable[[str], ShaFile | None]
) -> set[str]:
    """Tensor objects referenced by the model files and records under `trees`.

    `get` gives a tree by id; a tree it does not give (None, or not a tree) is not walked,
    which lets a fetch walk only the trees it received.
    """
    ids: set[str] = set()
    for path, entry in tree_entries(trees, get, walked=set()):
        ids.update(referenced_objects(path, repo.read_blob(entry.sha)))
    return ids


def children(obj: ShaFile) -> list[str]:
    """The objects a git object points to (parents and tree of a commit, a tree's entries)."""
    if isinstance(obj, Commit):
        return [obj.tree.decode(), *(p.decode() for p in obj.parents)]
    if isinstance(obj, Tree):
        return [entry.sha.decode() for entry in obj.iteritems() if entry.mode != SUBMODULE_MODE]
    target = getattr(obj, "object", None)
    return [target[1].decode()] if target else []
