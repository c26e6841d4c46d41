"""`mvc merge`: parse the recipe, call `mvc.merge.merge`, print what happened."""

from __future__ import annotations

import click

from mvc.cli.output import emit_json, open_repo


def parse_weights(values: tuple[str, ...]) -> dict[str, float] | list[float] | None:
    """`--weight 0.7 --weight 0.3` (in branch order) or `--weight math=0.7` (by name)."""
    if not values:
        return None
    named = ["=" in v for v in values]
    if any(named) and not all(named):
        raise click.UsageError("give every --weight as NAME=W, or none of them")
    try:
        if all(named):
            return {k: float(w) for k, w in (v.split("=", 1) for v in values)}
        return [float(v) for v in values]
    except ValueError:
        raise click.UsageError(f"--weight takes numbers, got {' '.join(values)}") from None


def merge_options(f):
    """The recipe options shared by `merge` and `pull`."""
    decorators = [
        click.option(
            "--strategy",
            "-s",
            default="ties",
            show_default=True,
            help="ties, consensus, task_arithmetic, linear, dare_ties, dare_linear, "
            "breadcrumbs, slerp, ours, theirs.",
        ),
        click.option(
            "--preset",
            type=click.Choice(["mergekit", "peft", "paper"]),
            default=None,
            help="Reproduce a trusted tool's arithmetic exactly.",
        ),
        click.option(
            "--density",
            type=float,
            multiple=True,
            help="Kept fraction (TIES trim, DARE keep, breadcrumbs β); once or per branch.",
        ),
        click.option(
            "--weight",
            "weights",
            multiple=True,
            help="Branch weight: W per branch in order, or NAME=W.",
        ),
        click.option(
            "--lambda",
            "lambda_",
            type=float,
            default=1.0,
            show_default=True,
            help="Scale of the merged task vector.",
        ),
        click.option("--k", type=int, default=None, help="Consensus: keep elements in ≥ k masks."),
        click.option(
            "--tall-lambda",
            type=float,
            multiple=True,
            help="TALL mask λ (consensus and lineage masks); once or per branch.",
        ),
        click.option(
            "--alpha",
            type=float,
            default=1.0,
            show_default=True,
            help="Consensus: scale of the kept multi-task vector.",
        ),
        click.option(
            "--on",
            "consensus_on",
            type=click.Choice(["sum", "ties"]),
            default="sum",
            help="Consensus: τ_MTL from the sum or from the TIES merge.",
        ),
        click.option(
            "--gamma",
            type=float,
            default=0.01,
            show_default=True,
            help="Breadcrumbs: fraction of largest |τ| dropped.",
        ),
        click.option(
            "--t",
            "slerp_t",
            type=float,
            default=0.5,
            show_default=True,
            help="Slerp interpolation factor.",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="DARE seed."),
        click.option(
            "--config",
            "config_path",
            type=click.Path(exists=True, dir_okay=False),
            help="YAML rules: per-tensor-glob strategy and parameters.",
        ),
        click.option(
            "--all-tensors",
            is_flag=True,
            help="Send every tensor through the strategy (mergekit parity).",
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."
        ),
        click.option("--no-masks", is_flag=True, help="Do not store TALL masks in the record."),
        click.option("--base", "base_rev", default=None, help="Merge base (for criss-cross)."),
        click.option("--allow-locked", is_flag=True, help="Merge MergeLock'ed commits anyway."),
        click.option(
            "--adapter-rank", type=int, default=None, help="LoRA output rank (default: largest input)."
        ),
        click.option(
            "--adapter-combine",
            type=click.Choice(["svd", "cat"]),
            default="svd",
            show_default=True,
            help="Write merged LoRA modules by truncated SVD, or concatenate (linear rules).",
        ),
        click.option(
            "--into",
            type=click.Choice(["adapter", "model"]),
            default="adapter",
            show_default=True,
            help="Merged LoRA adapters as an adapter, or baked into the stored base model.",
        ),
        click.option(
            "--adapter-svd",
            type=click.Choice(["auto", "exact", "randomized"]),
            default="auto",
            show_default=True,
            help="SVD for LoRA write-back (auto: randomized when the rank is small for the module).",
        ),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def build_options(message, no_commit, no_ff, **kw):
    from mvc.merge import MergeOptions, MergeParams
    from mvc.merge.adapter_plan import AdapterOptions
    from mvc.merge.planner import load_rules

    def once_or_many(values, default):
        if not values:
            return default
        return values[0] if len(values) == 1 else tuple(values)

    params = MergeParams(
        density=once_or_many(kw["density"], 1.0),
        lambda_=kw["lambda_"],
        k=kw["k"],
        tall_lambdas=once_or_many(kw["tall_lambda"], 0.4),
        alpha=kw["alpha"],
        gamma=kw["gamma"],
        t=kw["slerp_t"],
        seed=kw["seed"],
        preset=kw["preset"],
        on=kw["consensus_on"],
    )
    return MergeOptions(
        strategy=kw["strategy"],
        params=params,
        weights=parse_weights(kw["weights"]),
        rules=load_rules(kw["config_path"]) if kw["config_path"] else (),
        all_tensors=kw["all_tensors"],
        device=kw["device"],
        masks=not kw["no_masks"],
        message=message,
        commit=not no_commit,
        fast_forward=not no_ff,
        base=kw["base_rev"],
        allow_locked=kw["allow_locked"],
        adapter=AdapterOptions(
            combine=kw["adapter_combine"],
            rank=kw["adapter_rank"],
            into=kw["into"],
            svd=kw["adapter_svd"],
        ),
    )


def report(result, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "commit": result.commit,
                "base": result.base,
                "parents": result.parents,
                "fast_forward": result.fast_forward,
                "up_to_date": result.up_to_date,
                "resolved": result.resolved,
                "taken": result.taken,
            }
        )
        return
    if result.up_to_date:
        click.echo("Already up to date.")
    elif result.fast_forward:
        click.echo(f"Fast-forward to {result.commit[:12]}")
    elif result.commit is None:
        click.echo(
            f"Merge staged, not committed ({result.resolved} tensors resolved); "
            "run `mvc commit -m MSG` to finish"
        )
    else:
        click.echo(
            f"Merged into {result.commit[:12]}: {result.resolved} tensors resolved by "
            f"arithmetic, {result.taken} taken from one side (base {result.base[:12]})"
        )
        for folder, entry in (result.record or {}).get("adapters", {}).get("folders", {}).items():
            modules = entry.get("modules", {}).values()
            merged = [m for m in modules if m.get("action") == "resolve"]
            worst = max((m.get("error", 0.0) for m in merged), default=0.0)
            click.echo(
                f"Adapter {folder or '.'}/: {len(merged)} LoRA modules merged in weight space "
                f"(largest relative reconstruction error {worst:.2e})"
            )


@click.command()
@click.argument("branches", nargs=-1, required=True)
@click.option("-m", "--message", default=None, help="Merge commit message.")
@click.option("--no-commit", is_flag=True, help="Stage the result; commit it yourself.")
@click.option(
    "--no-ff", is_flag=True, help="Make a merge commit even when fast-forward is possible."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@merge_options
def merge(branches, message, no_commit, no_ff, quiet, as_json, **kw):
    """Three-way parameter merge of BRANCHES into HEAD."""
    from mvc.merge import merge as run_merge
    from mvc.progress import BarProgress

    options = build_options(message, no_commit, no_ff, **kw)
    result = run_merge(
        open_repo(),
        list(branches),
        options,
        progress=BarProgress(enabled=None if not quiet else False),
    )
    report(result, as_json)


def register(group: click.Group) -> None:
    group.add_command(merge)
