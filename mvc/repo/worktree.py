"""The work tree as mvc sees it: which files exist, which are ignored, which are models.

Paths inside mvc are POSIX-style strings relative to the repository root. Every path that
comes from outside (the command line, a manifest, a tree) passes `checked_path` first, so
nothing can name a file outside the work tree or inside `.git`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from dulwich.ignore import IgnoreFilterManager
from dulwich.repo import Repo as GitRepo

from mvc.errors import FormatError, NotFoundError
from mvc.formats.hf import check_not_pickle, is_model_file

CONTROL_DIR = ".git"


def checked_path(rel: str) -> str:
    """Reject a relative path that escapes the tree, is absolute, or enters `.git`."""
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        raise FormatError(f"unsafe path {rel!r}: paths must stay inside the work tree")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts) or parts[0] == CONTROL_DIR:
        raise FormatError(f"unsafe path {rel!r}: paths must stay inside the work tree")
    return rel


def relative_to_root(root: Path, user_path: str | os.PathLike[str]) -> str:
    """Turn a path the user typed (relative to the cwd) into a repository path."""
    absolute = Path(os.path.abspath(user_path))
    try:
        rel = absolute.relative_to(root)
    except ValueError:
        raise FormatError(f"'{user_path}' is outside the repository at {root}") from None
    text = rel.as_posix()
    return "" if text == "." else text


def is_model_path(rel: str) -> bool:
    return is_model_file(rel)


class WorkTree:
    """Listing and classifying the files under the repository root."""

    def __init__(self, root: Path, git: GitRepo) -> None:
        self.root = root
        self._ignore = IgnoreFilterManager.from_repo(git)

    def path(self, rel: str) -> Path:
        return self.root / checked_path(rel)

    def is_ignored(self, rel: str) -> bool:
        return bool(self._ignore.is_ignored(rel))

    def files(self, under: str = "") -> Iterator[str]:
        """Every non-ignored file below `under` (a file path yields itself)."""
        start = self.root / under if under else self.root
        if start.is_file() or start.is_symlink():
            yield under
            return
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not (rel_dir == "" and d == CONTROL_DIR)
                and not self.is_ignored(_join(rel_dir, d) + "/")
            )
            for name in sorted(filenames):
                rel = _join(rel_dir, name)
                if not self.is_ignored(rel):
                    yield rel

    def expand(self, rels: Iterable[str], tracked: Iterable[str]) -> tuple[list[str], list[str]]:
        """Files to stage and tracked files to unstage (gone from disk) for the given paths."""
        tracked = set(tracked)
        present: list[str] = []
        gone: list[str] = []
        for rel in rels:
            found = list(self.files(rel))
            prefix = f"{rel}/" if rel else ""
            missing = [
                t
                for t in tracked
                if (t == rel or t.startswith(prefix)) and not (self.root / t).exists()
            ]
            if not found and not missing:
                raise NotFoundError(f"pathspec '{rel or '.'}' did not match any files")
            present.extend(found)
            gone.extend(missing)
        for rel in present:
            if not is_model_path(rel):
                check_not_pickle(self.root / rel)
        return sorted(set(present)), sorted(set(gone))


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name
