"""push, fetch and clone (pull: `mvc.remote.pull`): move what the other side lacks, then move refs by CAS.

Order is what makes interruptions harmless: objects travel first (tensor objects, git
blobs and trees together, then commits), the ref moves last with a compare-and-swap against the
value we based the push on. A push killed midway leaves only unreferenced objects on the
remote, which the retry skips (they are listed there); a fetch or clone killed midway
keeps the verified objects it received and moves no ref. Two concurrent pushes to one
branch both upload, but only one CAS succeeds; the other is told to fetch and merge.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dulwich.objects import ShaFile

from mvc.errors import MvcError, NotFoundError
from mvc.progress import BarProgress, Progress, Tally
from mvc.remote.config import add_remote, get_remote, set_upstream, upstream
from mvc.remote.direct_checkout import CheckoutWriter
from mvc.remote.layout import (
    BARE_CONFIG,
    CONFIG_KEY,
    HEAD,
    branch_ref,
    head_value,
    parse_head,
)
from mvc.remote.lazy import checked_out_branches, missing_live_objects
from mvc.remote.promisor import attach as attach_promisor
from mvc.remote.receive import receive_git, receive_tensors, tensor_ids_of, write_graph
from mvc.remote.refs import ref_sha, remote_branches
from mvc.remote.send import send_objects
from mvc.remote.tagsync import REMOTE_TAG_PREFIX, push_tags, remote_tags, store_fetched_tags
from mvc.remote.transport import RefConflict, Transport
from mvc.remote.url import open_transport, parse_url
from mvc.repo import Repo
from mvc.repo.checkout import Target, move_worktree
from mvc.repo.promised import promisor_remote, set_promisor
from mvc.repo.trees import tree_files

DEFAULT_WORKERS = 8


def _bar(quiet: bool) -> Progress:
    """A transfer's bar on stderr: drawn only on a terminal, and never with -q."""
    return BarProgress(enabled=False if quiet else None)


@dataclass
class TransferReport:
    """What one push or fetch moved: objects, bytes, and the refs it changed (old, new)."""

    remote: str
    git_objects: int = 0
    tensor_objects: int = 0
    bytes: int = 0
    skipped: int = 0
    refs: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    rejected_tags: list[str] = field(default_factory=list)  # another tag of that name is there

    def to_json(self) -> dict[str, Any]:
        return {
            "remote": self.remote,
            "git_objects": self.git_objects,
            "tensor_objects": self.tensor_objects,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "refs": {ref: {"old": old, "new": new} for ref, (old, new) in self.refs.items()},
            "rejected_tags": self.rejected_tags,
        }


@dataclass(frozen=True)
class Remote:
    """A remote resolved from a configured name or given directly as a URL."""

    name: str | None
    url: str
    endpoint: str | None = None

    def transport(self) -> Transport:
        return open_transport(self.url, self.endpoint)


def resolve_remote(repo: Repo, remote: str, endpoint: str | None = None) -> Remote:
    """A configured remote by name, else `remote` taken as a URL or path."""
    try:
        config = get_remote(repo, remote)
        return Remote(config.name, config.url, endpoint or config.endpoint)
    except NotFoundError:
        if "/" in remote or "://" in remote or Path(remote).exists():
            parse_url(remote)
            return Remote(None, remote, endpoint)
        raise


