"""The `mvc` command: a click group whose commands live in one module per area.

Each module named in ``COMMANDS`` lists its click commands in ``CLICK_COMMANDS``. Commands
parse options, call the library and print; they hold no logic. ``MvcError`` becomes one line on stderr
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

# Which module holds each command. A command's module is imported only when that
# command runs (or for `--help`), so `mvc push` does not pay for the merge strategies,
# lineage or MergeLock: start-up is a large part of a small command's time.
# tests/test_cli_repo.py checks this table against the modules' CLICK_COMMANDS.
COMMANDS: dict[str, str] = {
    **dict.fromkeys(
        "init add rm status commit log show diff branch switch checkout fsck gc import".split(),
        "mvc.cli.cmd_repo",
    ),
    **dict.fromkeys("tag reset revert cherry-pick".split(), "mvc.cli.cmd_history"),
    "merge": "mvc.cli.cmd_merge",
    "reshard": "mvc.cli.cmd_models",
    **dict.fromkeys("keygen lock unlock".split(), "mvc.cli.cmd_lock"),
    **dict.fromkeys(("bake", "extract-lora"), "mvc.cli.cmd_adapters"),
    **dict.fromkeys("lineage verify unmerge extract blame export".split(), "mvc.cli.cmd_lineage"),
    **dict.fromkeys("remote push fetch clone".split(), "mvc.cli.cmd_remote"),
    "pull": "mvc.cli.cmd_pull",
    **dict.fromkeys(
        "install-git git-clean git-smudge git-filter-process git-textconv git-merge".split(),
        "mvc.cli.cmd_git",
    ),
    "demo": "mvc.cli.cmd_demo",
}


class MvcGroup(click.Group):
    """A click group that turns library errors into git-style one-line messages, and
    imports a command's module only when the command is looked up (see ``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            for command in importlib.import_module(module).CLICK_COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)

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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="mvc", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
