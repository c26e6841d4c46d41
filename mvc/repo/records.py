"""The JSON records commits carry under `.mvc/`: one type for all of them.

Three layers keep a record in a commit's tree: merge (`.mvc/merge.json`), lineage
(`.mvc/provenance.json`, written by unmerge and extract) and lock (`.mvc/lock.json`). Each
is a :class:`RecordType`: its kind (the value of the ``"mvc"`` key), its version, its path,
and one deterministic encoding, so the same record always makes the same tree. Readers
refuse a version they do not know, and a malformed record is an error, never a guess.

The lock record's type lives here, below merge and lineage, because both ask
:func:`is_locked` (merge refuses locked commits, lineage shows them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from dulwich.object_store import tree_lookup_path

from mvc.errors import FormatError
from mvc.formats.jsonutil import strict_loads
from mvc.repo.references import LOCK_RECORD_PATH, RECORD_PREFIX

if TYPE_CHECKING:
    from mvc.repo import Repo


@dataclass(frozen=True)
class RecordType:
    """One kind of record: where it lives, how it is versioned and how it is written.

    ``version_key`` names the version field (the merge and provenance records say
    ``schema_version``, the lock record ``version``); ``version`` is the one written,
    ``older`` lists earlier versions this mvc still reads; ``required`` keys must be present,
    and ``booleans`` keys must be true or false, or the record is refused as malformed.
    """

    kind: str
    version: int
    path: str
    title: str
    version_key: str = "schema_version"
    indent: int = 1
    required: tuple[str, ...] = ()
    booleans: tuple[str, ...] = ()
    older: tuple[int, ...] = ()

    def header(self) -> dict[str, Any]:
        """The fields that make a dict a record of this type: kind and version."""
        return {"mvc": self.kind, self.version_key: self.version}

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Deterministic JSON (sorted keys), so identical records make identical trees."""
        return (json.dumps(dict(record), sort_keys=True, indent=self.indent) + "\n").encode()

    def decode(self, data: bytes, where: str | None = None) -> dict[str, Any]:
        """Parse and validate a record; an unknown version or a malformed one is an error."""
        where = where or self.path
        doc = strict_loads(data, where)
        if not isinstance(doc, dict) or doc.get("mvc") != self.kind:
            raise FormatError(f"{where} is not an mvc {self.title}")
        if doc.get(self.version_key) not in (self.version, *self.older):
            label = self.version_key.replace("_", " ")
            raise FormatError(
                f"{where} has {label} {doc.get(self.version_key)!r}; this mvc reads "
                f"version {self.version}",
                hint="upgrade mvc",
            )
        for key in self.required:
            if key not in doc:
                raise FormatError(f"{where} lacks '{key}'")
        for key in self.booleans:
            if not isinstance(doc[key], bool):
                raise FormatError(f"{where}: '{key}' must be true or false")
        return doc

    def read(self, repo: Repo, sha: str) -> dict[str, Any] | None:
        """The record in commit ``sha``'s tree, decoded; None when it has none."""
        data = tree_blob(repo, sha, self.path)
        return None if data is None else self.decode(data)


V = TypeVar("V")


def without_records(files: Mapping[str, V]) -> dict[str, V]:
    """A tree's files less its records (``.mvc/``): what a commit built from them, or a
    comparison of them, must not inherit, since a record describes only its own commit."""
    return {path: data for path, data in files.items() if not path.startswith(RECORD_PREFIX)}


def tree_blob(repo: Repo, sha: str, path: str) -> bytes | None:
    """The blob at ``path`` in commit ``sha``'s tree, or None (one path lookup, no tree walk)."""
    commit = repo.git[sha.encode()]
    try:
        _, blob_id = tree_lookup_path(repo.git.object_store.__getitem__, commit.tree, path.encode())
    except KeyError:
        return None
    return repo.read_blob(blob_id)


LOCK_RECORD = RecordType(
    "lock",
    2,
    LOCK_RECORD_PATH,
    "lock record",
    older=(1,),  # version 2 adds levels; version 1 records are attention-only locks
    version_key="version",
    indent=2,
    required=("locked",),
    booleans=("locked",),
)


def is_locked(repo: Repo, rev: str) -> bool:
    """True when ``rev`` carries a lock record that says it is locked (what `mvc merge`
    refuses); a malformed lock record is a FormatError, not a guess either way."""
    record = LOCK_RECORD.read(repo, repo.resolve(rev))
    return record is not None and record["locked"]