# ---------------------------------------------------------------------------------- push
def push(
    repo: Repo,
    remote: str | None = None,
    branch: str | None = None,
    force: bool = False,
    *,
    endpoint: str | None = None,
    set_upstream_branch: bool = False,
    paranoid: bool = False,
    quiet: bool = False,
    workers: int = DEFAULT_WORKERS,
) -> TransferReport:
    """Send `branch` (default: the current one) and everything it needs, then move its ref.

    `remote` defaults to the branch's upstream, else origin, as for `pull`. Without
    `force` the remote branch must be an ancestor of ours; with it, the ref is still
    replaced only if nobody moved it since we looked (a lease, never a blind write).
    Tensor objects go as stored, each checked intact by its checksum (verified against its
    id when it was written); `paranoid` decodes and verifies each one again first.
    """
    branch = branch or repo.current_branch()
    if remote is None:
        tracked = upstream(repo, branch) if branch else None
        remote = tracked[0] if tracked else "origin"
    target = resolve_remote(repo, remote, endpoint)
    if branch is None:
        raise MvcError("HEAD is detached; name the branch to push")
    local_ref = f"refs/heads/{branch}".encode()
    if local_ref not in repo.git.refs:
        raise NotFoundError(f"no local branch named '{branch}'")
    local = repo.git.refs[local_ref].decode()
    transport = target.transport()
    report = TransferReport(target.url)
    ref = branch_ref(branch)
    value, token = transport.read_ref(ref)
    old = ref_sha(value, ref, transport.url)
    if old is not None and old != local and not force:
        if old.encode() not in repo.git.object_store or not repo.is_ancestor(old, local):
            raise RefConflict(
                ref,
                hint=f"run `mvc pull {target.name or target.url} {branch}`, then push again "
                "(or --force to overwrite the remote branch)",
            )
    with ThreadPoolExecutor(workers, thread_name_prefix="mvc-push") as pool:
        if old != local:
            send_objects(repo, transport, local, pool, report, _bar(quiet), paranoid)
            if not transport.exists(CONFIG_KEY):
                transport.put(CONFIG_KEY, BARE_CONFIG)
            transport.cas_ref(ref, f"{local}\n".encode(), token)
            report.refs[ref] = (old, local)
        if transport.read_ref(HEAD)[0] is None:
            try:
                transport.cas_ref(HEAD, head_value(branch), None)
            except RefConflict:
                pass  # another push set the default branch first; either is fine
        tags, report.rejected_tags = push_tags(repo, transport, local, pool)
        report.refs.update({f"{REMOTE_TAG_PREFIX}{n}": (None, sha) for n, sha in tags.items()})
    if target.name is not None:
        with repo.locked():
            repo.git.refs[f"refs/remotes/{target.name}/{branch}".encode()] = local.encode()
        if set_upstream_branch:
            set_upstream(repo, branch, target.name)
    return report


# ---------------------------------------------------------------------------------- fetch
def fetch(
    repo: Repo,
    remote: str = "origin",
    *,
    branches: Sequence[str] | None = None,
    all_objects: bool = False,
    depth: int | None = None,
    endpoint: str | None = None,
    quiet: bool = False,
    workers: int = DEFAULT_WORKERS,
) -> TransferReport:
    """Receive every remote branch into `refs/remotes/<remote>/<branch>`.

    Every object is verified before it is kept. From the repository's promisor remote (a
    lazy clone's) the history comes whole but tensor objects only for `branches` (default:
    the checked-out one) at their tips; the rest stays promised. `all_objects` fetches
    every tensor object any reachable commit needs. From any other remote everything
    comes, and the remote-tracking refs move only once everything they reach is stored.
    `depth` stops history that many commits below each tip (a shallow repository).
    """
    return _fetch(repo, remote, branches, all_objects, depth, endpoint, quiet, workers)[0]


