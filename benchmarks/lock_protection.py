"""Issue 14: how much of a locked branch's task survives a merge, per task and method.

Real fine-tunes of the bundled MiniLM on the demo's tasks (sentiment, agent, order) and one
more (comparison), each with its own head, as the demo trains them. For each task T, the T
branch is locked at the default level (``--reads-hidden 'heads/*'``: its head is locked with
it) and merged into the next task's branch with each method; the same merge without the lock
is the control. Score: T's accuracy gain over the base encoder (a linear probe on frozen
base features) kept by the merged encoder, ``(merged - base) / (branch - base)``; for the
locked merge the larger of the scores with the original head and with the head the locked
branch ships, so neither choice flatters the lock.

Run: ``.venv/bin/python -m benchmarks.lock_protection [--tasks sentiment agent] [--steps 60]``
(four tasks, five methods: about 40 merges and 80 evaluations).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

MODEL = "model/model.safetensors"
METHODS = {
    "TIES 0.2": ("ties", {"density": 0.2}),
    "TIES 0.5": ("ties", {"density": 0.5}),
    "task arithmetic": ("task_arithmetic", {}),
    "linear": ("linear", {}),
    "DARE-TIES 0.5": ("dare_ties", {"density": 0.5}),
}
TASKS = ("sentiment", "agent", "order", "comparison")
MIN_GAIN = 0.1  # accuracy points a fine-tune must gain over the base probe to be measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--steps", type=int, default=60, help="fine-tune steps per branch")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)
    from mvc.demo.evaluate import accuracy, gain_retention, linear_probe
    from mvc.demo.tasks import make_task
    from mvc.demo.train import Head, export_base, fine_tune, head_path, load_head
    from mvc.lock import keygen, lock_commit
    from mvc.merge import MergeOptions, MergeParams, merge
    from mvc.repo import Repo

    tasks = [make_task(name) for name in args.tasks]
    if len(tasks) < 2:
        parser.error("need at least two tasks: the locked branch is merged with another")
    with tempfile.TemporaryDirectory(prefix="mvc-bench-lock-") as tmp:
        root = Path(tmp) / "repo"
        repo = Repo.init(root)
        export_base(root / "model")
        repo.add([root / "model"])
        repo.commit("base")
        heads, base, branch = {}, {}, {}
        base_state = repo.load_state_dict("main", MODEL)
        for task in tasks:
            base[task.name] = accuracy(base_state, linear_probe(base_state, task), task)
            repo.switch(task.name, create=True, start="main")
            fine_tune(root / "model", task, root / "model", steps=args.steps, progress=False)
            heads[task.name] = load_head(head_path(root / "model", task.name))
            repo.add([root / "model"])
            repo.commit(f"{task.name} fine-tune")
            branch[task.name] = accuracy(repo.load_state_dict("HEAD", MODEL), heads[task.name], task)
        unlearned = [t.name for t in tasks if branch[t.name] - base[t.name] < MIN_GAIN]
        if unlearned:  # a gain kept is a ratio over the gain: without one it measures nothing
            for name in unlearned:
                print(f"{name}: the fine-tune scores {branch[name]:.2f} against the base's "
                      f"{base[name]:.2f}; left out (a gain of {MIN_GAIN} is needed)", flush=True)
            tasks = [t for t in tasks if t.name not in unlearned]
            if len(tasks) < 2:
                raise SystemExit("fewer than two tasks learned: raise --steps")
        key = Path(tmp) / "bench.key"
        keygen(key)
        rows = []
        for i, task in enumerate(tasks):
            partner = tasks[(i + 1) % len(tasks)].name
            repo.switch(f"{task.name}-locked", create=True, start=task.name)
            lock_commit(repo, "HEAD", key, reads_hidden=["heads/*"])
            shipped = repo.load_state_dict("HEAD", f"model/heads/{task.name}.safetensors")
            locked_head = Head(task.name, task.labels, shipped["weight"], shipped["bias"])
            for method in args.methods:
                strategy, params = METHODS[method]
                kept = {}
                for label, source in (("plain", task.name), ("locked", f"{task.name}-locked")):
                    repo.switch(f"{task.name}-{label}-{strategy}-{len(rows)}", create=True, start=partner)
                    options = MergeOptions(
                        strategy=strategy, params=MergeParams(**params), allow_locked=True
                    )
                    merge(repo, [source], options)
                    merged = repo.load_state_dict("HEAD", MODEL)
                    used = [heads[task.name]] + ([locked_head] if label == "locked" else [])
                    kept[label] = max(
                        gain_retention(base[task.name], branch[task.name], accuracy(merged, h, task))
                        for h in used
                    )
                rows.append((task.name, partner, method, kept["plain"], kept["locked"]))
                print(f"{task.name} + {partner}, {method}: plain {kept['plain']:.0%}, "
                      f"locked {kept['locked']:.0%}", flush=True)
    print("\n| locked task (base → branch) | merged with | method | gain kept, no lock | gain kept, locked |")
    print("|---|---|---|---|---|")
    for name, partner, method, plain, locked in rows:
        print(f"| {name} ({base[name]:.2f} → {branch[name]:.2f}) | {partner} | {method} | "
              f"{plain:.0%} | {locked:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
