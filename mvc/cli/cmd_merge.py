"""`mvc merge`: parse the recipe, call `mvc.merge.merge`, print what happened."""

from __future__ import annotations

import click

from mvc.cli.output import choice_option, emit_json, json_option, open_repo
from mvc.merge.strategies import PARAMETERS, STRATEGY_NAMES, strategies


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


def _default_text(param) -> str:
    if param.default is None:
        return param.unset
    return f"{param.default:g}" if isinstance(param.default, float) else str(param.default)


def _param_option(param):
    """The `mvc merge` option of one declared parameter; every default is None (not given),
    so MergeParams fills the declared default and validates what was given."""
    users = [s.name for s in strategies() if param in s.parameters]
    where = f"; {', '.join(users)}" if users and len(users) < len(strategies()) else ""
    text = f"{param.help} [{param.range_text()}; default: {_default_text(param)}{where}]"
    if param.kind is bool:
        negative = "--no-" + param.option.removeprefix("--")
        return click.option(f"{param.option}/{negative}", param.name, default=None, help=text)
    if param.per_branch:
        kind = str if param.by_name else param.kind
        return click.option(param.option, param.name, type=kind, multiple=True, help=text)
    kind = click.Choice(param.choices) if param.choices else param.kind
    if param.size > 1:
        kind = str  # "A,B": MergeParams splits and checks it
    return click.option(param.option, param.name, type=kind, default=None, help=text)


def _list_strategies(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    for strategy in strategies():
        click.echo(f"{strategy.name}: {strategy.summary}")
        click.echo(f"    {strategy.formula}")
        most = "" if strategy.max_branches is None else f", at most {strategy.max_branches}"
        presets = ", ".join(p for p in strategy.presets if p) or "none"
        base = "reads the merge base" if strategy.needs_base else "ignores the merge base"
        click.echo(
            f"    branches: at least {strategy.min_branches}{most}; {base}; presets: {presets}; "
            f"mergekit: {strategy.mergekit or 'none'}"
        )
        for param in strategy.parameters:
            scope = "per branch" if param.per_branch else "global"
            click.echo(
                f"    {param.option} ({scope}, {param.range_text()}, "
                f"default {_default_text(param)}): {param.help}"
            )
    ctx.exit(0)


def merge_options(f):
    """The recipe options shared by `merge` and `pull`: the strategy, one option per
    declared parameter (mvc.merge.strategies.PARAMETERS), and the merge's own switches."""
    decorators = [
        click.option(
            "--strategy",
            "-s",
            default="ties",
            show_default=True,
            help=", ".join(STRATEGY_NAMES) + " (see --list-strategies).",
        ),
        *(_param_option(p) for p in PARAMETERS.values()),
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
        choice_option(
            "--layout", ["ours", "theirs"], "Whose shard layout a model folder is written in."
        ),
        click.option(
            "--max-shard-size",
            default=None,
            help="Write model folders in shards of at most this size (40MB, 5GB, bytes).",
        ),
        click.option(
            "--adapter-rank",
            type=int,
            default=None,
            help="LoRA output rank (default: largest input).",
        ),
        choice_option(
            "--adapter-combine",
            ["svd", "cat"],
            "Write merged LoRA modules by truncated SVD, or concatenate (linear rules).",
        ),
        choice_option(
            "--into",
            ["adapter", "model"],
            "Merged LoRA adapters as an adapter, or baked into the stored base model.",
        ),
        choice_option(
            "--adapter-svd",
            ["auto", "exact", "randomized"],
            "SVD for LoRA write-back (auto: randomized when the rank is small for the module).",
        ),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def build_options(message, no_commit, no_ff, **kw):
    from mvc.formats.hf import parse_size
    from mvc.merge import MergeOptions, MergeParams
    from mvc.merge.adapter_plan import AdapterOptions
    from mvc.merge.planner import load_rules

    given = {}
    weights = None
    for param in PARAMETERS.values():
        value = kw[param.name]
        if param.by_name:
            weights = parse_weights(value)
        elif param.per_branch:
            if value:
                given[param.name] = value[0] if len(value) == 1 else tuple(value)
        elif value is not None:
            given[param.name] = value
    return MergeOptions(
        strategy=kw["strategy"],
        params=MergeParams(**given),
        weights=weights,
        rules=load_rules(kw["config_path"]) if kw["config_path"] else (),
        all_tensors=kw["all_tensors"],
        device=kw["device"],
        masks=not kw["no_masks"],
        message=message,
        commit=not no_commit,
        fast_forward=not no_ff,
        base=kw["base_rev"],
        allow_locked=kw["allow_locked"],
        layout=kw["layout"],
        max_shard_size=parse_size(kw["max_shard_size"]) if kw["max_shard_size"] else None,
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


def _epilog() -> str:
    """The strategies, one line each, under `mvc merge --help` (click keeps \b blocks as written)."""
    lines = [f"  {s.name}: {s.summary}" for s in strategies()]
    return "\b\nStrategies (formulas and parameters: --list-strategies):\n" + "\n".join(lines)


@click.command(epilog=_epilog())
@click.argument("branches", nargs=-1, required=True)
@click.option("-m", "--message", default=None, help="Merge commit message.")
@click.option("--no-commit", is_flag=True, help="Stage the result; commit it yourself.")
@click.option(
    "--no-ff", is_flag=True, help="Make a merge commit even when fast-forward is possible."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@json_option()
@click.option(
    "--list-strategies",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_list_strategies,
    help="List every strategy with its formula and parameters, and exit.",
)
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


CLICK_COMMANDS: tuple[click.Command, ...] = (merge,)
