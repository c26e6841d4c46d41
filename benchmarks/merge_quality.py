"""Issue 17: merge quality of every strategy at its defaults, on the demo's three MiniLM tasks.

The demo's protocol (``mvc/demo/evaluate.py``): three branches of the bundled MiniLM, each
fine-tuned on one of the demo tasks (sentiment, agent, order; seeds 0-2, the demo's steps
and learning rates), are merged by each strategy with its documented default parameters
(two-branch strategies merge the first two tasks only); the merged encoder is scored on
each task with that task's branch head, and the base with a linear probe. The figure is the
gain kept, (acc(merged) − acc(base)) / (acc(branch) − acc(base)), per task and on average.

The fine-tunes are cached under ``~/.cache/mvc-bench/demo-tasks`` (``MVC_BENCH_CACHE``), so a
rerun costs only the merges and the scoring.

Run: ``.venv/bin/python -m benchmarks.merge_quality [--methods ties,della] [--steps 60]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.finetune import CACHE_ROOT
from benchmarks.measure import print_table

MODEL_FILE = "model.safetensors"
SKIPPED = ("ours", "theirs")  # they pick one side: nothing to measure


def branch_dir(task, seed: int, steps: int, base: Path) -> Path:
    """The cached fine-tune of ``task`` (trained once per recipe)."""
    from mvc.demo.train import fine_tune

    out = CACHE_ROOT / "demo-tasks" / f"{task.name}-seed{seed}-steps{steps}"
    if not (out / MODEL_FILE).exists():
        scratch = out.with_name(out.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        fine_tune(base, task, scratch, steps=steps, seed=seed, progress=False)
        scratch.rename(out)
    return out


def build_repo(work: Path, steps: int):
    """A repository: main = the base, one branch per demo task; the heads and the tasks."""
    from mvc.demo.tasks import all_tasks
    from mvc.demo.train import export_base, head_path, load_head
    from mvc.repo import Repo

    tasks = all_tasks()
    base = export_base(work / "base")
    repo = Repo.init(work / "repo")
    shutil.copytree(base, repo.root / "model")
    repo.add([repo.root / "model"])
    repo.commit("base")
    heads = {}
    for seed, task in enumerate(tasks):
        src = branch_dir(task, seed, steps, base)
        repo.switch(task.name, create=True, start="main")
        shutil.copyfile(src / MODEL_FILE, repo.root / "model" / MODEL_FILE)
        repo.commit(f"{task.name} fine-tune", all=True)
        heads[task.name] = load_head(head_path(src, task.name))
    repo.switch("main")
    return repo, tasks, heads


def score_rows(repo, tasks, heads) -> tuple[dict[str, float], dict[str, float]]:
    """Base accuracy (linear probe) and each branch's accuracy on its own task."""
    from mvc.demo.evaluate import accuracy, linear_probe

    base_state = repo.load_state_dict("main", f"model/{MODEL_FILE}")
    base_row = {t.name: accuracy(base_state, linear_probe(base_state, t), t) for t in tasks}
    branch_row = {
        t.name: accuracy(repo.load_state_dict(t.name, f"model/{MODEL_FILE}"), heads[t.name], t)
        for t in tasks
    }
    return base_row, branch_row


def quality(repo, tasks, heads, base_row, branch_row, label, strategy, params):
    """One table row: the merge of the branches by ``strategy``, scored on its tasks."""
    from mvc.demo.evaluate import accuracies, gain_retention
    from mvc.merge import MergeOptions, MergeParams, merge
    from mvc.merge.strategies import get_strategy

    top = get_strategy(strategy).max_branches or len(tasks)
    merged_tasks = tasks[: min(top, len(tasks))]
    repo.switch(f"q-{label}".replace(" ", "-").replace(",", ""), create=True, start="main")
    started = time.perf_counter()
    options = MergeOptions(strategy=strategy, params=MergeParams(**params))
    sha = merge(repo, [t.name for t in merged_tasks], options).commit
    seconds = time.perf_counter() - started
    state = repo.load_state_dict(sha, f"model/{MODEL_FILE}")
    row = accuracies(state, heads, merged_tasks)
    kept = [
        gain_retention(base_row[t.name], branch_row[t.name], row[t.name]) for t in merged_tasks
    ]
    cells = {t.name: f"{k:.2f}" for t, k in zip(merged_tasks, kept, strict=True)}
    repo.switch("main")
    return [
        label,
        *(cells.get(t.name, "—") for t in tasks),
        f"{sum(kept) / len(kept):.2f}",
        f"{seconds:.1f}",
    ]


def main(argv: list[str] | None = None) -> int:
    from mvc.demo.train import STEPS
    from mvc.merge.strategies import strategies

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=None, help="comma-separated strategies (all)")
    parser.add_argument("--steps", type=int, default=STEPS, help="fine-tuning steps per task")
    args = parser.parse_args(argv)
    names = [s.name for s in strategies() if s.name not in SKIPPED]
    if args.methods:
        names = [n for n in args.methods.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="mvc-bench-quality-") as tmp:
        repo, tasks, heads = build_repo(Path(tmp), args.steps)
        base_row, branch_row = score_rows(repo, tasks, heads)
        print_table(
            "Accuracy of the base (linear probe) and of each branch on its own task",
            ["model", *(t.name for t in tasks)],
            [
                ["base", *(f"{base_row[t.name]:.3f}" for t in tasks)],
                ["branch", *(f"{branch_row[t.name]:.3f}" for t in tasks)],
            ],
        )
        rows = []
        for name in names:  # each row printed as it comes: the whole table takes minutes
            rows.append(quality(repo, tasks, heads, base_row, branch_row, name, name, {}))
            print(" | ".join(map(str, rows[-1])), flush=True)
        if not args.methods:  # the demo's own recipe, for reference
            rows.append(
                quality(
                    repo, tasks, heads, base_row, branch_row,
                    "ties, λ 1.5 (the demo)", "ties", {"lambda_": 1.5},
                )
            )
    print_table(
        "Gain kept per task (1 = the branch's own accuracy, 0 = the base's), defaults",
        ["strategy", *(t.name for t in tasks), "average", "merge s"],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
