"""MergeLock keys: generation, loading, and the per-head seeds derived from them.

A key is 32 random bytes kept outside the repository. Every transform matrix is derived
from it with HKDF-SHA256, whose ``info`` names the family, layer, KV head and role, so one
key yields independent matrices everywhere while the key itself never has to be stored.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mvc.errors import MvcError

KEY_BYTES = 32
SCHEME = "mergelock-v1"
_SALT = b"mvc/" + SCHEME.encode()


def keygen(path: str | os.PathLike[str]) -> Path:
    """Write a fresh key as hex to ``path`` (mode 0600); refuse to overwrite an existing file.

    ``O_EXCL`` makes the refusal atomic: two concurrent keygens cannot both win, and an
    existing key (which may be the only way to unlock a model) is never clobbered.
    """
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MvcError(
            f"key file {target} already exists",
            hint="keys are not replaceable; choose another file name",
        ) from None
    except OSError as err:
        raise MvcError(f"cannot create key file {target}: {err.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_bytes(KEY_BYTES).hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return target


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Read a key file: 64 hex characters (as keygen writes) or exactly 32 raw bytes."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as err:
        raise MvcError(f"cannot read key file {source}: {err.strerror}") from None
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise MvcError(
        f"{source} is not a MergeLock key (expected 32 bytes, raw or as 64 hex characters)",
        hint="create one with `mvc keygen FILE`",
    )


def derive(key: bytes, info: str, length: int = 32) -> bytes:
    """HKDF-SHA256 of the key for one purpose named by ``info``."""
    if len(key) != KEY_BYTES:
        raise MvcError(f"a MergeLock key has {KEY_BYTES} bytes, got {len(key)}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=info.encode()).derive(
        key
    )


def key_id(key: bytes) -> str:
    """A short public fingerprint of the key, stored in lock records.

    Unlocking with any key is itself an output-preserving transform, so the equivalence
    check alone cannot notice a wrong key; the fingerprint lets unlock refuse one. Being an
    HKDF output it reveals nothing about the key or the matrices.
    """
    return derive(key, f"{SCHEME}/key-id", 8).hex()
