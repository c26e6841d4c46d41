"""Strict JSON for files mvc validates (headers, indexes, manifests).

Python's ``json`` silently keeps the last of duplicate keys, accepts NaN and guesses UTF-16
from bytes; each would let two readers see different contents in one file, so all three
are refused here, and every failure is a one-line ``FormatError``.
"""

from __future__ import annotations

import json
from typing import Any

from mvc.errors import FormatError


def short(value: Any, limit: int = 80) -> str:
    """repr() cut to one readable line: hostile files can hold megabyte-long strings."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def strict_loads(raw: bytes, what: str) -> Any:
    """Parse UTF-8 JSON text; ``what`` names the thing in error messages ("header")."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what} is not UTF-8 (bad byte at {e.start})") from None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise FormatError(f"{what} has duplicate key {short(key)}")
            obj[key] = value
        return obj

    def no_constants(name: str) -> Any:
        raise FormatError(f"{what} is not JSON: {name} is not a JSON value")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:
        # ValueError covers JSONDecodeError and ints past Python's digit limit.
        raise FormatError(f"{what} is not JSON: {str(e).splitlines()[0]}") from None
