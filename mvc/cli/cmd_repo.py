"""Repository commands: init add rm status commit log show diff branch switch checkout fsck gc import."""

from __future__ import annotations

import sys
import time

import click

from mvc.cli.output import emit_json, json_option, open_repo
from mvc.repo.adapters import adapters_for_paths


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Create an empty mvc repository (first branch: main)."""
    from mvc.repo import Repo

    repo = Repo.init(directory)
    click.echo(f"Initialized empty mvc repository in {repo.root / '.git'}")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def add(paths: tuple[str, ...]) -> None:
    """Stage files; model files are stored as tensor objects."""
    changed = open_repo().add(paths)
    click.echo(f"staged {len(changed)} changed file(s)")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--cached", is_flag=True, help="Only unstage; keep the files on disk.")
def rm(paths: tuple[str, ...], cached: bool) -> None:
    """Remove files from the index (and the work tree)."""
    for path in open_repo().rm(paths, cached=cached):
        click.echo(f"rm '{path}'")


@click.command()
@json_option()
@click.option("-s", "--short", is_flag=True, help="One line per file.")
def status(as_json: bool, short: bool) -> None:
    """Show staged, unstaged and untracked changes."""
    repo = open_repo()
    st = repo.status()
    adapters = adapters_for_paths(repo, None, [*st.staged, *st.unstaged, *st.untracked])
    if as_json:
        emit_json(dict(st.to_json(), adapters=adapters))
        return
    if short:
        paths = sorted(set(st.staged) | set(st.unstaged))
        for path in paths:
            click.echo(f"{_letter(st.staged.get(path))}{_letter(st.unstaged.get(path))} {path}")
        for path in st.untracked:
            click.echo(f"?? {path}")
        return
    where = f"On branch {st.branch}" if st.branch else f"HEAD detached at {(st.head or '')[:12]}"
    click.echo(where)
    if st.staged:
        click.echo("Changes to be committed:")
        for path, state in sorted(st.staged.items()):
            click.echo(f"  {state + ':':<10} {path}")
    if st.unstaged:
        click.echo("Changes not staged for commit:")
        for path, state in sorted(st.unstaged.items()):
            click.echo(f"  {state + ':':<10} {path}")
    if st.untracked:
        click.echo("Untracked files:")
        for path in st.untracked:
            click.echo(f"  {path}")
    for folder, description in sorted(adapters.items()):
        click.echo(f"Adapter {folder or '.'}/: {description}")
    if st.clean and not st.untracked:
        click.echo("nothing to commit, working tree clean")


def _letter(state: str | None) -> str:
    return {"added": "A", "modified": "M", "deleted": "D"}.get(state or "", " ")


@click.command()
@click.option("-m", "--message", required=True, help="Commit message.")
@click.option(
    "-a", "--all", "all_", is_flag=True, help="Stage every change to tracked files first."
)
def commit(message: str, all_: bool) -> None:
    """Record the staged changes as a new commit."""
    repo = open_repo()
    sha = repo.commit(message, all=all_)
    branch = repo.current_branch() or "detached HEAD"
    click.echo(f"[{branch} {sha[:12]}] {message.splitlines()[0]}")


@click.command()
@click.argument("rev", default="HEAD")
@click.option("-n", "--max-count", type=int, default=None, help="Show at most N commits.")
@json_option()
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("--graph", is_flag=True, help="Draw the commit graph.")
def log(rev: str, max_count: int | None, as_json: bool, oneline: bool, graph: bool) -> None:
    """Show the commit history."""
    from mvc.lineage.graph import render_graph

    repo = open_repo()
    commits = repo.log(rev, max_count=max_count)
    recipes = _recipes(repo, commits)
    adapters = {c.id: _adapters(repo, c.id) for c in commits}
    if as_json:
        emit_json(
            [dict(c.to_json(), recipe=recipes.get(c.id), adapters=adapters[c.id]) for c in commits]
        )
        return
    if graph:
        for line in render_graph(commits, lambda c: _summary(c, recipes)):
            click.echo(line)
        return
    for c in commits:
        if oneline:
            click.echo(_summary(c, recipes))
            continue
        _echo_commit(c, recipes.get(c.id), adapters[c.id])


def _echo_commit(c, recipe: str | None, adapters: dict[str, str]) -> None:
    """The commit block of `log` and `show`: id, parents of a merge, author, date, message."""
    click.echo(f"commit {c.id}")
    if len(c.parents) > 1:
        click.echo("Merge: " + " ".join(p[:12] for p in c.parents))
    click.echo(f"Author: {c.author}")
    click.echo(f"Date:   {time.strftime('%a %b %d %H:%M:%S %Y', time.localtime(c.date))}")
    if recipe:
        click.echo(f"Recipe: {recipe}")
    _echo_adapters(adapters)
    click.echo("")
    for line in c.message.splitlines():
        click.echo(f"    {line}")
    click.echo("")


def _summary(c, recipes: dict[str, str]) -> str:
    recipe = f"  ({recipes[c.id]})" if c.id in recipes else ""
    return f"{c.id[:12]} {c.message.splitlines()[0] if c.message else ''}{recipe}"


def _adapters(repo, commit_id: str) -> dict[str, str]:
    """The adapters a commit changed (folder -> one-line description)."""
    from mvc.repo.history import changed_files

    return adapters_for_paths(repo, commit_id, changed_files(repo, commit_id))


def _echo_adapters(adapters: dict[str, str]) -> None:
    for folder, description in sorted(adapters.items()):
        click.echo(f"Adapter: {folder or '.'}/ ({description})")


def _recipes(repo, commits) -> dict[str, str]:
    """One-line merge recipes, when the lineage layer is installed."""
    try:
        from mvc.lineage import recipe_line
    except ImportError:
        return {}
    result = {}
    for c in commits:
        line = recipe_line(repo, c.id)
        if line:
            result[c.id] = line
    return result


@click.command()
@click.argument("rev", default="HEAD")
@json_option()
def show(rev: str, as_json: bool) -> None:
    """Show a commit: metadata and the files it changed."""
    from mvc.repo.history import changed_files

    repo = open_repo()
    info = repo.commit_info(rev)
    changes = changed_files(repo, info.id)
    recipe = _recipes(repo, [info]).get(info.id)
    adapters = adapters_for_paths(repo, info.id, changes)
    if as_json:
        emit_json(dict(info.to_json(), changes=changes, recipe=recipe, adapters=adapters))
        return
    _echo_commit(info, recipe, adapters)
    for path, state in sorted(changes.items()):
        click.echo(f"  {state:<9} {path}")


@click.command()
@click.argument("revs", nargs=-1)
@json_option()
@click.option("--all", "show_all", is_flag=True, help="Also list unchanged tensors.")
def diff(revs: tuple[str, ...], as_json: bool, show_all: bool) -> None:
    """Per-tensor differences: `diff` (HEAD vs work tree), `diff A` (A vs work tree), `diff A B`."""
    from mvc.repo.diff import diff_revisions

    if len(revs) > 2:
        raise click.UsageError("diff takes at most two revisions")
    repo = open_repo()
    old = revs[0] if revs else "HEAD"
    new = revs[1] if len(revs) == 2 else None
    report = diff_revisions(repo, old, new)
    if as_json:
        emit_json(report.to_json())
        return
    rows = [r for r in report.tensors if show_all or r.status != "unchanged"]
    for path, state in sorted(report.files.items()):
        click.echo(f"{state:<9} {path}")
    if not rows:
        return
    click.echo("")
    header = (
        f"{'tensor':<60} {'status':<10} {'changed':>8} {'rel L2':>9} {'cosine':>7} {'sign≠':>7}"
    )
    click.echo(header)
    for r in rows:
        label = r.path + "::" + r.name + (" ΔW" if r.kind == "delta" else "")
        click.echo(
            f"{_clip(label, 60):<60} {r.status:<10} {_pct(r.changed_fraction):>8} "
            f"{_num(r.relative_l2):>9} {_num(r.cosine, 3):>7} {_pct(r.sign_conflicts):>7}"
        )


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits != 2 else f"{value:.2e}"


@click.command()
@click.argument("name", required=False)
@click.argument("start", required=False)
@click.option("-d", "--delete", is_flag=True, help="Delete a merged branch.")
@click.option("-D", "force_delete", is_flag=True, help="Delete a branch even if unmerged.")
@click.option("-f", "--force", is_flag=True, help="Move an existing branch to START.")
@json_option()
def branch(
    name: str | None,
    start: str | None,
    delete: bool,
    force_delete: bool,
    force: bool,
    as_json: bool,
) -> None:
    """List, create or delete branches."""
    repo = open_repo()
    if name is None:
        branches = repo.branches()
        if as_json:
            emit_json(
                [{"name": b.name, "commit": b.commit, "current": b.current} for b in branches]
            )
            return
        for b in branches:
            click.echo(f"{'*' if b.current else ' '} {b.name:<20} {b.commit[:12]}")
        return
    if delete or force_delete:
        repo.delete_branch(name, force=force_delete)
        click.echo(f"Deleted branch {name}")
        return
    sha = repo.create_branch(name, start or "HEAD", force=force)
    click.echo(f"Created branch {name} at {sha[:12]}")


@click.command()
@click.argument("name")
@click.argument("start", required=False)
@click.option("-c", "--create", is_flag=True, help="Create the branch (at START or HEAD) first.")
@click.option("-f", "--force", is_flag=True, help="Discard uncommitted changes.")
def switch(name: str, start: str | None, create: bool, force: bool) -> None:
    """Switch to a branch."""
    if start and not create:
        raise click.UsageError("START needs -c")
    repo = open_repo()
    repo.switch(name, create=create, start=start, force=force)
    click.echo(f"Switched to {'a new ' if create else ''}branch '{name}'")


class _PathsAfterDashDash(click.Command):
    """Keeps what follows `--` apart from the revisions, as git's checkout does."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            split = args.index("--")
            ctx.meta["paths"] = args[split + 1 :]
            args = args[:split]
        return super().parse_args(ctx, args)


