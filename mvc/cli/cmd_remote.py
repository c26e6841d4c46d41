"""Remote commands: remote (add/remove/list), push, fetch, clone (pull: cmd_pull)."""

from __future__ import annotations

import click

from mvc.cli.output import emit_json, json_option, open_repo


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024  # type: ignore[assignment]
    return f"{nbytes} B"


def echo_report(
    report, verb: str, quiet: bool, as_json: bool = False, nothing: str | None = None
) -> None:
    """Print a transfer report: as JSON with --json, not at all with -q, else a summary line
    and a line per moved ref, or ``nothing`` (push's "Everything up-to-date") where none moved."""
    if as_json:
        emit_json(report.to_json())
        return
    if quiet:
        return
    if nothing is not None and not report.refs:
        click.echo(nothing)
        return
    click.echo(
        f"{verb} {report.git_objects} git object(s), {report.tensor_objects} tensor object(s), "
        f"{_size(report.bytes)} ({report.bytes} bytes); {report.skipped} already there"
    )
    for ref, (old, new) in report.refs.items():
        change = f"{old[:12]}..{new[:12]}" if old else f"* [new] {new[:12]}"
        click.echo(f"  {change}  {ref}")
    for name in report.rejected_tags:
        click.echo(f"  ! [rejected] refs/tags/{name} (a different tag of that name is there)")


@click.group()
def remote() -> None:
    """Manage the remotes this repository pushes to and fetches from."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--endpoint", default=None, help="S3 endpoint URL (S3-compatible servers).")
def remote_add(name: str, url: str, endpoint: str | None) -> None:
    """Add a remote: a filesystem path, file:///path or s3://bucket/prefix."""
    from mvc.remote import add_remote

    add_remote(open_repo(), name, url, endpoint)


@remote.command("remove")
@click.argument("name")
def remote_remove(name: str) -> None:
    """Forget a remote and its remote-tracking branches."""
    from mvc.remote import remove_remote

    remove_remote(open_repo(), name)


@remote.command("list")
@click.option("-v", "--verbose", is_flag=True, help="Show URLs and endpoints.")
@json_option()
def remote_list(verbose: bool, as_json: bool) -> None:
    """List the configured remotes."""
    from mvc.remote import list_remotes

    remotes = list_remotes(open_repo())
    if as_json:
        emit_json([{"name": r.name, "url": r.url, "endpoint": r.endpoint} for r in remotes])
        return
    for r in remotes:
        extra = f" (endpoint {r.endpoint})" if r.endpoint else ""
        click.echo(f"{r.name}\t{r.url}{extra}" if verbose else r.name)


quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
_json = json_option("Print the transfer report as JSON.")
endpoint_option = click.option("--endpoint", default=None, help="S3 endpoint URL for this command.")


@click.command()
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.argument("branch", required=False)
@click.option(
    "-f", "--force", is_flag=True, help="Overwrite the remote branch even if it diverged."
)
@click.option("-u", "--set-upstream", is_flag=True, help="Make REMOTE/BRANCH the upstream.")
@click.option(
    "--paranoid", is_flag=True, help="Decode and verify every object again before sending it."
)
@endpoint_option
@quiet_option
@_json
def push(
    remote_name: str | None,
    branch: str | None,
    force: bool,
    set_upstream: bool,
    paranoid: bool,
    endpoint: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Send BRANCH (default: current) and the objects it needs to REMOTE (default: origin)."""
    from mvc.remote import push as push_branch

    repo = open_repo()
    report = push_branch(
        repo,
        remote_name,
        branch,
        force,
        endpoint=endpoint,
        set_upstream_branch=set_upstream,
        paranoid=paranoid,
        quiet=quiet or as_json,
    )
    echo_report(report, f"To {report.remote}: sent", quiet, as_json, "Everything up-to-date")


@click.command()
@click.argument("remote_name", metavar="[REMOTE]", default="origin")
@click.argument("branches", nargs=-1)
@click.option(
    "--all-objects", is_flag=True, help="A lazy clone: fetch every missing tensor object too."
)
@click.option("--depth", type=int, default=None, help="Stop history N commits below each tip.")
@endpoint_option
@quiet_option
@_json
def fetch(
    remote_name: str,
    branches: tuple[str, ...],
    all_objects: bool,
    depth: int | None,
    endpoint: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Receive REMOTE's branches as remote-tracking branches REMOTE/BRANCH.

    From a lazy clone's promisor, tensor objects come only for BRANCHES (default: the
    checked-out branch); the rest is fetched when needed, or now with --all-objects.
    """
    from mvc.remote import fetch as fetch_remote

    report = fetch_remote(
        open_repo(),
        remote_name,
        branches=list(branches) or None,
        all_objects=all_objects,
        depth=depth,
        endpoint=endpoint,
        quiet=quiet or as_json,
    )
    echo_report(report, f"From {report.remote}: received", quiet, as_json)


@click.command()
@click.argument("url")
@click.argument("directory", required=False)
@click.option("--full", is_flag=True, help="Fetch every tensor object, not only the checkout's.")
@click.option("--depth", type=int, default=None, help="Keep only the last N commits of history.")
@endpoint_option
@quiet_option
def clone(
    url: str,
    directory: str | None,
    full: bool,
    depth: int | None,
    endpoint: str | None,
    quiet: bool,
) -> None:
    """Copy a remote into a new folder and check out its default branch.

    Lazy by default: all history, but only the tensor objects of the checked-out commit;
    the rest comes from the remote when a command needs it. --full fetches everything.
    """
    from mvc.remote import clone as clone_remote

    result = clone_remote(url, directory, endpoint=endpoint, full=full, depth=depth, quiet=quiet)
    if result.resumed and not quiet:
        click.echo("resumed an interrupted clone")
    echo_report(result.report, "received", quiet)
    if not quiet:
        click.echo(f"checked out '{result.branch}' in {result.repo.root}")


CLICK_COMMANDS: tuple[click.Command, ...] = (remote, push, fetch, clone)
