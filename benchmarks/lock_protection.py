"""Issue 14: how much of a locked branch's task survives a merge, per task and method.

Protocol, declared before the run that fills docs/mergelock.md (nothing here was chosen on
the test split):

- **Fine-tunes.** Real fine-tunes of the bundled MiniLM, each with its own head, by the
  demo's recipe (``mvc.demo.train``: AdamW lr 1e-4, head lr 2e-3, batch 16, no weight
  decay) and the demo's seeds (the task's index). Tasks: the demo's three (sentiment, agent,
  order) and ``comparison`` (seed 3). Steps per task in ``STEPS``: the demo's 60, except
  where 60 steps did not learn the task on a validation split (fine-tuned on 300 of the 400
  training sentences, scored on the other 100; the test split never looked at): only
  ``comparison``, which stays at chance after 60 steps and learns in 240. On the same
  validation split every two-task linear merge of these fine-tunes kept ≥ 93% of each gain.
  The fine-tunes are shared with ``benchmarks.merge_quality``'s cache
  (``~/.cache/mvc-bench/demo-tasks``).
- **Merges.** For each task T, the T branch is locked at the default level (``--reads-hidden
  'heads/*'``: its head is locked with it) and merged into the next task's branch; the same
  merge of the unlocked T branch is the control. Methods at the parameters users run them
  with: TIES at densities 0.2 and 0.5 and DARE-TIES at 0.5 (λ 1, mergekit's default), task
  arithmetic at mergekit's default λ 1 (weight 1 per model), linear with equal weights (the
  model soup; λ 0.5 task arithmetic is the same merge, so it is not a row of its own).
- **Score.** T's accuracy gain over the base encoder (a linear probe on frozen base
  features) kept by the merged encoder, ``(merged - base) / (branch - base)`` on T's test
  split; for the locked merge the larger of the scores with the original head and with the
  head the locked branch ships, so neither choice flatters the lock. The partner's gain
  kept is reported beside it (a merge that keeps T but loses the partner's task is the
  locked model, not a merge). A task whose fine-tune gains less than ``MIN_GAIN`` on the
  test split is left out and said so (a gain kept is a ratio over the gain).
- **Goal** (issue 14): locked ≤ 5% of T's gain kept, control ≥ 90%, for every task and method.

Run: ``.venv/bin/python -m benchmarks.lock_protection [--tasks sentiment agent] [--methods ...]``
(four tasks, five methods: 40 merges and 80 evaluations).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL = "model/model.safetensors"
METHODS = {
    "TIES 0.2": ("ties", {"density": 0.2}),
    "TIES 0.5": ("ties", {"density": 0.5}),
    "task arithmetic": ("task_arithmetic", {}),
    "linear": ("linear", {}),
    "DARE-TIES 0.5": ("dare_ties", {"density": 0.5}),
}
TASKS = ("sentiment", "agent", "order", "comparison")
STEPS = {"sentiment": 60, "agent": 60, "order": 60, "comparison": 240}
MIN_GAIN = 0.1  # accuracy points a fine-tune must gain over the base probe to be measured


@dataclass
class Bench:
    """A repository with the base on main and one fine-tuned branch per task, scored."""

    repo: Any
    key: Path
    tasks: list
    heads: dict = field(default_factory=dict)
    base: dict[str, float] = field(default_factory=dict)
    branch: dict[str, float] = field(default_factory=dict)
    merges: int = 0

    def pairs(self) -> list[tuple[Any, Any]]:
        """(locked task, partner): each task is merged into the next task's branch."""
        return [(t, self.tasks[(i + 1) % len(self.tasks)]) for i, t in enumerate(self.tasks)]

    def merged(self, source: str, partner: str, method: str) -> dict:
        """The encoder of ``source`` merged into ``partner``'s branch by ``method``."""
        from mvc.merge import MergeOptions, MergeParams, merge

        strategy, params = METHODS[method]
        self.merges += 1
        self.repo.switch(f"m{self.merges}-{source}-{partner}-{strategy}", create=True, start=partner)
        options = MergeOptions(strategy=strategy, params=MergeParams(**params), allow_locked=True)
        merge(self.repo, [source], options)
        return self.repo.load_state_dict("HEAD", MODEL)

    def kept(self, merged: dict, task: Any, heads: list) -> float:
        """The share of ``task``'s gain ``merged`` keeps, with the best of ``heads``."""
        from mvc.demo.evaluate import accuracy, gain_retention

        name = task.name
        return max(
            gain_retention(self.base[name], self.branch[name], accuracy(merged, h, task))
            for h in heads
        )

    def partner_kept(self, merged: dict, partner: Any) -> float:
        return self.kept(merged, partner, [self.heads[partner.name]])


