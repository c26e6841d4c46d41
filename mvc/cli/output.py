"""Shared printing helpers for commands: JSON output and opening the repository."""

from __future__ import annotations

import json
from typing import Any

import click


def emit_json(data: Any) -> None:
    """Print `data` as stable, indented JSON (the `--json` flag of every read command)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def open_repo():
    """The repository containing the current directory."""
    from mvc.repo import Repo

    return Repo.open(".")
