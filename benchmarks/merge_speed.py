"""Issue 3: wall time and peak RSS of ``mvc merge`` against ``mergekit-yaml``, same inputs.

A TIES merge of two fine-tunes against their base (density 0.2, weights 1), on the CPU,
each run a fresh process (start-up and torch import included, as a user pays them):

- the bundled MiniLM with two real fine-tunes (sentiment and topic toy tasks, 60 AdamW
  steps each), fp32;
- a synthetic BERT-shaped model of about 0.7 GB fp32 (0.17 GB with ``--quick``) whose two
  "fine-tunes" add small noise to every row.

mvc runs in two modes: its default three-way merge (tensors changed on one side only are
taken as they are) and ``--all-tensors --preset mergekit`` (every tensor through TIES, with
mergekit's arithmetic: the like-for-like comparison). Goal: at most 1/4 of mergekit's time
and at most 1/2 of its peak RSS.

Run: ``.venv/bin/python -m benchmarks.merge_speed [--quick]``.

``--llama`` runs issue 15's LLM-scale benchmark instead (``benchmarks/merge_llm.py``).

``--methods all`` (or a comma list) instead times every strategy against ``mergekit-yaml``
on the demo's first two MiniLM fine-tunes (``--synthetic``: on the synthetic model too): mvc merges with
``--all-tensors --preset mergekit`` where the strategy has that preset (its default
otherwise), and mergekit runs the YAML that ``mvc export --format mergekit`` writes for
that very merge, so both compute the same recipe. Goal (issue 17): each within 1/3 of
mergekit's wall time, with flat memory. The mvc-only methods (tsv, iso_c, iso_cts, pcb)
have no peer; their rows stand beside TIES's for scale.

``--memory`` checks "flat memory" for the methods that hold a whole tensor's inputs (SVD
or cross-branch statistics): mvc's peak RSS on synthetic models of about 128 MiB and
512 MiB (``--sizes``) with the same largest tensor (the 30522 x 1024 word embeddings), so
a flat peak means memory follows the largest tensor, not the model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from benchmarks.finetune import FineTune, base_model_dir, fine_tuned_dir
from benchmarks.measure import MIB, print_table
from benchmarks.merging import MODES, build_repo, mergekit_merge, mergekit_run, mvc_merge
from benchmarks.synthetic import shape_for, write_model

DENSITY = 0.2
TIME_GOAL = 0.25
RSS_GOAL = 0.5


def _goal(value: float, peer: float, goal: float) -> str:
    share = value / peer
    return f"{share:.2f} ({'met' if share <= goal else 'missed'} <= {goal:g})"


def bench_inputs(label: str, base: Path, a: Path, b: Path, work: Path) -> list[list[object]]:
    """One table block: mergekit, then each mvc mode, on the same three folders."""
    setup = build_repo(work, base, a, b)
    peer = mergekit_merge(work, base, a, b, DENSITY, "speed")
    rows: list[list[object]] = [
        [
            label,
            "mergekit-yaml",
            f"{peer.seconds:.1f}",
            f"{peer.peak_rss_mib:.0f}",
            f"{peer.peak_anon_mib:.0f}",
            "1",
            "1",
        ]
    ]
    for i, mode in enumerate(MODES):
        # A fresh copy each: a second merge into the same store would find objects written.
        fresh = work / f"mvc-repo-{i}"
        shutil.copytree(setup.root, fresh, symlinks=True)
        ours = mvc_merge(fresh, mode, DENSITY, f"speed-{i}")
        shutil.rmtree(fresh)
        rows.append(
            [
                label,
                mode.label,
                f"{ours.seconds:.1f}",
                f"{ours.peak_rss_mib:.0f}",
                f"{ours.peak_anon_mib:.0f}",
                _goal(ours.seconds, peer.seconds, TIME_GOAL),
                _goal(ours.peak_rss_mib, peer.peak_rss_mib, RSS_GOAL),
            ]
        )
    return rows


METHOD_TIME_GOAL = 1 / 3
SKIPPED = ("ours", "theirs")  # no arithmetic to time


def _exported_recipe(repo: Path, base: Path, a: Path, b: Path) -> dict:
    """mvc's own mergekit export of the merge at HEAD, pointed at the three folders."""
    from mvc.lineage.export import export
    from mvc.lineage.records import merge_record, parent_label
    from mvc.repo import Repo

    opened = Repo.open(repo)
    _, record = merge_record(opened, "HEAD")
    paths = {"base": str(base), parent_label(record, 0): str(a), parent_label(record, 1): str(b)}
    return yaml.safe_load(export(opened, "HEAD", "mergekit", paths))


