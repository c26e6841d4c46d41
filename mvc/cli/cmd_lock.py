"""MergeLock commands: keygen, lock, unlock. The library does the work; torch loads lazily."""

from __future__ import annotations

from collections.abc import Callable

import click

from mvc.cli.output import choice_option, open_repo


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
def keygen(file: str) -> None:
    """Write a new 32-byte MergeLock key to FILE (mode 0600; never overwrites)."""
    from mvc.lock.keys import keygen as write_key

    write_key(file)
    click.echo(f"wrote MergeLock key to {file}")
    click.echo("keep it outside the repository: whoever holds it can unlock", err=True)


def _key_and_message(key_help: str) -> Callable:
    """REV's key file and the commit message, as lock and unlock both take them."""

    def decorate(command: Callable) -> Callable:
        command = click.option("-m", "--message", default=None, help="Commit message.")(command)
        return click.option(
            "--key", "key_file", required=True, type=click.Path(dir_okay=False), help=key_help
        )(command)

    return decorate


@click.command()
@click.argument("rev")
@_key_and_message("Key file from `mvc keygen`.")
@choice_option(
    "--level",
    ["attention", "full"],
    "attention: the paper's QK/VO transform; full: also FFN neurons and the residual stream.",
    default="full",
)
@click.option(
    "--reads-hidden",
    "reads_hidden",
    multiple=True,
    metavar="PATTERN",
    help="Tensors outside the family that read the hidden state (glob on the tensor name, "
    "or 'path:name' for weight files in folders below the model), e.g. 'heads/*'.",
)
def lock(
    rev: str, key_file: str, message: str | None, level: str, reads_hidden: tuple[str, ...]
) -> None:
    """Commit a MergeLock'ed copy of REV: same outputs, unmergeable."""
    from mvc.lock.commit import lock_commit
    from mvc.lock.record import lock_record

    repo = open_repo()
    sha = lock_commit(repo, rev, key_file, message, level=level, reads_hidden=reads_hidden)
    for model in (lock_record(repo, sha) or {}).get("models", []):
        click.echo(
            f"locked {model['path'] or '.'} ({model['family']}, level {model['level']}, "
            f"stream {model['stream']}, {model['tensors']} tensors, "
            f"max output difference {model['max_abs_diff']:.2g} "
            f"of {model['tolerance']:.2g} allowed)"
        )
    click.echo(f"[{repo.current_branch() or 'detached'} {sha[:12]}] locked {rev}")


@click.command()
@click.argument("rev")
@_key_and_message("The key REV was locked with.")
def unlock(rev: str, key_file: str, message: str | None) -> None:
    """Commit the unlocked model of a locked REV."""
    from mvc.lock.commit import unlock_commit

    repo = open_repo()
    sha = unlock_commit(repo, rev, key_file, message)
    click.echo(f"[{repo.current_branch() or 'detached'} {sha[:12]}] unlocked {rev}")


CLICK_COMMANDS: tuple[click.Command, ...] = (keygen, lock, unlock)
