"""Cherry-pick the sentiment fine-tune onto the agent branch; score as the demo does.

Run: ``.venv/bin/python -m benchmarks.cherry_pick [STEPS]`` (default 60, the demo's).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from mvc.demo.evaluate import accuracies, accuracy, linear_probe
from mvc.demo.story import MODEL_FILE
from mvc.demo.tasks import make_task
from mvc.demo.train import export_base, fine_tune, load_head
from mvc.merge.replay import replay
from mvc.repo import Repo


def main(steps: int = 60) -> None:
    root = Path(tempfile.mkdtemp(prefix="mvc-pick-"))
    repo = Repo.init(root)
    export_base(root / "model")
    repo.add([root / "model"])
    repo.commit("base")
    tasks = [make_task("sentiment"), make_task("agent")]
    heads = {}
    for seed, task in enumerate(tasks):
        repo.switch(task.name, create=True, start="main")
        tuned = fine_tune(
            root / "model", task, root / "model", steps=steps, seed=seed, progress=False
        )
        heads[task.name] = load_head(tuned.head_path)
        repo.add([root / "model"])
        repo.commit(f"{task.name} fine-tune")
    repo.switch("agent+sentiment", create=True, start="agent")
    result = replay(repo, "cherry-pick", "sentiment")
    base = repo.load_state_dict("main", MODEL_FILE)
    rows = {"base (linear probe)": {t.name: accuracy(base, linear_probe(base, t), t) for t in tasks}}
    for rev in ("sentiment", "agent"):
        rows[f"branch {rev}"] = accuracies(repo.load_state_dict(rev, MODEL_FILE), heads, tasks)
    rows["cherry-pick sentiment onto agent"] = accuracies(
        repo.load_state_dict("HEAD", MODEL_FILE), heads, tasks
    )
    print(f"fine-tunes: {steps} steps; cherry-pick {result.commit[:12]}: {result.resolved} tensors")
    print(f"{'':<34}" + "".join(f"{t.name:>11}" for t in tasks))
    for label, row in rows.items():
        print(f"{label:<34}" + "".join(f"{row[t.name]:>11.3f}" for t in tasks))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
