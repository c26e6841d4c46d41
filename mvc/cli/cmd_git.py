"""Plain-git integration: `mvc install-git` and the hidden commands git itself runs."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("install-git")
@click.option(
    "--global",
    "global_",
    is_flag=True,
    help="Configure the drivers in your global git config (every repository).",
)
def install_git(global_: bool) -> None:
    """Let plain `git` store, check out, diff and merge *.safetensors through mvc.

    Writes a clean/smudge filter, a diff textconv and a merge driver named `mvc` into
    .git/config (or the global config) and `*.safetensors filter=mvc diff=mvc merge=mvc
    -text` into .gitattributes. `git merge` then merges models with TIES; choose another
    recipe with `git config mvc.mergeStrategy NAME`, `mvc.mergeDensity D`,
    `mvc.mergePreset mergekit|peft|paper`.
    """
    from mvc.gitdriver.install import ATTRIBUTES_LINE
    from mvc.gitdriver.install import install_git as install

    report = install(".", global_=global_)
    click.echo(f"configured filter, diff and merge drivers 'mvc' in {report.config}")
    if report.attributes is not None:
        state = "added to" if report.attributes_added else "already in"
        click.echo(f"'{ATTRIBUTES_LINE}' {state} {report.attributes}")
        if report.attributes_added:
            click.echo("commit .gitattributes so that clones use the drivers too")


@click.command("git-filter-process", hidden=True)
def git_filter_process() -> None:
    """git's long-running filter (filter.mvc.process): clean and smudge over pkt-lines."""
    from mvc.gitdriver.filter import GitContext, serve

    serve(GitContext.discover("."), sys.stdin.buffer, sys.stdout.buffer)


@click.command("git-clean", hidden=True)
@click.argument("path")
def git_clean(path: str) -> None:
    """filter.mvc.clean: safetensors bytes on stdin, manifest on stdout."""
    from mvc.gitdriver.filter import GitContext, run_once

    run_once(GitContext.discover("."), "clean", path, sys.stdin.buffer, sys.stdout.buffer)


@click.command("git-smudge", hidden=True)
@click.argument("path")
def git_smudge(path: str) -> None:
    """filter.mvc.smudge: manifest on stdin, safetensors bytes on stdout."""
    from mvc.gitdriver.filter import GitContext, run_once

    run_once(GitContext.discover("."), "smudge", path, sys.stdin.buffer, sys.stdout.buffer)


@click.command("git-textconv", hidden=True)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def git_textconv(file: Path) -> None:
    """diff.mvc.textconv: one line per tensor, so `git diff` names the changed tensors."""
    from mvc.gitdriver.filter import textconv

    click.echo(textconv(file), nl=False)


@click.command("git-merge", hidden=True)
@click.argument("ancestor", type=click.Path(path_type=Path))
@click.argument("ours", type=click.Path(path_type=Path))
@click.argument("theirs", type=click.Path(path_type=Path))
@click.argument("path")
@click.pass_context
def git_merge(ctx: click.Context, ancestor: Path, ours: Path, theirs: Path, path: str) -> None:
    """merge.mvc.driver: three-way tensor merge of one model file into OURS."""
    from mvc.gitdriver.filter import GitContext
    from mvc.gitdriver.merge import merge_file

    conflicts = merge_file(GitContext.discover("."), ancestor, ours, theirs, path)
    if conflicts:
        click.echo(f"mvc: {path}: {len(conflicts)} conflict(s), kept ours:", err=True)
        for conflict in conflicts:
            click.echo(f"  {conflict}", err=True)
        click.echo(
            "hint: set `git config mvc.mergeStrategy ours|theirs`, or merge with "
            "`mvc merge --config merge.yaml` for per-tensor rules",
            err=True,
        )
        ctx.exit(1)


CLICK_COMMANDS: tuple[click.Command, ...] = (
    install_git, git_filter_process, git_clean, git_smudge, git_textconv, git_merge
)
