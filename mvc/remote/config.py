"""Named remotes and branch upstreams, kept in `.git/config` as git keeps them.

`[remote "origin"]` holds `url` (and `fetch`, so plain git sees the same remote) plus
`mvcendpoint` when the S3 endpoint was given explicitly; `[branch "main"]` holds `remote`
and `merge`, which `push`, `pull` and `clone` use as defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mvc.errors import MvcError, NotFoundError
from mvc.remote.url import parse_url
from mvc.repo import Repo

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


@dataclass(frozen=True)
class RemoteConfig:
    name: str
    url: str
    endpoint: str | None = None


def _section(name: str) -> tuple[bytes, bytes]:
    return (b"remote", name.encode())


def list_remotes(repo: Repo) -> list[RemoteConfig]:
    config = repo.git.get_config()
    result = []
    for section in config.sections():
        if len(section) == 2 and section[0] == b"remote":
            result.append(get_remote(repo, section[1].decode()))
    return sorted(result, key=lambda r: r.name)


def get_remote(repo: Repo, name: str) -> RemoteConfig:
    config = repo.git.get_config()
    try:
        url = config.get(_section(name), b"url").decode()
    except KeyError:
        raise NotFoundError(
            f"no remote named '{name}'", hint=f"add it with `mvc remote add {name} URL`"
        ) from None
    try:
        endpoint: str | None = config.get(_section(name), b"mvcendpoint").decode()
    except KeyError:
        endpoint = None
    return RemoteConfig(name, url, endpoint)


def add_remote(repo: Repo, name: str, url: str, endpoint: str | None = None) -> RemoteConfig:
    """Record a remote; the URL is checked for syntax only (nothing is contacted)."""
    if not _NAME.match(name) or name.endswith(".lock") or ".." in name:
        raise MvcError(f"'{name}' is not a valid remote name")
    parse_url(url)
    with repo.locked():
        config = repo.git.get_config()
        if _section(name) in list(config.sections()):
            raise MvcError(f"remote '{name}' already exists")
        config.set(_section(name), b"url", url.encode())
        config.set(_section(name), b"fetch", f"+refs/heads/*:refs/remotes/{name}/*".encode())
        if endpoint:
            config.set(_section(name), b"mvcendpoint", endpoint.encode())
        config.write_to_path()
    return RemoteConfig(name, url, endpoint)


def remove_remote(repo: Repo, name: str) -> None:
    """Forget a remote, its remote-tracking refs and the upstreams that named it."""
    get_remote(repo, name)
    with repo.locked():
        config = repo.git.get_config()
        del config[_section(name)]
        for section in list(config.sections()):
            if len(section) == 2 and section[0] == b"branch":
                try:
                    if config.get(section, b"remote") == name.encode():
                        del config[section]
                except KeyError:
                    continue
        config.write_to_path()
        prefix = f"refs/remotes/{name}/".encode()
        for ref in list(repo.git.refs.keys(base=prefix)):
            del repo.git.refs[prefix + ref]


def set_upstream(repo: Repo, branch: str, remote: str) -> None:
    with repo.locked():
        config = repo.git.get_config()
        section = (b"branch", branch.encode())
        config.set(section, b"remote", remote.encode())
        config.set(section, b"merge", f"refs/heads/{branch}".encode())
        config.write_to_path()


def upstream(repo: Repo, branch: str) -> tuple[str, str] | None:
    """(remote name, remote branch) that `branch` tracks, if any."""
    config = repo.git.get_config()
    section = (b"branch", branch.encode())
    try:
        remote = config.get(section, b"remote").decode()
        merge = config.get(section, b"merge").decode()
    except KeyError:
        return None
    return remote, merge.removeprefix("refs/heads/")
