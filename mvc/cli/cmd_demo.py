"""`mvc demo [DIR]`: the branch-train-merge story on the bundled MiniLM (needs the demo extra)."""

from __future__ import annotations

import click

from mvc.errors import MvcError


@click.command()
@click.argument("directory", default="mvc-demo", type=click.Path(file_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(directory: str, quiet: bool) -> None:
    """Fine-tune three MiniLM branches, merge, audit, unmerge, extract and lock, in DIR."""
    try:
        from mvc.demo.story import run_demo
    except ImportError as err:
        raise MvcError(
            f"the demo needs extra packages ({err.name})",
            hint="pip install 'mvc[demo]'",
        ) from None
    from mvc.progress import BarProgress

    report = run_demo(directory, say=click.echo, progress=BarProgress(False if quiet else None))
    click.echo(f"demo finished in {report.seconds:.0f} s")
    if not report.ok:
        raise MvcError("a demo check failed (see above)")


CLICK_COMMANDS: tuple[click.Command, ...] = (demo,)
