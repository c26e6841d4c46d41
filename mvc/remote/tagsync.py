"""Tags on a remote: `refs/tags/<name>` holding the id of an annotated tag object.

Push carries the tags that name commits in the pushed branch's history (git's
`--follow-tags`), so a release tag travels with the release; fetch and clone bring every
remote tag. Tags never move: a tag that already exists on the other side with another
value is left as it is and reported, never overwritten (the ref is created by a CAS that
succeeds only when it is absent).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from mvc.remote.layout import git_object_key
from mvc.remote.refs import remote_refs
from mvc.remote.transport import RefConflict, Transport
from mvc.repo import Repo
from mvc.repo.tags import TAG_PREFIX

REMOTE_TAG_PREFIX = TAG_PREFIX.decode()


def remote_tags(transport: Transport, pool: ThreadPoolExecutor) -> dict[str, str]:
    """tag name -> tag object id of every tag on the remote."""
    return remote_refs(transport, REMOTE_TAG_PREFIX, pool)


def local_tags(repo: Repo) -> dict[str, str]:
    return {
        ref.decode(): repo.git.refs[TAG_PREFIX + ref].decode()
        for ref in repo.git.refs.keys(base=TAG_PREFIX)
    }


def push_tags(
    repo: Repo, transport: Transport, commit: str, pool: ThreadPoolExecutor
) -> tuple[dict[str, str], list[str]]:
    """Send the local tags on `commit`'s history that the remote lacks.

    The commits they name are on the remote already (the branch was pushed first), so
    only the tag objects travel, then their refs. Returns (pushed name -> id, names left
    alone because the remote holds another tag of that name).
    """
    there = remote_tags(transport, pool)
    pushed: dict[str, str] = {}
    refused: list[str] = []
    for name, sha in sorted(local_tags(repo).items()):
        if there.get(name) == sha:
            continue
        if not repo.is_ancestor(repo.resolve(sha), commit):
            continue
        if name in there:
            refused.append(name)
            continue
        obj = repo.git.object_store[sha.encode()]
        transport.put(git_object_key(sha), obj.as_legacy_object())
        try:
            transport.cas_ref(REMOTE_TAG_PREFIX + name, f"{sha}\n".encode(), None)
        except RefConflict:
            refused.append(name)  # pushed by someone else meanwhile
            continue
        pushed[name] = sha
    return pushed, refused


def store_fetched_tags(repo: Repo, tags: dict[str, str]) -> dict[str, str]:
    """Create the local tags that do not exist yet (their objects are stored already)."""
    created = {}
    for name, sha in sorted(tags.items()):
        if repo.git.refs.add_if_new(TAG_PREFIX + name.encode(), sha.encode()):
            created[name] = sha
    return created