def _has_int_tensors(folder: Path) -> bool:
    """Whether ``folder/model.safetensors`` holds integer tensors (BERT's position_ids)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "np") as f:
        return any("I" in str(f.get_slice(k).get_dtype()) for k in f.keys())


def bench_methods(
    label: str, names: list[str], base: Path, a: Path, b: Path, work: Path
) -> list[list[object]]:
    """Per strategy: mvc merge, then mergekit-yaml on its exported recipe (where it has one)."""
    from mvc.merge.strategies import get_strategy

    setup = build_repo(work, base, a, b)
    int_rules = _has_int_tensors(base)
    rows: list[list[object]] = []
    for i, name in enumerate(names):
        strategy = get_strategy(name)
        like = "mergekit" in strategy.presets and strategy.mergekit is not None
        mode = MODES[1] if like else MODES[0]
        fresh = work / f"mvc-repo-{i}"
        shutil.copytree(setup.root, fresh, symlinks=True)
        density = 0.5 if any(p.name == "density" for p in strategy.parameters) else None
        ours = mvc_merge(fresh, mode, density, f"method-{i}", name, int_rules)
        peer = None
        if like:
            peer = mergekit_run(work, _exported_recipe(fresh, base, a, b), f"method-{i}")
        shutil.rmtree(fresh)
        rows.append(
            [
                label,
                name,
                "mergekit" if like else "default",
                f"{ours.seconds:.1f}",
                f"{ours.peak_rss_mib:.0f}",
                f"{peer.seconds:.1f}" if peer else "—",
                f"{peer.peak_rss_mib:.0f}" if peer else "—",
                _goal(ours.seconds, peer.seconds, METHOD_TIME_GOAL) if peer else "no peer",
            ]
        )
    return rows


def main_methods(args: argparse.Namespace) -> int:
    from mvc.merge.strategies import strategies

    names = [s.name for s in strategies() if s.name not in SKIPPED]
    if args.methods != "all":
        names = [n for n in args.methods.split(",") if n]
    from benchmarks.merge_quality import branch_dir
    from mvc.demo.tasks import all_tasks
    from mvc.demo.train import STEPS, export_base

    print(f"merge speed per method: two branches, CPU, {os.cpu_count()} CPUs")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="mvc-bench-methods-") as tmp:
        work = Path(tmp)
        # The demo's first two fine-tunes (shared with merge_quality's cache).
        base = export_base(work / "base")
        a, b = (branch_dir(task, seed, STEPS, base) for seed, task in enumerate(all_tasks()[:2]))
        size = (a / "model.safetensors").stat().st_size / MIB
        minilm = work / "minilm"
        minilm.mkdir()
        rows += bench_methods(f"MiniLM real ({size:.0f} MiB)", names, base, a, b, minilm)
        shutil.rmtree(minilm)
        if args.synthetic:
            shape = shape_for((128 if args.quick else 700) * MIB)
            synth = work / "synthetic"
            models = [
                write_model(synth / n, shape, seed=1, variant=v)
                for v, n in enumerate(("base", "a", "b"))
            ]
            label = f"synthetic BERT ({shape.nbytes / MIB:.0f} MiB)"
            rows += bench_methods(label, names, *models, synth)
    print_table(
        "Merge per method: wall time and peak RSS, mvc vs mergekit-yaml (fresh process each)",
        [
            "inputs",
            "strategy",
            "mvc preset",
            "mvc s",
            "mvc RSS MiB",
            "mergekit s",
            "mergekit RSS MiB",
            "time / mergekit",
        ],
        rows,
    )
    return 0


WHOLE_TENSOR = ("tsv", "iso_c", "iso_cts", "model_stock", "sce", "karcher")


def main_memory(args: argparse.Namespace) -> int:
    """Peak RSS of each whole-tensor method at two model sizes (three-way default)."""
    names = list(WHOLE_TENSOR) if args.methods in (None, "all") else args.methods.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"merge memory per method: two branches, CPU, {os.cpu_count()} CPUs")
    peaks: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    labels = []
    for target in sizes:
        with tempfile.TemporaryDirectory(prefix="mvc-bench-methods-mem-") as tmp:
            work = Path(tmp)
            shape = shape_for(target * MIB)
            models = [
                write_model(work / n, shape, seed=1, variant=v)
                for v, n in enumerate(("base", "a", "b"))
            ]
            labels.append(f"{shape.nbytes / MIB:.0f} MiB")
            setup = build_repo(work, *models)
            for i, name in enumerate(names):
                ours = mvc_merge(setup.root, MODES[0], None, f"mem-{i}", strategy=name)
                peaks[name].append((ours.peak_rss_mib, ours.seconds))
    header = ["strategy"]
    for label in labels:
        header += [f"RSS MiB @ {label}", f"s @ {label}"]
    header.append("RSS large / small")
    rows = []
    for name, runs in peaks.items():
        row: list[object] = [name]
        for rss, secs in runs:
            row += [f"{rss:.0f}", f"{secs:.1f}"]
        row.append(f"{runs[-1][0] / runs[0][0]:.2f}")
        rows.append(row)
    print_table("Merge peak RSS at two model sizes, same largest tensor (mvc merge)", header, rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 0.17 GB synthetic model")
    parser.add_argument("--methods", default=None, help="time these strategies (or 'all')")
    parser.add_argument("--synthetic", action="store_true", help="--methods: synthetic too")
    parser.add_argument("--memory", action="store_true", help="whole-tensor methods' RSS")
    parser.add_argument("--sizes", default="128,512", help="--memory: model sizes in MiB")
    parser.add_argument("--llama", action="store_true", help="issue 15: LLM-scale merge/verify")
    parser.add_argument("--work", default=None, help="--llama: folder for models (deleted)")
    parser.add_argument("--layers", type=int, default=22, help="--llama: layers of the model")
    parser.add_argument("--small-layers", type=int, default=6, help="--llama: RSS comparison")
    parser.add_argument("--prepare", action="store_true", help="--llama: only build the inputs")
    args = parser.parse_args(argv)
    if args.llama:
        from benchmarks.merge_llm import main_llama

        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mvc-bench-llm-"))
        return main_llama(work, args.layers, args.small_layers, args.quick, args.prepare)
    if args.memory:
        return main_memory(args)
    if args.methods:
        return main_methods(args)
    base = base_model_dir()
    a = fine_tuned_dir(FineTune(task="sentiment"))
    b = fine_tuned_dir(FineTune(task="topic"))
    shape = shape_for((128 if args.quick else 700) * MIB)
    print(f"merge speed: TIES density {DENSITY}, two branches, CPU, {os.cpu_count()} CPUs")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="mvc-bench-merge-") as tmp:
        work = Path(tmp)
        size = (a / "model.safetensors").stat().st_size / MIB
        minilm = work / "minilm"
        minilm.mkdir()
        rows += bench_inputs(f"MiniLM real ({size:.0f} MiB)", base, a, b, minilm)
        shutil.rmtree(minilm)
        synth = work / "synthetic"
        models = [
            write_model(synth / name, shape, seed=1, variant=v)
            for v, name in enumerate(("base", "a", "b"))
        ]
        label = f"synthetic BERT ({shape.nbytes / MIB:.0f} MiB)"
        rows += bench_inputs(label, *models, synth)
    print_table(
        "Merge: wall time and peak RSS, mvc vs mergekit-yaml (fresh process each)",
        [
            "inputs",
            "tool",
            "wall s",
            "peak RSS MiB",
            "peak anon MiB",
            "time / mergekit",
            "RSS / mergekit",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
