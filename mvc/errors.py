"""User-facing errors.

Every error a user can cause is an ``MvcError``: the CLI prints it as one line
(``mvc: error: <message>``, then ``hint: <hint>`` when there is one) and exits 1,
never with a traceback. Anything else escaping to the CLI is a bug.
"""

from __future__ import annotations


class MvcError(Exception):
    """An error the user can act on: a one-line message and an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class FormatError(MvcError):
    """A model file (safetensors header, index, manifest) is malformed or hostile."""


class CorruptObjectError(MvcError):
    """A stored object does not decode, or its content does not match its id."""


class NotFoundError(MvcError):
    """A revision, path, tensor, remote or object does not exist."""


class ConflictError(MvcError):
    """An operation cannot proceed without the user choosing (merge conflicts, dirty tree)."""


class LockedError(MvcError):
    """Another mvc process holds a lock that this operation needs."""


class RemoteError(MvcError):
    """A remote is unreachable, refuses us, or sent something that does not verify."""
