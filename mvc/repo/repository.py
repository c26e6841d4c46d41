"""`mvc.Repo`: a git repository whose model files live in the tensor store.

The class is the Python API and the engine behind every repository command. It keeps git's
model: a work tree, an index (with manifests as the blobs of model files), commits and
refs in `.git` written with dulwich, and the tensor objects in `.git/mvc/objects`. Every
mutation holds the repository lock; refs move by compare-and-swap; files are written
atomically, so a crash at any point leaves every committed model intact.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dulwich.object_store import iter_tree_contents
from dulwich.objects import Blob, Commit
from dulwich.repo import Repo as GitRepo

from mvc.errors import ConflictError, FormatError, MvcError, NotFoundError
from mvc.files import atomic_write, fsync_dir
from mvc.repo.ingest import ingest_file, iter_entry_bytes, manifest_ids_only, materialize
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.mutex import repo_lock
from mvc.repo.recovery import clear_stale_git_locks, clear_stale_worktree_temps
from mvc.repo.revisions import resolve_commit
from mvc.repo.staging import Staging, store_blob
from mvc.repo.worktree import WorkTree, checked_path, is_model_path, relative_to_root
from mvc.store import ObjectStore

DEFAULT_BRANCH = "main"
MVC_DIR = "mvc"
SCRATCH_DIR = "scratch"  # inside MVC_DIR: files built under the lock (see scratch_dir)


@dataclass(frozen=True)
class CommitInfo:
    """A commit as `log` and `show` present it."""

    id: str
    parents: tuple[str, ...]
    author: str
    date: int
    timezone: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parents": list(self.parents),
            "author": self.author,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.date)) + "Z",
            "message": self.message,
        }


@dataclass(frozen=True)
class BranchInfo:
    name: str
    commit: str
    current: bool


@dataclass
class Status:
    """Staged changes (index vs HEAD), unstaged changes (work tree vs index), untracked files."""

    branch: str | None
    head: str | None
    staged: dict[str, str] = field(default_factory=dict)
    unstaged: dict[str, str] = field(default_factory=dict)
    untracked: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.staged and not self.unstaged

    def to_json(self) -> dict[str, Any]:
        return {
            "branch": self.branch,
            "head": self.head,
            "staged": self.staged,
            "unstaged": self.unstaged,
            "untracked": self.untracked,
        }


TreeFiles = dict[str, tuple[bytes, int]]


class Repo:
    """An mvc repository (work tree + `.git` + tensor store)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.git = GitRepo(str(self.root))
        self.mvc_dir = self.root / ".git" / MVC_DIR
        self.store = ObjectStore(self.mvc_dir)
        self.worktree = WorkTree(self.root, self.git)
        self._lock_depth = 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def init(cls, path: str | os.PathLike[str] = ".") -> Repo:
        """Create a repository at `path` whose first branch is `main`."""
        root = Path(path).resolve()
        root.mkdir(parents=True, exist_ok=True)
        if (root / ".git" / MVC_DIR).is_dir():
            raise MvcError(f"{root} is already an mvc repository")
        if (root / ".git").exists():
            git = GitRepo(str(root))
        else:
            git = GitRepo.init(str(root))
        git.refs.set_symbolic_ref(b"HEAD", f"refs/heads/{DEFAULT_BRANCH}".encode())
        config = git.get_config()
        config.set((b"mvc",), b"version", b"1")
        config.write_to_path()
        git.close()
        (root / ".git" / MVC_DIR / "objects").mkdir(parents=True, exist_ok=True)
        return cls(root)

    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".") -> Repo:
        """Open the repository containing `path` (searching upward, like git)."""
        start = Path(path).resolve()
        for candidate in (start, *start.parents):
            if (candidate / ".git" / MVC_DIR).is_dir():
                return cls(candidate)
        raise NotFoundError(
            f"not an mvc repository (or any parent up to /): {start}",
            hint="run `mvc init` first",
        )

    def close(self) -> None:
        self.git.close()

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository lock (re-entrant within this object)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        try:
            with repo_lock(self.mvc_dir / "lock") as recovered:
                self._lock_depth = 1
                if recovered:
                    clear_stale_git_locks(self.root / ".git")
                    clear_stale_worktree_temps(self.root, set(Staging(self.git).paths()))
                    shutil.rmtree(self.mvc_dir / SCRATCH_DIR, ignore_errors=True)
                    self._finish_pending_commit()
                try:
                    yield
                finally:
                    self._lock_depth = 0
        except OSError as err:
            storage_error = _storage_error(err)
            if storage_error is None:
                raise
            raise storage_error from err

    # ------------------------------------------------------------------ refs
    def current_branch(self) -> str | None:
        """The checked-out branch, or None when HEAD is detached."""
        chain, _ = self.git.refs.follow(b"HEAD")
        target = chain[-1] if len(chain) > 1 else None
        if target and target.startswith(b"refs/heads/"):
            return target[len(b"refs/heads/") :].decode()
        return None

    def head(self) -> str | None:
        """The commit HEAD points at, or None in an empty repository."""
        try:
            return self.git.refs[b"HEAD"].decode()
        except KeyError:
            return None

    def resolve(self, rev: str) -> str:
        """The full commit id that `rev` names (branch, tag, short id, HEAD~2, ...)."""
        return resolve_commit(self.git, rev).decode()

    def commit_info(self, rev: str) -> CommitInfo:
        return _commit_info(self.git[self.resolve(rev).encode()])

    def branches(self) -> list[BranchInfo]:
        current = self.current_branch()
        result = []
        for ref in sorted(self.git.refs.keys(base=b"refs/heads/")):
            name = ref.decode()
            result.append(
                BranchInfo(name, self.git.refs[b"refs/heads/" + ref].decode(), name == current)
            )
        return result

    def create_branch(self, name: str, start: str = "HEAD", force: bool = False) -> str:
        _check_branch_name(name)
        sha = self.resolve(start).encode()
        ref = f"refs/heads/{name}".encode()
        with self.locked():
            if ref in self.git.refs and not force:
                raise MvcError(f"a branch named '{name}' already exists")
            if force:
                self.git.refs[ref] = sha
            elif not self.git.refs.add_if_new(ref, sha):
                raise MvcError(f"a branch named '{name}' already exists")
        return sha.decode()

    def delete_branch(self, name: str, force: bool = False) -> None:
        ref = f"refs/heads/{name}".encode()
        if ref not in self.git.refs:
            raise NotFoundError(f"branch '{name}' not found")
        if name == self.current_branch():
            raise MvcError(f"cannot delete the checked-out branch '{name}'")
        with self.locked():
            target = self.git.refs[ref]
            head = self.head()
            if not force and head and not self.is_ancestor(target.decode(), head):
                raise MvcError(
                    f"branch '{name}' is not merged into HEAD",
                    hint=f"use `mvc branch -D {name}` to delete it anyway",
                )
            self.git.refs.remove_if_equals(ref, target)

    def move_branch(self, expected_old: str | None, new: str, message: str = "") -> None:
        """Move the current branch (or detached HEAD) from `expected_old` to `new` (CAS)."""
        branch = self.current_branch()
        ref = f"refs/heads/{branch}".encode() if branch else b"HEAD"
        old = expected_old.encode() if expected_old else None
        if old is None:
            ok = self.git.refs.add_if_new(ref, new.encode(), message=message.encode() or None)
        else:
            ok = self.git.refs.set_if_equals(
                ref, old, new.encode(), message=message.encode() or None
            )
        if not ok:
            raise ConflictError(
                f"{'branch ' + branch if branch else 'HEAD'} moved while this command ran",
                hint="another process committed; run the command again",
            )

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        from dulwich.graph import can_fast_forward

        return bool(can_fast_forward(self.git, ancestor.encode(), descendant.encode()))

    def merge_base(self, revs: Iterable[str]) -> list[str]:
        """Best common ancestors of the given revisions (several for criss-cross histories)."""
        from dulwich.graph import find_merge_base, find_octopus_base

        shas = [self.resolve(rev).encode() for rev in revs]
        bases = (
            find_merge_base(self.git, shas) if len(shas) == 2 else find_octopus_base(self.git, shas)
        )
        return sorted(base.decode() for base in bases)

    # ------------------------------------------------------------------ trees and files
    def tree_files(self, rev: str | None) -> TreeFiles:
        """path -> (blob id, mode) for every file in a commit (empty for None)."""
        if rev is None:
            return {}
        commit = self.git[self.resolve(rev).encode()]
        return {
            entry.path.decode(): (entry.sha, entry.mode)
            for entry in iter_tree_contents(self.git.object_store, commit.tree)
        }

    def read_blob(self, blob_id: bytes) -> bytes:
        return self.git.object_store[blob_id].as_raw_string()

    def files(self, rev: str) -> dict[str, bytes]:
        """Every file of a commit as stored in git (manifests for model files)."""
        return {path: self.read_blob(blob) for path, (blob, _) in self.tree_files(rev).items()}

    def model_files(self, rev: str) -> dict[str, Manifest]:
        """The manifests of a commit's model files, by path."""
        return {
            path: Manifest.from_bytes(self.read_blob(blob), path)
            for path, (blob, _) in self.tree_files(rev).items()
            if is_model_path(path)
        }

    def manifest(self, rev: str, path: str) -> Manifest:
        files = self.tree_files(rev)
        if path not in files:
            raise NotFoundError(f"'{path}' is not in {rev}")
        if not is_model_path(path):
            raise MvcError(f"'{path}' is not a model file")
        return Manifest.from_bytes(self.read_blob(files[path][0]), path)

    def read_file(self, rev: str, path: str) -> bytes:
        """An ordinary file's bytes at `rev`."""
        files = self.tree_files(rev)
        if path not in files:
            raise NotFoundError(f"'{path}' is not in {rev}")
        return self.read_blob(files[path][0])

    def iter_chunks(self, entry: TensorEntry) -> Iterator[bytes]:
        return iter_entry_bytes(self.store, entry)

    def tensor_bytes(self, entry: TensorEntry) -> bytes:
        """A whole tensor's bytes (for callers that need one tensor at a time)."""
        return b"".join(self.iter_chunks(entry))

    # ------------------------------------------------------------------ staging
    def add(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """Stage files (and deletions of tracked files that are gone) under `paths`."""
        rels = [relative_to_root(self.root, p) for p in paths]
        with self.locked():
            staging = Staging(self.git)
            present, gone = self.worktree.expand(rels, staging.paths())
            changed = self._stage(staging, present)
            for rel in gone:
                staging.remove(rel)
            staging.write()
        return changed + gone

    def _stage(self, staging: Staging, rels: list[str]) -> list[str]:
        """Store the files whose stat changed and point the index at them."""
        todo = [rel for rel in rels if not staging.stat_matches(rel, self.root / rel)]
        self._validate_model_headers(todo)
        changed = []
        for rel in todo:
            file_path = self.root / checked_path(rel)
            blob_id = self._store_file(staging, rel, file_path)
            previous = staging.get(rel)
            if previous is None or previous.blob_id != blob_id:
                changed.append(rel)
            staging.set(rel, blob_id, file_path)
        return changed

    def _validate_model_headers(self, rels: list[str]) -> None:
        """Refuse the whole add before anything is written if any model file is malformed."""
        from mvc.formats.safetensors import read_header

        for rel in rels:
            if is_model_path(rel):
                try:
                    read_header(self.root / rel)
                except FormatError as err:
                    raise FormatError(f"{rel}: {err.message}", hint=err.hint) from None

    def _store_file(self, staging: Staging, rel: str, file_path: Path) -> bytes:
        if not is_model_path(rel):
            if file_path.is_symlink():
                return store_blob(self.git, os.readlink(file_path).encode())
            return store_blob(self.git, file_path.read_bytes())
        previous = self._previous_tensors(staging, rel)
        try:
            manifest = ingest_file(self.store, file_path, previous)
        except FormatError as err:
            raise FormatError(f"{rel}: {err.message}", hint=err.hint) from None
        return store_blob(self.git, manifest.to_bytes())

    def _previous_tensors(self, staging: Staging, rel: str) -> dict[str, TensorEntry]:
        """Delta bases for a model file: its staged version, else its folder's other shards."""
        staged = staging.get(rel)
        if staged is not None:
            try:
                return Manifest.from_bytes(self.read_blob(staged.blob_id), rel).by_name()
            except (FormatError, KeyError):
                return {}
        folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
        merged: dict[str, TensorEntry] = {}
        for path in staging.paths():
            same_folder = (path.rsplit("/", 1)[0] if "/" in path else "") == folder
            if same_folder and is_model_path(path):
                entry = staging.get(path)
                if entry is not None:
                    merged.update(
                        Manifest.from_bytes(self.read_blob(entry.blob_id), path).by_name()
                    )
        return merged

    def rm(self, paths: Iterable[str | os.PathLike[str]], cached: bool = False) -> list[str]:
        """Unstage tracked files and (unless `cached`) delete them from the work tree."""
        rels = [relative_to_root(self.root, p) for p in paths]
        with self.locked():
            staging = Staging(self.git)
            tracked = staging.paths()
            removed = []
            for rel in rels:
                prefix = f"{rel}/" if rel else ""
                matches = [t for t in tracked if t == rel or t.startswith(prefix)]
                if not matches:
                    raise NotFoundError(f"pathspec '{rel}' did not match any tracked files")
                removed.extend(matches)
            for rel in removed:
                staging.remove(rel)
                if not cached:
                    (self.root / rel).unlink(missing_ok=True)
            staging.write()
        return sorted(set(removed))

    def status(self) -> Status:
        head = self.head()
        result = Status(branch=self.current_branch(), head=head)
        head_files = self.tree_files(head)
        staging = Staging(self.git)
        staged_paths = staging.paths()
        for rel in staged_paths:
            entry = staging.get(rel)
            assert entry is not None
            if rel not in head_files:
                result.staged[rel] = "added"
            elif head_files[rel][0] != entry.blob_id:
                result.staged[rel] = "modified"
            state = self._worktree_state(staging, rel)
            if state:
                result.unstaged[rel] = state
        for rel in head_files:
            if staging.get(rel) is None:
                result.staged[rel] = "deleted"
        tracked = set(staged_paths)
        result.untracked = [rel for rel in self.worktree.files() if rel not in tracked]
        return result

    def _worktree_state(self, staging: Staging, rel: str) -> str | None:
        """'deleted', 'modified' or None (clean) for a tracked file, hashing only on stat change."""
        file_path = self.root / rel
        if not file_path.exists() and not file_path.is_symlink():
            return "deleted"
        if staging.stat_matches(rel, file_path):
            return None
        entry = staging.get(rel)
        assert entry is not None
        return None if self._content_blob_id(rel, file_path) == entry.blob_id else "modified"

    def _content_blob_id(self, rel: str, file_path: Path) -> bytes | None:
        """The blob id this file would get, computed without storing anything."""
        if is_model_path(rel):
            try:
                data = manifest_ids_only(file_path).to_bytes()
            except FormatError:
                return None
        elif file_path.is_symlink():
            data = os.readlink(file_path).encode()
        else:
            data = file_path.read_bytes()
        return Blob.from_string(data).id

    # ------------------------------------------------------------------ commits
    def commit(self, message: str, all: bool = False) -> str:
        """Commit the index (with `all`, first stage every change to a tracked file)."""
        if not message.strip():
            raise MvcError("empty commit message", hint="pass -m MESSAGE")
        with self.locked():
            staging = Staging(self.git)
            if all:
                tracked = staging.paths()
                present = [rel for rel in tracked if (self.root / rel).exists()]
                self._validate_model_headers(
                    [r for r in present if not staging.stat_matches(r, self.root / r)]
                )
                self._stage(staging, present)
                for rel in tracked:
                    if rel not in present:
                        staging.remove(rel)
            tree_id = staging.write_tree()
            head = self.head()
            merge_heads = self._merge_heads()
            if head is not None and not merge_heads:
                if self.git[head.encode()].tree == tree_id:
                    raise MvcError(
                        "nothing to commit, working tree clean" if not all else "nothing to commit",
                        hint="stage changes with `mvc add`",
                    )
            parents = ([head] if head else []) + merge_heads
            sha = self._write_commit(tree_id, parents, message)
            staging.write()
            self.move_branch(head, sha, f"commit: {message.splitlines()[0]}")
            self._clear_merge_state()
        return sha

    def commit_tree(
        self,
        files: Mapping[str, Manifest | bytes],
        parents: list[str],
        message: str,
        update_ref: bool = True,
        update_worktree: bool = True,
        prewritten: Mapping[str, Path] | None = None,
    ) -> str:
        """Commit a complete file set built in the library (merge, unmerge, lock results).

        Model files are given as manifests, anything else as bytes. With `update_ref` the
        current branch moves to the new commit (CAS against its parent); with
        `update_worktree` the work tree and index follow it. `prewritten` maps paths to
        files already holding their exact content (in `scratch_dir()`), which are moved
        into the work tree instead of being written again from the store.
        """
        from dulwich.index import commit_tree as write_tree

        for path in files:
            checked_path(path)
        with self.locked():  # every git write happens under the lock (see mvc.repo.recovery)
            blobs: list[tuple[bytes, bytes, int]] = []
            for path in sorted(files):
                content = files[path]
                data = content.to_bytes() if isinstance(content, Manifest) else content
                blobs.append((path.encode(), store_blob(self.git, data), 0o100644))
            tree_id = write_tree(self.git.object_store, blobs)
            sha = self._write_commit(tree_id, parents, message)
            if update_ref:
                old_head = self.head()
                if update_worktree:
                    # Journal the intent first: if we die while the work tree is half
                    # written, the next command rolls the commit forward (see locked()).
                    journal = f"{old_head or '-'} {sha}\n".encode()
                    atomic_write(self._pending_path, journal, mode=0o644)
                    self._apply_commit(old_head, sha, force=False, prewritten=prewritten)
                self.move_branch(old_head, sha, f"commit: {message.splitlines()[0]}")
                self._pending_path.unlink(missing_ok=True)
        return sha

    @property
    def _pending_path(self) -> Path:
        return self.root / ".git" / "MVC_PENDING_COMMIT"

    def _finish_pending_commit(self) -> None:
        """Complete a library commit whose process died between writing files and the ref."""
        try:
            old, new = self._pending_path.read_text().split()
        except (OSError, ValueError):
            self._pending_path.unlink(missing_ok=True)
            return
        old_head = None if old == "-" else old
        if self.head() == old_head and new.encode() in self.git.object_store:
            self._apply_files(self.tree_files(old_head), self.tree_files(new), force=True)
            self.move_branch(old_head, new, "commit: finished after an interruption")
            print(
                f"mvc: note: finished a commit interrupted by a crash ({new[:12]})", file=sys.stderr
            )
        self._pending_path.unlink(missing_ok=True)

    def _write_commit(self, tree_id: bytes, parents: list[str], message: str) -> str:
        commit = Commit()
        commit.tree = tree_id
        commit.parents = [p.encode() for p in parents]
        identity = self._identity()
        commit.author = commit.committer = identity
        now = int(os.environ.get("MVC_COMMIT_TIME", time.time()))
        commit.author_time = commit.commit_time = now
        offset = -time.timezone if not time.localtime(now).tm_isdst else -time.altzone
        commit.author_timezone = commit.commit_timezone = offset
        commit.encoding = b"UTF-8"
        commit.message = message.rstrip("\n").encode() + b"\n"
        self.git.object_store.add_object(commit)
        return commit.id.decode()

    def _identity(self) -> bytes:
        name = os.environ.get("MVC_AUTHOR_NAME")
        email = os.environ.get("MVC_AUTHOR_EMAIL")
        config = self.git.get_config_stack()
        if not name:
            try:
                name = config.get((b"user",), b"name").decode()
            except KeyError:
                name = os.environ.get("USER", "mvc")
        if not email:
            try:
                email = config.get((b"user",), b"email").decode()
            except KeyError:
                email = f"{name}@localhost"
        return f"{name} <{email}>".encode()

    def _merge_heads(self) -> list[str]:
        path = self.root / ".git" / "MERGE_HEAD"
        if not path.exists():
            return []
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def set_merge_state(self, heads: list[str], message: str) -> None:
        """Record an uncommitted merge (`merge --no-commit`): the next commit gets these parents."""
        heads_text = "".join(f"{h}\n" for h in heads)
        atomic_write(self.root / ".git" / "MERGE_HEAD", heads_text.encode(), mode=0o644)
        atomic_write(self.root / ".git" / "MERGE_MSG", message.encode(), mode=0o644)

    def _clear_merge_state(self) -> None:
        for name in ("MERGE_HEAD", "MERGE_MSG"):
            (self.root / ".git" / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ checkout
    def switch(
        self, name: str, create: bool = False, start: str | None = None, force: bool = False
    ) -> str:
        """Check out branch `name` (with `create`, make it first at `start` or HEAD)."""
        with self.locked():
            ref = f"refs/heads/{name}".encode()
            if create:
                self.create_branch(name, start or "HEAD")
            elif ref not in self.git.refs:
                tracking = self._tracking_candidate(name)
                if tracking is None:
                    raise NotFoundError(
                        f"no branch named '{name}'", hint=f"create it with `mvc switch -c {name}`"
                    )
                self.create_branch(name, tracking)
            target = self.git.refs[ref].decode()
            self._apply_commit(self.head(), target, force)
            self.git.refs.set_symbolic_ref(b"HEAD", ref)
        return target

    def _tracking_candidate(self, name: str) -> str | None:
        matches = [
            ref.decode()
            for ref in self.git.refs.keys(base=b"refs/remotes/")
            if ref.decode().split("/", 1)[-1] == name
        ]
        return f"refs/remotes/{matches[0]}" if len(matches) == 1 else None

    def checkout(
        self, rev: str | None = None, paths: Iterable[str] | None = None, force: bool = False
    ) -> str | None:
        """`checkout REV` detaches HEAD at REV; with paths, restore those files.

        Paths are restored from REV (and staged) or, without REV, from the index, as git does.
        """
        with self.locked():
            if paths is not None:
                self._restore_paths(rev, [relative_to_root(self.root, p) for p in paths])
                return None
            if rev is None:
                raise MvcError("nothing to check out", hint="give a revision or `-- PATH`")
            if f"refs/heads/{rev}".encode() in self.git.refs:
                return self.switch(rev, force=force)
            target = self.resolve(rev)
            self._apply_commit(self.head(), target, force)
            atomic_write(self.root / ".git" / "HEAD", f"{target}\n".encode(), mode=0o644)
            return target

    def _restore_paths(self, rev: str | None, rels: list[str]) -> None:
        staging = Staging(self.git)
        if rev is None:
            source = {p: (s.blob_id, s.mode) for p in staging.paths() if (s := staging.get(p))}
        else:
            source = self.tree_files(rev)
        chosen = {
            path: value
            for path, value in source.items()
            if any(path == rel or path.startswith(f"{rel}/") for rel in rels)
        }
        if not chosen:
            raise NotFoundError(f"pathspec '{' '.join(rels)}' did not match any tracked file")
        for path, (blob_id, mode) in chosen.items():
            self._write_worktree_file(path, blob_id, mode)
            staging.set(path, blob_id, self.root / path)
        staging.write()

    def update_worktree(self, rev: str, force: bool = False) -> None:
        """Make the work tree and index match `rev` (from the current HEAD's state)."""
        with self.locked():
            self._apply_commit(self.head(), self.resolve(rev), force)

    def _apply_commit(
        self,
        old: str | None,
        new: str,
        force: bool,
        prewritten: Mapping[str, Path] | None = None,
    ) -> None:
        """Turn the work tree and index from commit `old` into commit `new`."""
        self._apply_files(self.tree_files(old), self.tree_files(new), force, prewritten)

    def stage_tree(
        self, files: Mapping[str, Manifest | bytes], prewritten: Mapping[str, Path] | None = None
    ) -> None:
        """Write a library-built file set into the work tree and index, without committing."""
        for path in files:
            checked_path(path)
        with self.locked():  # every git write happens under the lock (see mvc.repo.recovery)
            new_files: TreeFiles = {}
            for path in sorted(files):
                content = files[path]
                data = content.to_bytes() if isinstance(content, Manifest) else content
                new_files[path] = (store_blob(self.git, data), 0o100644)
            self._apply_files(self.tree_files(self.head()), new_files, False, prewritten)

    def scratch_dir(self) -> Path:
        """A folder inside the repository for files built before they go in the work tree.

        On the work tree's filesystem (so moving a file from it is an atomic rename) but
        outside the work tree, so a file left half-built by a crash is never seen as a
        change; the next command that recovers the crashed process's lock clears it.
        """
        folder = self.mvc_dir / SCRATCH_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _apply_files(
        self,
        old_files: TreeFiles,
        new_files: TreeFiles,
        force: bool,
        prewritten: Mapping[str, Path] | None = None,
    ) -> None:
        staging = Staging(self.git)
        if not force:
            self._refuse_if_dirty(staging, old_files, new_files)
        for path, (blob_id, mode) in sorted(new_files.items()):
            current = staging.get(path)
            unchanged = (
                old_files.get(path) == (blob_id, mode)
                and current is not None
                and current.blob_id == blob_id
                and staging.stat_matches(path, self.root / path)
            )
            if not unchanged:
                ready = (prewritten or {}).get(path)
                if ready is None or not self._move_into_worktree(path, ready):
                    self._write_worktree_file(path, blob_id, mode)
                staging.set(path, blob_id, self.root / path)
        for path in set(staging.paths()) | set(old_files):
            if path not in new_files:
                gone = self.root / checked_path(path)
                if gone.is_symlink() or not gone.is_dir():  # a folder now stands there
                    gone.unlink(missing_ok=True)
                _prune_empty_dirs(self.root, path)
                staging.remove(path)
        staging.write()

    def _refuse_if_dirty(self, staging: Staging, old: TreeFiles, new: TreeFiles) -> None:
        status = self.status()
        dirty = sorted(
            p
            for p in set(status.staged) | set(status.unstaged)
            if not self._already_at_target(staging, p, old, new)
        )
        if dirty:
            shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
            raise ConflictError(
                f"you have uncommitted changes that would be overwritten: {shown}",
                hint="commit them, or pass --force to discard them",
            )
        clobbered = [
            p
            for p in status.untracked
            if p in new and p not in old and not self._already_at_target(staging, p, old, new)
        ]
        if clobbered:
            raise ConflictError(
                f"untracked files would be overwritten: {', '.join(clobbered[:5])}",
                hint="move them away, or pass --force",
            )

    def _already_at_target(
        self, staging: Staging, rel: str, old: TreeFiles, new: TreeFiles
    ) -> bool:
        """True when `rel` already is what moving from `old` to `new` would make it.

        That is the state a move killed halfway leaves behind (work tree written, refs not
        yet moved): nothing would be lost by going on, so running the command again works.
        """
        entry = staging.get(rel)
        allowed = {old[rel][0] if rel in old else None, new[rel][0] if rel in new else None}
        if (entry.blob_id if entry else None) not in allowed:
            return False  # the index holds a third version: staged work we must not drop
        file_path = self.root / rel
        if rel not in new:
            return not file_path.exists() and not file_path.is_symlink()
        if not file_path.exists() and not file_path.is_symlink():
            return False
        return self._content_blob_id(rel, file_path) == new[rel][0]

    def _worktree_target(self, rel: str) -> Path:
        """The work-tree path of `rel`, cleared for writing (no folder in the way, and no
        symlinked folder on the way that could lead outside the work tree)."""
        path = self.root / checked_path(rel)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        _unlink_leading_symlinks(self.root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _move_into_worktree(self, rel: str, ready: Path) -> bool:
        """Rename a prewritten file into place; False when it cannot be (another filesystem)."""
        path = self._worktree_target(rel)
        try:
            os.replace(ready, path)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            return False
        os.chmod(path, 0o644)
        fsync_dir(path.parent)
        return True

    def _write_worktree_file(self, rel: str, blob_id: bytes, mode: int) -> None:
        path = self._worktree_target(rel)
        data = self.read_blob(blob_id)
        if mode == 0o120000:
            path.unlink(missing_ok=True)
            os.symlink(data.decode(), path)
        elif is_model_path(rel):
            materialize(self.store, Manifest.from_bytes(data, rel), path)
        else:
            atomic_write(path, data, mode=0o755 if mode & 0o111 else 0o644)

    # ------------------------------------------------------------------ history
    def log(self, rev: str = "HEAD", max_count: int | None = None) -> list[CommitInfo]:
        """Commits reachable from `rev`, newest first."""
        if rev == "HEAD" and self.head() is None:
            return []
        sha = self.resolve(rev).encode()
        walker = self.git.get_walker(include=[sha], max_entries=max_count)
        return [_commit_info(entry.commit) for entry in walker]

    # ------------------------------------------------------------------ state dicts
    def commit_state_dict(
        self,
        state_dict: Mapping[str, Any],
        path: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Commit a torch state_dict as the model file `path` without writing it first."""
        from mvc.repo.state_dicts import manifest_from_state_dict

        rel = checked_path(path)
        if not is_model_path(rel):
            raise MvcError(f"'{path}' must end in .safetensors")
        with self.locked():
            head = self.head()
            files: dict[str, Manifest | bytes] = dict(self.files(head)) if head else {}
            previous = {}
            if rel in files and isinstance(files[rel], bytes):
                previous = Manifest.from_bytes(files[rel], rel).by_name()
            files[rel] = manifest_from_state_dict(self.store, state_dict, previous, metadata)
            return self.commit_tree(files, [head] if head else [], message)

    def load_state_dict(self, rev: str, path: str) -> dict[str, Any]:
        """A model file of a commit as a dict of torch tensors."""
        from mvc.repo.state_dicts import state_dict_from_manifest

        return state_dict_from_manifest(self.store, self.manifest(rev, path))

    # ------------------------------------------------------------------ maintenance
    def reachable_commits(self) -> list[bytes]:
        heads = [sha for ref, sha in self.git.get_refs().items() if ref != b"HEAD"]
        head = self.head()
        if head:
            heads.append(head.encode())
        heads.extend(h.encode() for h in self._merge_heads())
        commits = {}
        if heads:
            for entry in self.git.get_walker(include=list(set(heads))):
                commits[entry.commit.id] = entry.commit
        return list(commits)

    def live_objects(self) -> set[str]:
        """Store objects referenced by any reachable commit, the index, or a merge record."""
        from mvc.repo.references import referenced_objects

        live: set[str] = set()
        seen_blobs: set[bytes] = set()
        blobs: list[tuple[str, bytes]] = []
        for sha in self.reachable_commits():
            tree = self.git[sha].tree
            for entry in iter_tree_contents(self.git.object_store, tree):
                blobs.append((entry.path.decode(), entry.sha))
        staging = Staging(self.git)
        for path in staging.paths():
            entry = staging.get(path)
            if entry is not None:
                blobs.append((path, entry.blob_id))
        for path, blob_id in blobs:
            if blob_id in seen_blobs:
                continue
            seen_blobs.add(blob_id)
            live.update(referenced_objects(path, self.read_blob(blob_id)))
        return live

    def fsck(self) -> list[str]:
        """Every problem found (empty when the repository is sound)."""
        from mvc.repo.maintenance import check_repository

        return check_repository(self)

    def gc(self) -> Any:
        """Delete store objects that nothing reachable references."""
        with self.locked():
            return self.store.gc(self.live_objects())


def _commit_info(commit: Commit) -> CommitInfo:
    return CommitInfo(
        id=commit.id.decode(),
        parents=tuple(p.decode() for p in commit.parents),
        author=commit.author.decode(errors="replace"),
        date=commit.author_time,
        timezone=commit.author_timezone,
        message=commit.message.decode(errors="replace").rstrip("\n"),
    )


def _check_branch_name(name: str) -> None:
    bad = (
        not name
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".lock", "."))
        or any(c in name for c in " ~^:?*[\\\x7f")
        or ".." in name
        or "//" in name
        or "@{" in name
        or any(ord(c) < 32 for c in name)
    )
    if bad:
        raise MvcError(f"'{name}' is not a valid branch name")


_STORAGE_ERRNOS = {
    errno.ENOSPC: "free some space and run the command again",
    errno.EDQUOT: "free some space (or raise the quota) and run the command again",
    errno.EROFS: "the repository is on a read-only file system; remount it read-write",
    errno.EACCES: "check the permissions of the repository's files",
    errno.EPERM: "check the permissions of the repository's files",
    errno.EIO: "the disk reported an I/O error; check it, then run `mvc fsck`",
}


def _storage_error(err: OSError) -> MvcError | None:
    """A full, read-only or failing disk under a mutating command, as a one-line error.

    Every write is atomic (temp file, fsync, rename) and refs move last, so what was
    committed before is intact and the command can be run again once the disk is fixed.
    """
    hint = _STORAGE_ERRNOS.get(err.errno or 0)
    if hint is None:
        return None
    where = f": {err.filename}" if err.filename else ""
    return MvcError(f"{err.strerror}{where}", hint=hint)


def _unlink_leading_symlinks(root: Path, rel: str) -> None:
    """Where `rel` needs a folder, a symlink (say, from the previous commit) must not stand.

    Writing through it would put the file wherever the link points, outside the work tree;
    as git does, the link is removed (never its target) and a real folder made instead.
    """
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            current.unlink()


def _prune_empty_dirs(root: Path, rel: str) -> None:
    parent = (root / rel).parent
    while parent != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