def _fetch(
    repo: Repo,
    remote: str,
    branches: Sequence[str] | None,
    all_objects: bool,
    depth: int | None,
    endpoint: str | None,
    quiet: bool,
    workers: int,
    checkout_of: Callable[[dict[str, str]], str] | None = None,
) -> tuple[TransferReport, dict[str, Path]]:
    """`fetch`; with `checkout_of` (a clone's: remote branches -> the branch it checks
    out), also the model files of that branch's tip, written from the objects as they were
    verified: path -> finished file in the scratch folder (see `direct_checkout`)."""
    target = resolve_remote(repo, remote, endpoint)
    if target.name is None:
        raise MvcError(
            "fetch needs a named remote", hint="add it with `mvc remote add NAME URL` first"
        )
    if depth is not None and depth < 1:
        raise MvcError(f"--depth must be at least 1, not {depth}")
    transport = target.transport()
    report = TransferReport(target.url)
    lazy = not all_objects and promisor_remote(repo) == target.name
    # Everything that writes into .git happens under the repository lock, so a fetch killed
    # midway leaves a stale lock that the next command recognises and recovers from.
    with repo.locked(), ThreadPoolExecutor(workers, thread_name_prefix="mvc-fetch") as pool:
        heads = remote_branches(transport, pool)
        unknown = sorted(set(branches or ()) - set(heads))
        if unknown:
            raise NotFoundError(f"remote '{target.name}' has no branch '{unknown[0]}'")
        tags = remote_tags(transport, pool)
        shallow: set[str] = set()
        with Tally(_bar(quiet), "receiving history", 0) as history:
            wants = [*heads.values(), *tags.values()]
            held = receive_git(repo, transport, wants, pool, history, depth, shallow)
        if lazy:
            used = (
                branches if branches is not None else checked_out_branches(repo, target.name, heads)
            )
            ids = tensor_ids_of(repo, held, [heads[b] for b in used])
        else:
            ids = tensor_ids_of(repo, held)
        wanted = [oid for oid in ids if not repo.store.has(oid)]
        writer = None
        if checkout_of is not None and heads:
            writer = CheckoutWriter(repo, heads[checkout_of(heads)], _getter(repo, held))
        try:
            with Tally(_bar(quiet), "receiving objects", len(wanted)) as objects:
                receive_tensors(repo, transport, wanted, pool, objects, writer and writer.stored)
            prewritten = writer.finish() if writer else {}
        except BaseException:
            if writer:
                writer.discard()
            raise
        write_graph(repo, held)
        if shallow:
            repo.git.update_shallow([s.encode() for s in shallow], None)
        _move_tracking_refs(repo, target.name, heads, tags, report)
        if all_objects:
            rest = missing_live_objects(repo)
            with Tally(_bar(quiet), "receiving objects", len(rest)) as completing:
                receive_tensors(repo, transport, rest, pool, completing)
            objects.objects += completing.objects
            objects.bytes += completing.bytes
    report.git_objects = history.objects
    report.tensor_objects = objects.objects
    report.bytes = history.bytes + objects.bytes
    return report, prewritten


def _getter(repo: Repo, held: dict[str, ShaFile]) -> Callable[[str], ShaFile | None]:
    """Received trees and commits first, else what the repository already has."""

    def get(sha: str) -> ShaFile | None:
        if sha in held:
            return held[sha]
        return repo.git[sha.encode()] if sha.encode() in repo.git.object_store else None

    return get


def _move_tracking_refs(
    repo: Repo,
    remote: str,
    heads: dict[str, str],
    tags: dict[str, str],
    report: TransferReport,
) -> None:
    for branch, sha in sorted(heads.items()):
        ref = f"refs/remotes/{remote}/{branch}".encode()
        old = repo.git.refs[ref].decode() if ref in repo.git.refs else None
        if old != sha:
            repo.git.refs[ref] = sha.encode()
            report.refs[ref.decode()] = (old, sha)
    for name, sha in store_fetched_tags(repo, tags).items():
        report.refs[f"{REMOTE_TAG_PREFIX}{name}"] = (None, sha)


# ---------------------------------------------------------------------------------- clone
@dataclass
class CloneResult:
    repo: Repo
    branch: str | None
    report: TransferReport
    resumed: bool


def default_clone_dir(url: str) -> str:
    parsed = parse_url(url)
    tail = (parsed.prefix or parsed.bucket) if parsed.scheme == "s3" else parsed.path
    name = tail.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    if not name:
        raise MvcError(f"cannot guess a folder name from {url}", hint="name the directory")
    return name


