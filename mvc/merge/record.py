"""The merge record: the machine-readable recipe every merge commit carries.

It lives at `.mvc/merge.json` in the merge commit's tree, so it travels with the commit
through push and clone, and lists the TALL mask objects it needs under `store_objects`
(the repository's convention for records that keep store objects alive). The schema is
versioned; readers refuse versions they do not know. See docs/merge-record.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mvc.errors import FormatError
from mvc.formats.jsonutil import strict_loads

RECORD_PATH = ".mvc/merge.json"
RECORD_KIND = "merge-record"
SCHEMA_VERSION = 1


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Deterministic JSON, so the same merge always makes the same tree."""
    return (json.dumps(dict(record), sort_keys=True, indent=1) + "\n").encode()


def decode_record(data: bytes, where: str = RECORD_PATH) -> dict[str, Any]:
    """Parse a merge record, refusing anything that is not a known schema version."""
    doc = strict_loads(data, where)
    if not isinstance(doc, dict) or doc.get("mvc") != RECORD_KIND:
        raise FormatError(f"{where} is not an mvc merge record")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise FormatError(
            f"{where} has schema version {doc.get('schema_version')!r}; this mvc reads "
            f"version {SCHEMA_VERSION}",
            hint="upgrade mvc",
        )
    for key in ("base", "parents", "strategy", "params", "files"):
        if key not in doc:
            raise FormatError(f"{where} lacks '{key}'")
    return doc


def commit_parents(record: Mapping[str, Any]) -> list[str]:
    """The parents of the commit a record describes: the merged commits, except for a
    revert or cherry-pick, whose commit has HEAD alone as parent (see mvc.merge.replay)."""
    return list(record.get("commit_parents", record["parents"]))

