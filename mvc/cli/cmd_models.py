"""Model-folder commands: reshard."""

from __future__ import annotations

import click

from mvc.cli.output import emit_json, json_option, open_repo


@click.command()
@click.argument("path", type=click.Path())
@click.option(
    "--max-shard-size",
    required=True,
    help="Largest shard: 40MB, 5GB, 500MiB or bytes (as save_pretrained takes it).",
)
@click.option("-m", "--message", default=None, help="Commit message.")
@json_option()
def reshard(path: str, max_shard_size: str, message: str | None, as_json: bool) -> None:
    """Commit the model at PATH in a new shard layout; no tensor is stored again."""
    from dataclasses import asdict

    from mvc.formats.hf import parse_size
    from mvc.repo.reshard import reshard as run_reshard

    result = run_reshard(open_repo(), path, parse_size(max_shard_size), message)
    if as_json:
        emit_json(asdict(result))
        return
    share = result.bytes_added / result.model_bytes if result.model_bytes else 0.0
    click.echo(
        f"[{result.commit[:12]}] {result.folder or '.'} in {len(result.shards)} shard(s); "
        f"added {result.bytes_added} bytes ({share:.4%} of {result.model_bytes} model bytes), "
        f"reused {result.objects_reused} tensor objects"
    )


CLICK_COMMANDS: tuple[click.Command, ...] = (reshard,)
