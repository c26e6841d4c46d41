"""Annotated tags (`mvc tag`): a release name for a commit, as git keeps it.

A tag is a dulwich `Tag` object (tagger, time, message) under `refs/tags/<name>`, so plain
git reads it (`git tag -n`, `git describe`) and remotes carry it like any git object.
Tags never move: creating one that exists is refused, as `git tag` does without `-f`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dulwich.objects import Commit, Tag

from mvc.errors import MvcError, NotFoundError
from mvc.repo.commits import identity

if TYPE_CHECKING:
    from mvc.repo.repository import Repo

TAG_PREFIX = b"refs/tags/"


@dataclass(frozen=True)
class TagInfo:
    name: str
    commit: str
    message: str
    tagger: str | None  # None for a lightweight tag made by plain git

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_tag_name(name: str) -> None:
    """The subset of git's ref-name rules that keeps a name usable as a path and a rev."""
    bad = (
        not name
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "//" in name
        or "@{" in name
        or any(c in name for c in " ~^:?*[\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    )
    if bad:
        raise MvcError(f"'{name}' is not a valid tag name")


def create_tag(repo: Repo, name: str, rev: str = "HEAD", message: str | None = None) -> TagInfo:
    """An annotated tag `name` on the commit `rev` names; refused if `name` exists."""
    check_tag_name(name)
    ref = TAG_PREFIX + name.encode()
    with repo.locked():
        if ref in repo.git.refs:
            raise MvcError(
                f"tag '{name}' already exists", hint=f"delete it first with `mvc tag -d {name}`"
            )
        sha = repo.resolve(rev)
        tag = Tag()
        tag.name = name.encode()
        tag.object = (Commit, sha.encode())
        tag.tagger = identity(repo)
        now = int(os.environ.get("MVC_COMMIT_TIME", time.time()))
        tag.tag_time = now
        tag.tag_timezone = -time.timezone if not time.localtime(now).tm_isdst else -time.altzone
        tag.message = (message or name).rstrip("\n").encode() + b"\n"
        repo.git.object_store.add_object(tag)
        if not repo.git.refs.add_if_new(ref, tag.id):
            raise MvcError(f"tag '{name}' already exists")
    return TagInfo(name, sha, tag.message.decode().rstrip("\n"), tag.tagger.decode())


def delete_tag(repo: Repo, name: str) -> str:
    """Remove tag `name`; returns the commit it named."""
    ref = TAG_PREFIX + name.encode()
    with repo.locked():
        if ref not in repo.git.refs:
            raise NotFoundError(f"tag '{name}' not found", hint="see `mvc tag`")
        info = _info(repo, name, repo.git.refs[ref])
        repo.git.refs.remove_if_equals(ref, repo.git.refs[ref])
    return info.commit


def list_tags(repo: Repo) -> list[TagInfo]:
    """Every tag, by name."""
    return [
        _info(repo, ref.decode(), repo.git.refs[TAG_PREFIX + ref])
        for ref in sorted(repo.git.refs.keys(base=TAG_PREFIX))
    ]


def _info(repo: Repo, name: str, sha: bytes) -> TagInfo:
    obj = repo.git[sha]
    if isinstance(obj, Tag):
        target = repo.resolve(sha.decode())
        return TagInfo(name, target, obj.message.decode().rstrip("\n"), obj.tagger.decode())
    return TagInfo(name, repo.resolve(sha.decode()), "", None)
