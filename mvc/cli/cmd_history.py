"""History commands: tag, reset, and revert and cherry-pick (merges with a chosen base)."""

from __future__ import annotations

import click

from mvc.cli.cmd_merge import build_options, merge_options
from mvc.cli.cmd_merge import report as report_merge
from mvc.cli.output import emit_json, json_option, open_repo


@click.command()
@click.argument("name", required=False)
@click.argument("rev", required=False)
@click.option("-m", "--message", default=None, help="Tag message (default: the name).")
@click.option("-d", "--delete", is_flag=True, help="Delete the tag NAME.")
@json_option()
def tag(name: str | None, rev: str | None, message: str | None, delete: bool, as_json: bool):
    """Create an annotated tag NAME on REV (default HEAD); list tags; -d deletes one."""
    from mvc.repo.tags import create_tag, delete_tag, list_tags

    repo = open_repo()
    if name is None:
        if delete or rev or message:
            raise click.UsageError("name the tag")
        tags = list_tags(repo)
        if as_json:
            emit_json([t.to_json() for t in tags])
            return
        for t in tags:
            click.echo(f"{t.name:<20} {t.commit[:12]}  {t.message.splitlines()[0] if t.message else ''}")
        return
    if delete:
        if rev or message:
            raise click.UsageError("-d takes only the tag name")
        sha = delete_tag(repo, name)
        click.echo(f"Deleted tag '{name}' (was {sha[:12]})")
        return
    info = create_tag(repo, name, rev or "HEAD", message)
    if as_json:
        emit_json(info.to_json())
        return
    click.echo(f"Tagged {info.commit[:12]} as {info.name}")


@click.command()
@click.argument("rev", default="HEAD")
@click.option("--soft", "mode", flag_value="soft", help="Move the branch only.")
@click.option("--mixed", "mode", flag_value="mixed", default=True, help="Also reset the index.")
@click.option("--hard", "mode", flag_value="hard", help="Also reset the work tree.")
def reset(rev: str, mode: str) -> None:
    """Point the current branch at REV (git's reset)."""
    from mvc.repo.reset import reset as reset_repo

    sha = reset_repo(open_repo(), rev, mode)
    click.echo(f"HEAD is now at {sha[:12]}")


def _replay_command(operation: str, summary: str):
    @click.command(operation, help=summary)
    @click.argument("commit")
    @click.option(
        "-m",
        "--mainline",
        type=int,
        default=None,
        help="For a merge commit: the parent (1, 2, ...) its change is measured against.",
    )
    @click.option("--message", default=None, help="Commit message.")
    @click.option("--no-commit", is_flag=True, help="Stage the result; commit it yourself.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
    @json_option()
    @merge_options
    @click.pass_context
    def command(ctx, commit, mainline, message, no_commit, quiet, as_json, **kw):
        from mvc.merge.replay import replay
        from mvc.progress import BarProgress

        if kw["base_rev"]:
            raise click.UsageError(f"{operation} chooses the merge base itself; drop --base")
        if ctx.get_parameter_source("strategy") == click.core.ParameterSource.DEFAULT:
            kw["strategy"] = "task_arithmetic"  # the change itself, ±τ_C, unless told otherwise
        result = replay(
            open_repo(),
            operation,
            commit,
            build_options(message, no_commit, False, **kw),
            mainline,
            progress=BarProgress(enabled=None if not quiet else False),
        )
        report_merge(result, as_json)

    return command


revert = _replay_command(
    "revert",
    "Undo COMMIT's change on top of HEAD: HEAD − τ_C, a merge with base COMMIT "
    "(task_arithmetic by default; any merge strategy and option works).",
)
cherry_pick = _replay_command(
    "cherry-pick",
    "Add COMMIT's change onto HEAD: HEAD + τ_C, a merge with base COMMIT's parent "
    "(task_arithmetic by default; any merge strategy and option works).",
)


CLICK_COMMANDS: tuple[click.Command, ...] = (tag, reset, revert, cherry_pick)
