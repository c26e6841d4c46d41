"""Turning what users type (HEAD~2, main, origin/math, a1b2c3, v1^2) into commit ids."""

from __future__ import annotations

import re

from dulwich.objects import Commit
from dulwich.repo import Repo as GitRepo

from mvc.errors import NotFoundError

_SUFFIX = re.compile(r"(~\d*|\^\d*)$")
_HEX = re.compile(r"^[0-9a-f]{4,40}$")


def resolve_commit(git: GitRepo, rev: str) -> bytes:
    """The hex sha (bytes) of the commit `rev` names; NotFoundError otherwise."""
    suffixes: list[str] = []
    base = rev
    while True:
        match = _SUFFIX.search(base)
        if not match or match.start() == 0:
            break
        suffixes.append(match.group(1))
        base = base[: match.start()]
    sha = _resolve_base(git, base, rev)
    for suffix in reversed(suffixes):
        count = int(suffix[1:]) if len(suffix) > 1 else 1
        if suffix[0] == "~":
            for _ in range(count):
                sha = _parent(git, sha, 1, rev)
        elif count:
            sha = _parent(git, sha, count, rev)
    return sha


def _parent(git: GitRepo, sha: bytes, number: int, rev: str) -> bytes:
    parents = git[sha].parents
    if len(parents) < number:
        raise NotFoundError(f"revision '{rev}' goes past the start of history")
    return parents[number - 1]


def _resolve_base(git: GitRepo, name: str, rev: str) -> bytes:
    refs = git.refs
    candidates = [
        name,
        f"refs/{name}",
        f"refs/tags/{name}",
        f"refs/heads/{name}",
        f"refs/remotes/{name}",
    ]
    for candidate in candidates:
        key = candidate.encode()
        try:
            if key in refs:
                return _peel(git, refs[key], rev)
        except KeyError:
            continue
    lowered = name.lower()
    if _HEX.match(lowered):
        if len(lowered) == 40 and lowered.encode() in git.object_store:
            return _peel(git, lowered.encode(), rev)
        matches = [sha for sha in _iter_commit_prefix(git, lowered)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise NotFoundError(f"short id '{name}' is ambiguous", hint="use more characters")
    if name == "HEAD":
        raise NotFoundError("HEAD does not point to a commit yet", hint="commit something first")
    raise NotFoundError(f"unknown revision '{rev}'", hint="see `mvc branch` and `mvc log`")


def _iter_commit_prefix(git: GitRepo, prefix: str):
    for sha in git.object_store:
        if sha.decode().startswith(prefix):
            obj = git.object_store[sha]
            if isinstance(obj, Commit):
                yield sha


def _peel(git: GitRepo, sha: bytes, rev: str) -> bytes:
    obj = git[sha]
    while not isinstance(obj, Commit):
        if hasattr(obj, "object"):
            obj = git[obj.object[1]]
        else:
            raise NotFoundError(f"'{rev}' does not name a commit")
    return obj.id
