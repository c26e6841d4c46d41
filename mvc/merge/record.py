"""The merge record: the machine-readable recipe every merge commit carries.

It lives at `.mvc/merge.json` in the merge commit's tree, so it travels with the commit
through push and clone, and lists the TALL mask objects it needs under `store_objects`
(the repository's convention for records that keep store objects alive). The schema is
versioned; readers refuse versions they do not know. See docs/merge-record.md. Its fields
are written by :mod:`mvc.merge.pipeline` (the recipe part by :class:`mvc.merge.recipe.Recipe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mvc.repo.records import RecordType

MERGE_RECORD = RecordType(
    "merge-record",
    1,
    ".mvc/merge.json",
    "merge record",
    required=("base", "parents", "strategy", "params", "files"),
)
RECORD_PATH = MERGE_RECORD.path


def commit_parents(record: Mapping[str, Any]) -> list[str]:
    """The parents of the commit a record describes: the merged commits, except for a
    revert or cherry-pick, whose commit has HEAD alone as parent (see mvc.merge.replay)."""
    return list(record.get("commit_parents", record["parents"]))