def setup(work: Path, names: list[str]) -> Bench:
    """Base on main, one cached fine-tune per task on its branch; tasks that did not learn
    are dropped (said so on stdout)."""
    from benchmarks.merge_quality import MODEL_FILE, branch_dir
    from mvc.demo.evaluate import accuracy, linear_probe
    from mvc.demo.tasks import EXTRA_TASK_NAMES, TASK_NAMES, make_task
    from mvc.demo.train import export_base, head_path, load_head
    from mvc.lock import keygen
    from mvc.repo import Repo

    order = list(TASK_NAMES + EXTRA_TASK_NAMES)
    base_dir = export_base(work / "base")
    repo = Repo.init(work / "repo")
    shutil.copytree(base_dir, repo.root / "model")
    repo.add([repo.root / "model"])
    repo.commit("base")
    key = work / "bench.key"
    keygen(key)
    bench = Bench(repo, key, [])
    base_state = repo.load_state_dict("main", MODEL)
    for name in names:
        task = make_task(name)
        src = branch_dir(task, order.index(name), STEPS[name], base_dir)
        repo.switch(name, create=True, start="main")
        shutil.copyfile(src / MODEL_FILE, repo.root / "model" / MODEL_FILE)
        (repo.root / "model" / "heads").mkdir(exist_ok=True)
        shutil.copyfile(head_path(src, name), head_path(repo.root / "model", name))
        repo.add([repo.root / "model"])
        repo.commit(f"{name} fine-tune")
        bench.heads[name] = load_head(head_path(src, name))
        bench.base[name] = accuracy(base_state, linear_probe(base_state, task), task)
        bench.branch[name] = accuracy(repo.load_state_dict("HEAD", MODEL), bench.heads[name], task)
        if bench.branch[name] - bench.base[name] < MIN_GAIN:
            print(f"{name}: the fine-tune scores {bench.branch[name]:.2f} against the base's "
                  f"{bench.base[name]:.2f}; left out (a gain of {MIN_GAIN} is needed)", flush=True)
            continue
        bench.tasks.append(task)
    if len(bench.tasks) < 2:
        raise SystemExit("fewer than two tasks learned: nothing to merge")
    return bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)
    if len(args.tasks) < 2:
        parser.error("need at least two tasks: the locked branch is merged with another")
    from mvc.demo.train import Head
    from mvc.lock import lock_commit

    rows = []
    with tempfile.TemporaryDirectory(prefix="mvc-bench-lock-") as tmp:
        bench = setup(Path(tmp), args.tasks)
        repo = bench.repo
        for task, partner in bench.pairs():
            name = task.name
            repo.switch(f"{name}-locked", create=True, start=name)
            lock_commit(repo, "HEAD", bench.key, reads_hidden=["heads/*"])
            shipped = repo.load_state_dict("HEAD", f"model/heads/{name}.safetensors")
            locked_head = Head(name, task.labels, shipped["weight"], shipped["bias"])
            for method in args.methods:
                kept = {}
                for label, source in (("plain", name), ("locked", f"{name}-locked")):
                    merged = bench.merged(source, partner.name, method)
                    heads = [bench.heads[name]] + ([locked_head] if label == "locked" else [])
                    kept[label] = bench.kept(merged, task, heads)
                    kept[f"{label} partner"] = bench.partner_kept(merged, partner)
                rows.append((name, partner.name, method, kept))
                print(
                    f"{name} + {partner.name}, {method}: plain {kept['plain']:.0%}, "
                    f"locked {kept['locked']:.0%}; partner's task kept: plain "
                    f"{kept['plain partner']:.0%}, locked {kept['locked partner']:.0%}",
                    flush=True,
                )
    print(
        "\n| locked task (base → branch) | merged with | method | gain kept, no lock | "
        "gain kept, locked | partner's gain kept, no lock / locked |"
    )
    print("|---|---|---|---|---|---|")
    for name, partner, method, kept in rows:
        print(
            f"| {name} ({bench.base[name]:.2f} → {bench.branch[name]:.2f}) | {partner} | "
            f"{method} | {kept['plain']:.0%} | {kept['locked']:.0%} | "
            f"{kept['plain partner']:.0%} / {kept['locked partner']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
