"""Shared helpers for commands: JSON output and its flag, opening the repository, a choice option."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click


def emit_json(data: Any) -> None:
    """Print `data` as stable, indented JSON (the `--json` flag of every read command)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def json_option(help: str = "Machine-readable output.") -> Callable:
    """The ``--json`` flag (parameter ``as_json``) of every command that can print JSON:
    one spelling, so the flag reads the same everywhere."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def choice_option(
    flag: str, choices: Sequence[str], help: str, default: str | None = None
) -> Callable:
    """An option taking one of ``choices``, ``default`` (the first choice unless given) shown
    in the help: one spelling for the many "pick a mode" options."""
    return click.option(
        flag,
        type=click.Choice(list(choices)),
        default=choices[0] if default is None else default,
        show_default=True,
        help=help,
    )


def open_repo():
    """The repository containing the current directory.

    A lazy clone gets its promisor remote attached, so whatever the command reads that is
    not here is fetched (or, with `mvc --offline`, named in the error); the command ends
    with one line saying what was fetched.
    """
    from mvc.remote.promisor import attach
    from mvc.repo import Repo

    repo = Repo.open(".")
    ctx = click.get_current_context(silent=True)
    offline = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("offline"))
    promisor = attach(repo, offline=offline)
    if promisor is not None and ctx is not None:

        def summarize() -> None:
            line = promisor.summary()
            if line:
                click.echo(line, err=True)

        ctx.call_on_close(summarize)
    return repo
