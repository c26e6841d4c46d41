"""Lineage and audit commands: lineage, blame, verify, unmerge, extract, export."""

from __future__ import annotations

import click

from mvc.cli.output import emit_json, json_option, open_repo


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, where = value.partition("=")
        if not sep or not name or not where:
            raise click.UsageError(f"{option} takes NAME=PATH, got {value!r}")
        out[name] = where
    return out


@click.command()
@click.argument("rev", default="HEAD")
@click.option("--json", "fmt", flag_value="json", help="The graph as JSON.")
@click.option("--dot", "fmt", flag_value="dot", help="The graph as Graphviz DOT.")
@click.option("--mermaid", "fmt", flag_value="mermaid", help="The graph as a Mermaid flowchart.")
@click.option("-n", "--max-count", type=int, default=None, help="At most N commits.")
def lineage(rev: str, fmt: str | None, max_count: int | None) -> None:
    """The ancestry DAG of REV with each merge's recipe."""
    from mvc.lineage.graph import lineage_graph, render_graph, to_dot, to_mermaid

    graph = lineage_graph(open_repo(), rev, max_count)
    if fmt == "json":
        emit_json(graph.to_json())
    elif fmt == "dot":
        click.echo(to_dot(graph), nl=False)
    elif fmt == "mermaid":
        click.echo(to_mermaid(graph), nl=False)
    else:
        for line in render_graph(graph.nodes, _text_label):
            click.echo(line)


def _text_label(node) -> str:
    refs = (["HEAD"] if node.head else []) + node.branches
    parts = [node.id[:12]]
    if refs:
        parts.append("(" + ", ".join(refs) + ")")
    parts.append(node.summary)
    text = " ".join(parts)
    return f"{text}  [{node.line}]" if node.line else text


@click.command()
@click.argument("rev")
@click.argument("target", metavar="FILE::TENSOR")
@json_option()
def blame(rev: str, target: str, as_json: bool) -> None:
    """Per parent: the share of TENSOR's elements it gave the merge REV, and who changed it."""
    from mvc.lineage.blame import blame as run_blame

    report = run_blame(open_repo(), rev, target)
    if as_json:
        emit_json(report.to_json())
        return
    click.echo(f"{report.path}::{report.tensor} at {report.commit[:12]}: {report.action}")
    if report.strategy:
        click.echo(
            f"strategy {report.strategy}, {report.numel} elements, "
            f"{report.conflicts or 0} sign conflicts"
        )
    for side in report.sides:
        last = (
            f"last changed in {side.last_changed[:12]} {side.last_message}"
            if (side.last_changed)
            else "not present"
        )
        click.echo(f"  {side.index} {side.name:<16} {side.share:7.2%}  {last}")


@click.command()
@click.argument("rev", default="HEAD")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--tolerance",
    type=float,
    default=None,
    help="Max abs difference accepted on another device class than the merge's (1e-5).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@json_option()
@click.option("--fail-fast", is_flag=True, help="Stop at the first tensor that differs.")
def verify(
    rev: str, device: str, tolerance: float | None, quiet: bool, as_json: bool, fail_fast: bool
) -> None:
    """Recompute the merge REV from its record; exit 1 unless every hash matches."""
    from mvc.lineage.verify import DEFAULT_TOLERANCE
    from mvc.lineage.verify import verify as run_verify
    from mvc.progress import BarProgress

    report = run_verify(
        open_repo(),
        rev,
        device=device,
        tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
        progress=BarProgress(enabled=None if not quiet else False),
        fail_fast=fail_fast,
    )
    if as_json:
        emit_json(report.to_json())
    else:
        for m in report.mismatches:
            diff = f" (max abs diff {m.max_abs_diff:.3g})" if m.max_abs_diff is not None else ""
            click.echo(f"MISMATCH {m.where}: {m.reason}{diff}")
        for m in report.tolerated:
            click.echo(
                f"tolerated {m.where}: max abs diff {m.max_abs_diff:.3g} "
                f"(merged on {report.recorded_device}, verified on {report.device})"
            )
        verdict = "verified" if report.ok else "FAILED"
        if report.stopped:
            click.echo(f"FAILED: {report.commit[:12]}, stopped at the first mismatch")
            raise SystemExit(1)
        click.echo(
            f"{verdict}: {report.commit[:12]}, {report.resolved} resolved tensors recomputed, "
            f"{report.tensors} tensors in {report.files} files compared, "
            f"{len(report.mismatches)} mismatch(es)"
        )
    if not report.ok:
        raise SystemExit(1)


@click.command()
@click.argument("rev")
@click.option("--drop", "parent", required=True, help="The parent to drop: name, commit or index.")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@json_option()
def unmerge(rev, parent, message, device, quiet, as_json):
    """Recompute the merge REV without PARENT and commit it on top of REV."""
    from mvc.lineage.unmerge import unmerge as run_unmerge
    from mvc.progress import BarProgress

    result = run_unmerge(
        open_repo(),
        rev,
        parent,
        message=message,
        device=device,
        progress=BarProgress(enabled=None if not quiet else False),
    )
    if as_json:
        emit_json(vars(result))
        return
    what = {
        "recomputed": f"recomputed from {', '.join(result.remaining)}",
        "parent": f"{result.remaining[0]}'s model" if result.remaining else "",
        "base": "the base's model",
    }[result.result]
    click.echo(
        f"[{result.commit[:12]}] unmerged {result.dropped_name} from "
        f"{result.unmerge_of[:12]}: {what}"
    )


@click.command()
@click.argument("rev")
@click.argument("parent")
@click.option(
    "-o", "--output", "out_dir", default=None, help="Folder to write (default: extract-PARENT)."
)
@click.option("--commit", "branch", default=None, help="Also commit it as branch NAME.")
@json_option()
def extract(rev, parent, out_dir, branch, as_json):
    """Rebuild PARENT's weights from the merge REV and its stored masks."""
    from mvc.lineage.extract import extract as run_extract

    repo = open_repo()
    result = run_extract(repo, rev, parent, out_dir=out_dir, branch=branch)
    if as_json:
        emit_json(result.to_json())
        return
    where = [str(result.out_dir)] if result.out_dir else []
    if result.commit:
        where.append(f"branch {branch} ({result.commit[:12]})")
    click.echo(
        f"extracted {result.parent_name} from {result.merge[:12]} into {' and '.join(where)}: "
        f"{result.reconstructed} tensors rebuilt from masks, {result.exact} taken exactly"
    )
    if result.relative_l2 is not None:
        click.echo(f"relative L2 error against {result.parent_name}: {result.relative_l2:.3e}")
    else:
        click.echo(f"{result.parent_name}'s weights are not stored; error not measured")


@click.command()
@click.argument("rev", default="HEAD")
@click.option("--format", "fmt", type=click.Choice(["mergekit", "model-card"]), required=True)
@click.option(
    "--model-path",
    "paths",
    multiple=True,
    help="NAME=PATH: where parent NAME (or `base`) is checked out / published.",
)
@click.option("-o", "--output", default=None, help="Write to this file instead of stdout.")
def export(rev, fmt, paths, output):
    """The merge REV as a mergekit YAML or Hugging Face model-card metadata."""
    from mvc.lineage.export import export as run_export

    text = run_export(open_repo(), rev, fmt, _pairs(paths, "--model-path"))
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        click.echo(text, nl=False)


CLICK_COMMANDS: tuple[click.Command, ...] = (lineage, blame, verify, unmerge, extract, export)
