"""The `mvc` command: a click group whose commands live in one module per area.

Each module in ``COMMAND_MODULES`` exposes ``register(group)``. Commands parse options,
call the library and print; they hold no logic. ``MvcError`` becomes one line on stderr
and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

# mvc calls no multi-threaded BLAS routine, but OpenBLAS (loaded with numpy) starts a
# thread per core that busy-waits at start-up, taking a core from the merge's readers.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402

from mvc.errors import MvcError  # noqa: E402

COMMAND_MODULES: list[str] = [
    "mvc.cli.cmd_repo",
    "mvc.cli.cmd_history",
    "mvc.cli.cmd_merge",
    "mvc.cli.cmd_models",
    "mvc.cli.cmd_lock",
    "mvc.cli.cmd_adapters",
    "mvc.cli.cmd_lineage",
    "mvc.cli.cmd_remote",
    "mvc.cli.cmd_git",
    "mvc.cli.cmd_demo",
]


class MvcGroup(click.Group):
    """A click group that turns library errors into git-style one-line messages."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except MvcError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"mvc: error: {err.message}", err=True)
            if err.hint:
                click.echo(f"hint: {err.hint}", err=True)
            ctx.exit(1)


@click.group(cls=MvcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-C", "directory", default=None, help="Run as if mvc was started in this folder.")
@click.option(
    "--offline",
    is_flag=True,
    envvar="MVC_OFFLINE",
    help="Never fetch missing objects of a lazy clone; name them instead.",
)
@click.version_option(package_name="mvc")
@click.pass_context
def cli(ctx: click.Context, debug: bool, directory: str | None, offline: bool) -> None:
    """mvc: Git for model weights with real merge semantics."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["offline"] = offline
    if directory:
        import os

        os.chdir(directory)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(cli)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="mvc", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
