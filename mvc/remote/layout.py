"""Where things live on a remote (see docs/remotes.md).

A remote is a bare git repository with loose objects, plus the tensor store under `mvc/`:
the same keys on a path (files) and on S3 (under the URL's prefix), so plain git can read
the history of a path remote and a remote can be copied between backends with any tool.
"""

from __future__ import annotations

HEAD = "HEAD"
BRANCH_PREFIX = "refs/heads/"
GIT_OBJECT_PREFIX = "objects/"
TENSOR_OBJECT_PREFIX = "mvc/objects/"
CONFIG_KEY = "config"
BARE_CONFIG = b"[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"


def branch_ref(branch: str) -> str:
    return f"{BRANCH_PREFIX}{branch}"


def git_object_key(sha: str) -> str:
    return f"{GIT_OBJECT_PREFIX}{sha[:2]}/{sha[2:]}"


def tensor_object_key(oid: str) -> str:
    return f"{TENSOR_OBJECT_PREFIX}{oid[:2]}/{oid[2:]}"


def ids_from_keys(keys, prefix: str, length: int) -> set[str]:
    """Object ids named by listed keys `<prefix><2 hex>/<rest>` (anything else is ignored)."""
    ids = set()
    for key in keys:
        if key.startswith(prefix):
            name = key[len(prefix) :].replace("/", "", 1)
            if len(name) == length and all(c in "0123456789abcdef" for c in name):
                ids.add(name)
    return ids


def head_value(branch: str) -> bytes:
    return f"ref: {BRANCH_PREFIX}{branch}\n".encode()


def parse_head(value: bytes | None) -> str | None:
    """The default branch a remote HEAD names, if it names one."""
    if value is None:
        return None
    text = value.decode(errors="replace").strip()
    if text.startswith(f"ref: {BRANCH_PREFIX}"):
        return text[len(f"ref: {BRANCH_PREFIX}") :]
    return None
