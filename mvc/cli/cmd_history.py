"""History commands: tag and reset (and, through the merge layer, revert and cherry-pick)."""

from __future__ import annotations

import click

from mvc.cli.output import emit_json, open_repo


@click.command()
@click.argument("name", required=False)
@click.argument("rev", required=False)
@click.option("-m", "--message", default=None, help="Tag message (default: the name).")
@click.option("-d", "--delete", is_flag=True, help="Delete the tag NAME.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
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


def register(group: click.Group) -> None:
    for command in (tag, reset):
        group.add_command(command)
