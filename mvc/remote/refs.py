"""Reading a remote's refs: each key under `refs/` holds one object id and a newline."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from mvc.errors import RemoteError
from mvc.remote.layout import BRANCH_PREFIX
from mvc.remote.transport import Transport

_HEX = set("0123456789abcdef")


def ref_sha(value: bytes | None, ref: str, url: str) -> str | None:
    """The object id a ref's value holds (None when the ref is absent)."""
    if value is None:
        return None
    sha = value.decode(errors="replace").strip()
    if len(sha) != 40 or not set(sha) <= _HEX:
        raise RemoteError(f"ref {ref} on {url} does not hold an object id")
    return sha


def remote_refs(transport: Transport, prefix: str, pool: ThreadPoolExecutor) -> dict[str, str]:
    """name (after `prefix`) -> object id of every ref under `prefix` on the remote."""
    refs = sorted(transport.list(prefix))

    def read(ref: str) -> str | None:
        return ref_sha(transport.read_ref(ref)[0], ref, transport.url)

    return {
        ref[len(prefix) :]: sha
        for ref, sha in zip(refs, pool.map(read, refs), strict=True)
        if sha is not None
    }


def remote_branches(transport: Transport, pool: ThreadPoolExecutor) -> dict[str, str]:
    """branch name -> commit id of every branch on the remote."""
    return remote_refs(transport, BRANCH_PREFIX, pool)
