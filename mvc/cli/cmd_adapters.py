"""Adapter commands: bake (apply a LoRA adapter to the stored base) and extract-lora."""

from __future__ import annotations

from pathlib import Path

import click

from mvc.cli.output import emit_json, json_option, open_repo


@click.command()
@click.argument("rev", default="HEAD")
@click.argument("adapter_path", required=False)
@click.option("-m", "--message", default=None, help="Commit message.")
@json_option()
def bake(rev: str, adapter_path: str | None, message: str | None, as_json: bool) -> None:
    """Apply the LoRA adapter of REV to its stored base model and commit the full model."""
    from mvc.lineage.bake import bake as bake_adapter

    result = bake_adapter(open_repo(), rev, adapter_path, message)
    if as_json:
        emit_json(vars(result))
        return
    click.echo(
        f"Baked {result.adapter or '.'}/ into {result.model} as {result.commit[:12]}: "
        f"{result.modules} LoRA modules applied, {result.replaced} full tensors replaced"
    )


@click.command("extract-lora")
@click.argument("rev")
@click.option("--base", "base_rev", required=True, help="The base model's commit.")
@click.option("--rank", type=int, required=True, help="LoRA rank of every module.")
@click.option(
    "-o", "--out", "out", type=click.Path(file_okay=False), required=True,
    help="Folder to write the adapter to (new or empty).",
)
@click.option("--embeddings", is_flag=True, help="Save changed embeddings as modules_to_save.")
@click.option("--fan-in-fan-out", is_flag=True, help="Weights are stored in × out (GPT-2 Conv1D).")
@click.option(
    "--svd", type=click.Choice(["auto", "exact", "randomized"]), default="auto",
    show_default=True, help="SVD method.",
)
@json_option()
def extract_lora(rev, base_rev, rank, out, embeddings, fan_in_fan_out, svd, as_json) -> None:
    """Write a PEFT LoRA adapter approximating REV's fine-tune of BASE (truncated SVD)."""
    from mvc.merge.extract_lora import extract_lora as extract

    result = extract(
        open_repo(), rev, base_rev, rank, Path(out), embeddings=embeddings,
        fan_in_fan_out=fan_in_fan_out, svd=svd,
    )
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"{'module':<48} {'rank':>4} {'rel. error':>10}  svd")
    for module, item in sorted(result.modules.items()):
        click.echo(f"{module:<48} {rank:>4} {item['error']:>10.4f}  {item['method']}")
    if result.saved:
        click.echo(f"modules_to_save: {', '.join(result.saved)}")
    if result.skipped:
        click.echo(
            f"skipped {len(result.skipped)} changed embedding tensor(s) (add --embeddings)"
        )
    click.echo(f"Wrote {result.folder} ({len(result.modules)} LoRA modules)")


CLICK_COMMANDS: tuple[click.Command, ...] = (bake, extract_lora)
