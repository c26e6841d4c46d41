"""`mvc install-git`: make plain `git` store, check out, diff and merge models through mvc.

It writes git config entries for a filter driver (the long-running `process` protocol,
plus per-file `clean`/`smudge` for tools that lack it), a diff textconv and a merge driver,
all named `mvc`, and a `.gitattributes` line that assigns them to `*.safetensors`. The
commands run this same interpreter (`python -m mvc.cli.main git-...`), by absolute path,
so they work whatever PATH git runs with and need nothing outside the installed package.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.repo import Repo as GitRepo

from mvc.errors import MvcError, NotFoundError
from mvc.gitdriver.filter import store_dir

ATTRIBUTES_LINE = "*.safetensors filter=mvc diff=mvc merge=mvc -text"


def driver_command(subcommand: str) -> str:
    """A shell command line git can run: this interpreter, the mvc CLI, `subcommand`."""
    return f"{shlex.quote(sys.executable)} -m mvc.cli.main {subcommand}"


def git_settings() -> dict[str, str]:
    """The git config entries `install-git` writes (key -> value)."""
    return {
        "filter.mvc.process": driver_command("git-filter-process"),
        "filter.mvc.clean": driver_command("git-clean %f"),
        "filter.mvc.smudge": driver_command("git-smudge %f"),
        # A failing filter must stop `git add`, never let raw weights into git.
        "filter.mvc.required": "true",
        "diff.mvc.textconv": driver_command("git-textconv"),
        "merge.mvc.name": "mvc three-way parameter merge",
        "merge.mvc.driver": driver_command("git-merge %O %A %B %P"),
    }


@dataclass(frozen=True)
class InstallReport:
    """Where the drivers were configured, and the attributes file that uses them."""

    config: str
    attributes: Path | None
    attributes_added: bool


def install_git(start: str | Path = ".", global_: bool = False) -> InstallReport:
    """Configure the drivers in the repository containing `start` (or globally).

    Without `global_` there must be a repository; its tensor store (`.git/mvc`) is created
    if it was a plain git repository. With `global_`, `.gitattributes` is still written
    when `start` is inside a repository. Running it again changes nothing.
    """
    git_binary = shutil.which("git")
    if git_binary is None:
        raise MvcError("git is not installed", hint="install git, then run this again")
    found = _discover(start)
    common, work_tree = found if found is not None else (None, None)
    if common is None and not global_:
        raise NotFoundError(
            f"not a git repository: {Path(start).resolve()}",
            hint="run `mvc init` (or `git init`) first, or use --global",
        )
    if global_:
        scope, where = ["--global"], "global git config"
    else:
        assert common is not None
        config_file = common / "config"
        scope, where = ["--file", str(config_file)], str(config_file)
    for key, value in git_settings().items():
        _git_config(git_binary, scope, key, value)
    if common is None or work_tree is None:
        return InstallReport(where, None, False)
    store_dir(common)
    attributes = work_tree / ".gitattributes"
    return InstallReport(where, attributes, _ensure_line(attributes, ATTRIBUTES_LINE))


def _discover(start: str | Path) -> tuple[Path, Path] | None:
    """The repository containing `start`: its common git dir (shared by all its work
    trees) and its work tree; None outside any repository."""
    try:
        git = GitRepo.discover(str(start))
    except NotGitRepository:
        return None
    try:
        return Path(git.commondir()).resolve(), Path(git.path).resolve()
    finally:
        git.close()


def _git_config(git_binary: str, scope: list[str], key: str, value: str) -> None:
    result = subprocess.run(
        [git_binary, "config", *scope, key, value], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["unknown error"]
        raise MvcError(f"git config {key} failed: {detail[0]}")


def _ensure_line(path: Path, line: str) -> bool:
    """Append `line` to `path` unless it is already there; True when it was added."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if line in text.splitlines():
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    path.write_text(text + line + "\n", encoding="utf-8")
    return True
