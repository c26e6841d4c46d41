"""What a remote storage backend must offer, and the errors it raises.

A remote is a flat key space ('/'-separated keys). Objects (git's and the tensor store's)
are immutable and named by their content, so `put` of an existing key is harmless and
"what the other side lacks" is a set difference of keys. Refs are the only mutable keys;
they change only by compare-and-swap (`cas_ref`), which is what keeps two concurrent
pushes from losing a commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from mvc.errors import NotFoundError, RemoteError

REF_CONFLICT_HINT = "the remote branch moved; fetch and merge first"


class RemoteNotFoundError(RemoteError, NotFoundError):
    """A key that the remote does not hold."""


class RefConflict(RemoteError):
    """A ref changed on the remote between our read and our compare-and-swap."""

    def __init__(self, name: str, hint: str | None = None) -> None:
        super().__init__(
            f"push rejected: remote ref {name} changed; {REF_CONFLICT_HINT}",
            hint=hint or "run `mvc pull` (or `mvc fetch` then `mvc merge`), then push again",
        )
        self.ref = name


class Transport(Protocol):
    """Storage primitives of a remote; implementations must be safe to use from threads."""

    url: str

    def get(self, key: str) -> bytes:
        """The bytes stored at `key`; `RemoteNotFoundError` when absent."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store an immutable object (writing it twice is harmless)."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix` (complete objects only), in no particular order."""
        ...

    def read_ref(self, name: str) -> tuple[bytes | None, str | None]:
        """A ref's value (None when absent) and an opaque token for `cas_ref`."""
        ...

    def cas_ref(self, name: str, value: bytes, expected_token: str | None) -> str:
        """Set a ref if it is unchanged since `read_ref` gave `expected_token`.

        `expected_token=None` creates it only if absent. Raises `RefConflict` otherwise;
        returns the new token.
        """
        ...
