"""`mvc pull`: fetch, then merge; apart from the other remote commands because its merge
options need the merge layer's strategy table, which push, fetch and clone never load."""

from __future__ import annotations

import click

from mvc.cli.cmd_merge import build_options, merge_options
from mvc.cli.cmd_merge import report as report_merge
from mvc.cli.cmd_remote import echo_report, endpoint_option, quiet_option
from mvc.cli.output import open_repo


@click.command()
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.argument("branch", required=False)
@click.option("-m", "--message", default=None, help="Merge commit message.")
@click.option("--no-commit", is_flag=True, help="Stage the merge; commit it yourself.")
@click.option(
    "--no-ff", is_flag=True, help="Make a merge commit even when a fast-forward would do."
)
@click.option("--ff-only", is_flag=True, help="Refuse to merge; only fast-forward.")
@endpoint_option
@quiet_option
@merge_options
def pull(
    remote_name: str | None,
    branch: str | None,
    message: str | None,
    no_commit: bool,
    no_ff: bool,
    ff_only: bool,
    endpoint: str | None,
    quiet: bool,
    **recipe,
) -> None:
    """Fetch, then fast-forward or three-way merge REMOTE/BRANCH into the current branch.

    REMOTE and BRANCH default to the branch's upstream (else origin and the current
    branch's name). Diverged histories are merged as `mvc merge` would, with the same
    recipe options (TIES by default); with conflicts nothing is written.
    """
    from mvc.progress import BarProgress
    from mvc.remote import pull as pull_branch

    if ff_only and no_ff:
        raise click.UsageError("--ff-only and --no-ff contradict each other")
    result = pull_branch(
        open_repo(),
        remote_name,
        branch,
        build_options(message, no_commit, no_ff, **recipe),
        ff_only=ff_only,
        endpoint=endpoint,
        quiet=quiet,
        progress=BarProgress(enabled=None if not quiet else False),
    )
    echo_report(result.report, f"From {result.report.remote}: received", quiet)
    if quiet:
        return
    if result.outcome == "up-to-date":
        click.echo("Already up to date.")
    elif result.outcome == "fast-forward":
        click.echo(f"Fast-forward to {result.commit[:12]}")
    else:
        report_merge(result.merge, as_json=False)


CLICK_COMMANDS: tuple[click.Command, ...] = (pull,)
