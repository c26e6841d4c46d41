"""Which store objects a git blob keeps alive.

Two kinds of blob reference tensor objects: manifests (every chunk id) and the JSON
records that other layers keep under `.mvc/` in a commit's tree (merge records with their
TALL masks, lock records). Such a record lists the objects it needs under the top-level key
`"store_objects"`, so gc, fsck and remotes never need to understand its schema.
"""

from __future__ import annotations

from collections.abc import Iterator

from mvc.formats.jsonutil import strict_loads
from mvc.repo.manifest import Manifest
from mvc.repo.worktree import is_model_path

RECORD_PREFIX = ".mvc/"
# Written by mvc.lock; read by merge (to refuse) and lineage (to show): kept here, below both.
LOCK_RECORD_PATH = ".mvc/lock.json"
RECORD_OBJECTS_KEY = "store_objects"


def referenced_objects(path: str, blob: bytes) -> Iterator[str]:
    """The store object ids the blob at `path` refers to."""
    if is_model_path(path):
        yield from Manifest.from_bytes(blob, path).object_ids()
    elif path.startswith(RECORD_PREFIX) and path.endswith(".json"):
        doc = strict_loads(blob, f"{path}: record")  # it may come from an untrusted remote
        ids = doc.get(RECORD_OBJECTS_KEY, []) if isinstance(doc, dict) else []
        yield from (oid for oid in ids if isinstance(oid, str)) if isinstance(ids, list) else ()
