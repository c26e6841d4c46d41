"""Sealed original values: what a lock had to overwrite and unlock has to put back.

Folding an RMSNorm weight into the matrices that read it leaves the norm at ones, so the
original weight is nowhere in the locked tensors, and unlocking without it is impossible.
It cannot go into the lock record in the clear either: fine-tuned norm weights are part of
the task the lock protects. So the record carries it encrypted with AES-256-GCM under a key
derived from the MergeLock key by HKDF (info names the locked-from commit, so no two locks
with one key share a key/nonce pair); the nonce is derived too, which keeps the record
deterministic. Only the key holder can read or forge it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mvc.errors import MvcError
from mvc.lock.keys import SCHEME, derive


def _cipher(key: bytes, source: str) -> tuple[AESGCM, bytes]:
    info = f"{SCHEME}/seal/from={source}"
    return AESGCM(derive(key, f"{info}/key", 32)), derive(key, f"{info}/nonce", 12)


def seal(key: bytes, source: str, values: Mapping[str, bytes]) -> str:
    """``values`` (tensor name -> raw bytes) encrypted for the lock record, as base64 text."""
    plain = json.dumps(
        {name: base64.b64encode(data).decode() for name, data in sorted(values.items())}
    ).encode()
    cipher, nonce = _cipher(key, source)
    return base64.b64encode(cipher.encrypt(nonce, plain, source.encode())).decode()


def unseal(key: bytes, source: str, text: str) -> dict[str, bytes]:
    """The values ``seal`` wrote; a wrong key or an edited record is an error."""
    cipher, nonce = _cipher(key, source)
    try:
        plain = cipher.decrypt(nonce, base64.b64decode(text), source.encode())
    except (InvalidTag, ValueError):
        raise MvcError(
            "the lock record's sealed norm weights do not open with this key",
            hint="the record was edited or belongs to another key; nothing was committed",
        ) from None
    return {name: base64.b64decode(data) for name, data in json.loads(plain).items()}