@click.command(cls=_PathsAfterDashDash)
@click.argument("revs", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Discard uncommitted changes.")
@click.pass_context
def checkout(ctx: click.Context, revs: tuple[str, ...], force: bool) -> None:
    """`checkout REV` (detached), `checkout BRANCH`, or `checkout [REV] -- PATH...`."""
    repo = open_repo()
    paths = ctx.meta.get("paths")
    if paths is not None:
        if not paths:
            raise click.UsageError("give at least one path after --")
        if len(revs) > 1:
            raise click.UsageError("checkout takes at most one revision before --")
        repo.checkout(revs[0] if revs else None, paths=paths, force=force)
        click.echo(f"Restored {len(paths)} path(s)")
        return
    if len(revs) != 1:
        raise click.UsageError("checkout takes one revision (or `-- PATH...`)")
    target = repo.checkout(revs[0], force=force)
    branch_name = repo.current_branch()
    if branch_name:
        click.echo(f"Switched to branch '{branch_name}'")
    else:
        click.echo(f"HEAD is now at {(target or '')[:12]} (detached)")


@click.command()
@json_option()
def fsck(as_json: bool) -> None:
    """Verify every commit, manifest and stored object (promised objects are not errors)."""
    from mvc.repo.maintenance import fsck_report

    report = fsck_report(open_repo())
    problems = report.problems
    if as_json:
        emit_json({"ok": not problems, "problems": problems, "promised": len(report.promised)})
    else:
        for problem in problems:
            click.echo(problem)
        if report.promised:
            click.echo(
                f"fsck: {len(report.promised)} object(s) missing, promised by {report.promisor}"
            )
        if not problems:
            click.echo("fsck: everything verified")
    if problems:
        sys.exit(1)


@click.command()
@json_option()
@click.option(
    "--prune-promised",
    is_flag=True,
    help="Lazy clone: also drop local copies the remote holds and the checkout does not need.",
)
def gc(as_json: bool, prune_promised: bool) -> None:
    """Delete store objects no commit, index entry or merge record references."""
    if prune_promised:
        from mvc.remote.prune import prune_promised as prune

        report = prune(open_repo())
    else:
        report = open_repo().gc()
    data = {"kept": report.kept, "deleted": report.deleted, "freed_bytes": report.freed_bytes}
    if as_json:
        emit_json(data)
    else:
        click.echo(
            f"gc: kept {report.kept} objects, deleted {report.deleted}, "
            f"freed {report.freed_bytes} bytes"
        )


@click.command(name="import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(), required=False)
def import_(source: str, dest: str | None) -> None:
    """Convert a pickle checkpoint (.bin/.pt) to safetensors with torch's weights_only loader."""
    from mvc.formats.hf import import_checkpoint

    target = import_checkpoint(source, dest)
    click.echo(f"wrote {target}; add it with `mvc add {target}`")


CLICK_COMMANDS: tuple[click.Command, ...] = (
    init, add, rm, status, commit, log, show, diff, branch, switch, checkout, fsck, gc, import_
)