def clone(
    url: str,
    directory: str | None = None,
    *,
    endpoint: str | None = None,
    full: bool = False,
    depth: int | None = None,
    quiet: bool = False,
    workers: int = DEFAULT_WORKERS,
) -> CloneResult:
    """A new repository with `origin` = `url`, the default branch checked out.

    By default the clone is lazy: all history, but only the tensor objects the checked-out
    commit needs; `origin` is its promisor and the rest is fetched when a command needs it
    (the returned repository has its promisor attached). `full` fetches everything;
    `depth` keeps only that many commits of history. Running it again on the folder of
    an interrupted clone of the same URL resumes it.
    """
    folder = Path(directory or default_clone_dir(url))
    resumed = _resumable(folder, url)
    if not resumed and folder.exists() and any(folder.iterdir()):
        raise MvcError(f"destination path '{folder}' already exists and is not an empty directory")
    if depth is not None and depth < 1:
        raise MvcError(f"--depth must be at least 1, not {depth}")
    head = parse_head(open_transport(url, endpoint).read_ref(HEAD)[0])
    created = not folder.exists()
    if resumed:
        repo = Repo.open(folder)
    else:
        repo = Repo.init(folder)
        add_remote(repo, "origin", url, endpoint)
        (folder / ".git" / _CLONING_MARK).write_text(url + "\n")
        if not full:
            set_promisor(repo, "origin")
        if head is not None:  # what the lazy fetch brings tensor objects for
            repo.git.refs.set_symbolic_ref(b"HEAD", f"refs/heads/{head}".encode())
    report, prewritten = _fetch(
        repo,
        "origin",
        None,
        False,
        depth,
        endpoint,
        quiet,
        workers,
        checkout_of=lambda heads: _default_branch(head, heads),
    )
    tracking = {
        ref.decode(): repo.git.refs[b"refs/remotes/origin/" + ref].decode()
        for ref in repo.git.refs.keys(base=b"refs/remotes/origin/")
    }
    if not tracking:
        repo.close()
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise NotFoundError(
            f"remote {url} has no branches to clone", hint="check the URL, or push to it first"
        )
    branch = _default_branch(head, tracking)
    attach_promisor(repo, quiet=quiet)
    # Under the lock, so a kill while HEAD is written is recovered by the re-run. A fresh
    # work tree: every file is written (force: nothing there can be lost), the model files
    # by renaming those the fetch wrote as their objects arrived.
    with repo.locked():
        repo.create_branch(branch, f"refs/remotes/origin/{branch}", force=True)
        repo.git.refs.set_symbolic_ref(b"HEAD", f"refs/heads/{branch}".encode())
        files = tree_files(repo, branch)
        move_worktree(repo, repo.head(), Target(files, prewritten), force=True)
    set_upstream(repo, branch, "origin")
    (folder / ".git" / _CLONING_MARK).unlink(missing_ok=True)
    return CloneResult(repo, branch, report, resumed)


def _default_branch(head: str | None, branches: Iterable[str]) -> str:
    """The branch a clone checks out: the remote's HEAD, else main, else the first."""
    names = sorted(branches)
    return head if head in names else ("main" if "main" in names else names[0])


# Present from `init` until the checkout is done: its presence makes a re-run resume.
_CLONING_MARK = "MVC_CLONE_IN_PROGRESS"


def _resumable(folder: Path, url: str) -> bool:
    """An interrupted clone of `url`: an mvc repository with that origin, not finished."""
    if not (folder / ".git" / "mvc").is_dir():
        return False
    repo = Repo.open(folder)
    try:
        unfinished = (folder / ".git" / _CLONING_MARK).exists() or not list(
            repo.git.refs.keys(base=b"refs/heads/")
        )
        return get_remote(repo, "origin").url == url and unfinished
    except NotFoundError:
        return False
    finally:
        repo.close()
