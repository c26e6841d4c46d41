"""Issue 13: accuracy of trained LoRA adapters merged in weight space, and of extract-lora.

Protocol (the demo's, ``mvc/demo/evaluate.py``): the base encoder is scored with a linear
probe; an adapter (or a full fine-tune) with the head trained jointly with it; a merged or
extracted adapter with each task's own head, unchanged. Gain kept on a task is
(acc(merged) − acc(base)) / (acc(branch) − acc(base)).

1. **Merge.** ``main`` holds the base MiniLM (``model/``) and a PEFT LoRA adapter at its
   seeded init (``adapter/``: r = 8, alpha 16, on query/value/dense, zero B): the common
   init commit. One branch per task trains that adapter and a head (the demo's loop,
   ``mvc.demo.train.train_with_head``, on the LoRA factors only) and commits both. Then
   ``mvc merge --strategy ties --adapter-rank 16`` (the CLI, in a subprocess) merges the
   second branch into the first; the merged adapter is loaded by PEFT and scored, and
   ``mvc bake`` of it is scored too (it must give the same accuracy). A small fixed sweep
   of TIES parameters is reported beside mvc's defaults, and the exact sum
   (``task_arithmetic --adapter-combine cat``) as a reference.
2. **extract-lora.** Each task is also fully fine-tuned (the demo's recipe, 60 steps) on a
   branch from ``main``; ``mvc extract-lora`` at several ranks turns it into an adapter,
   which PEFT loads and the fine-tune's own head scores.

Run: ``.venv/bin/python -m benchmarks.adapter_quality [--tasks agent,sentiment] [--lora-steps 150]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.measure import print_table

TARGETS = ("query", "value", "dense")
RANK, ALPHA = 8, 16
LORA_STEPS = 150
LORA_LR = 1e-3
OUTPUT_RANK = 16
EXTRACT_RANKS = (4, 16, 64, 128)
# Fixed before any run: mvc's TIES defaults, the density 0.2, the demo's λ 1.5.
TIES_SWEEP = (
    ("ties (defaults: density 1, λ 1)", ()),
    ("ties, density 0.2", ("--density", "0.2")),
    ("ties, λ 1.5", ("--lambda", "1.5")),
)


def init_adapter(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """PEFT's initial adapter for the encoder in ``model_dir`` (seeded A, zero B)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from mvc.demo.train import load_encoder

    torch.manual_seed(seed)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS))
    get_peft_model(load_encoder(model_dir), config).save_pretrained(str(out))
    return out


def train_adapter(model_dir: Path, adapter: Path, task, steps: int, lr: float, seed: int):
    """Train the adapter in ``adapter`` (in place) and a head on ``task``; the head."""
    import torch
    from peft import PeftModel

    from mvc.demo.train import THREADS, Schedule, load_encoder, load_tokenizer, train_with_head

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    model = PeftModel.from_pretrained(load_encoder(model_dir), str(adapter), is_trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    schedule = Schedule(steps=steps, lr=lr, seed=seed, progress=False)
    head, _ = train_with_head(model, load_tokenizer(model_dir), task, params, schedule)
    model.save_pretrained(str(adapter))
    return head


def with_adapter(model_dir: Path, adapter: Path) -> Any:
    """The base encoder with ``adapter`` merged in by PEFT (``merge_and_unload``)."""
    from peft import PeftModel

    from mvc.demo.train import load_encoder

    return PeftModel.from_pretrained(load_encoder(model_dir), str(adapter)).merge_and_unload()


def mvc_cli(repo: Path, *args: str) -> str:
    """Run the mvc CLI as a user would; its output."""
    proc = subprocess.run(
        [sys.executable, "-c", "from mvc.cli.main import main; main()", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode:
        raise SystemExit(f"mvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def svd_errors(repo: Path) -> str:
    """Mean and max relative SVD error of the merged modules, from the merge record."""
    record = json.loads((repo / ".mvc" / "merge.json").read_text())
    errors = [
        m["error"]
        for folder in record["adapters"]["folders"].values()
        for m in folder["modules"].values()
        if "error" in m
    ]
    return f"{sum(errors) / len(errors):.3f} / {max(errors):.3f}" if errors else "—"


def kept(base: float, branch: float, merged: float) -> str:
    """Gain retention, or "no gain" when the branch did not beat the base."""
    from mvc.demo.evaluate import gain_retention

    return f"{gain_retention(base, branch, merged):.2f}" if branch > base else "no gain"


def merge_part(args, work: Path, tasks, probe: dict[str, float]) -> None:
    from mvc.demo.evaluate import accuracies, accuracy
    from mvc.demo.train import export_base, save_head
    from mvc.repo import Repo

    repo = Repo.init(work / "repo")
    export_base(repo.root / "model")
    init_adapter(repo.root / "model", repo.root / "adapter")
    repo.add([repo.root])
    repo.commit("base MiniLM + LoRA adapter at PEFT's init")
    model = repo.root / "model"
    heads, own = {}, {}
    for seed, task in enumerate(tasks):
        repo.switch(f"lora-{task.name}", create=True, start="main")
        heads[task.name] = train_adapter(
            model, repo.root / "adapter", task, args.lora_steps, args.lora_lr, seed
        )
        save_head(heads[task.name], repo.root / "heads" / f"{task.name}.safetensors")
        repo.add([repo.root])
        repo.commit(f"LoRA adapter for {task.name}")
    for task in tasks:
        repo.switch(f"lora-{task.name}")
        own[task.name] = accuracies(with_adapter(model, repo.root / "adapter"), heads, tasks)
    rows = [["base (linear probe)", *(f"{probe[t.name]:.3f}" for t in tasks), "", ""]]
    for t in tasks:
        row = own[t.name]
        rows.append(
            [f"adapter {t.name} (r {RANK})", *(f"{row[u.name]:.3f}" for u in tasks), "", ""]
        )
    first, second = (f"lora-{t.name}" for t in tasks)
    runs = [
        (label, ("--strategy", "ties", "--adapter-rank", str(OUTPUT_RANK), *extra))
        for label, extra in TIES_SWEEP
    ]
    runs.append(
        (
            "task_arithmetic, cat (exact sum)",
            ("--strategy", "task_arithmetic", "--adapter-combine", "cat"),
        )
    )
    for n, (label, options) in enumerate(runs):
        repo.switch(f"merge-{n}", create=True, start=first)
        mvc_cli(repo.root, "merge", second, "-q", *options)
        got = accuracies(with_adapter(model, repo.root / "adapter"), heads, tasks)
        rank = "cat" if "cat" in options else str(OUTPUT_RANK)
        rows.append(
            [
                f"{label}, rank {rank}",
                *(f"{got[t.name]:.3f}" for t in tasks),
                " / ".join(kept(probe[t.name], own[t.name][t.name], got[t.name]) for t in tasks),
                svd_errors(repo.root),
            ]
        )
        if n == 0:
            mvc_cli(repo.root, "bake", "HEAD")
            baked = repo.load_state_dict("HEAD", "model/model.safetensors")
            got = {t.name: accuracy(baked, heads[t.name], t) for t in tasks}
            rows.append(
                [
                    "  the same, mvc bake",
                    *(f"{got[t.name]:.3f}" for t in tasks),
                    " / ".join(
                        kept(probe[t.name], own[t.name][t.name], got[t.name]) for t in tasks
                    ),
                    "",
                ]
            )
    names = [t.name for t in tasks]
    print_table(
        f"LoRA adapters (r {RANK}, {args.lora_steps} steps, lr {args.lora_lr}) merged by mvc",
        ["model", *names, f"gain kept ({' / '.join(names)})", "SVD error mean / max"],
        rows,
    )
    repo.switch("main")


def extract_part(args, work: Path, tasks, probe: dict[str, float]) -> None:
    from mvc.demo.evaluate import accuracy
    from mvc.demo.train import fine_tune, load_head
    from mvc.merge.extract_lora import extract_lora
    from mvc.repo import Repo

    repo = Repo.open(work / "repo")
    model = repo.root / "model"
    rows = []
    for seed, task in enumerate(tasks):
        repo.switch(f"full-{task.name}", create=True, start="main")
        tuned = fine_tune(model, task, model, seed=seed, progress=False)
        head = load_head(tuned.head_path)
        repo.add([model])
        repo.commit(f"full fine-tune for {task.name}")
        full = accuracy(model, head, task)
        rows.append([task.name, "full fine-tune", "", "", f"{full:.3f}", "1.00"])
        for rank in args.ranks:
            out = work / f"extract-{task.name}-{rank}"
            result = extract_lora(repo, "HEAD", "main", rank, out)
            errors = [m["error"] for m in result.modules.values()]
            got = accuracy(with_adapter(work / "base", out), head, task)
            rows.append(
                [
                    task.name,
                    f"extract-lora rank {rank}",
                    f"{sum(errors) / len(errors):.3f}",
                    f"{max(errors):.3f}",
                    f"{got:.3f}",
                    kept(probe[task.name], full, got),
                ]
            )
        repo.switch("main")
    print_table(
        "extract-lora from a full MiniLM fine-tune (the demo's 60 steps)",
        ["task", "model", "module error mean", "module error max", "accuracy", "gain kept"],
        [[t, m, e1, e2, a, k] for t, m, e1, e2, a, k in rows],
    )
    print(f"(base linear probe: {', '.join(f'{t.name} {probe[t.name]:.3f}' for t in tasks)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="agent,sentiment")
    parser.add_argument("--lora-steps", type=int, default=LORA_STEPS)
    parser.add_argument("--lora-lr", type=float, default=LORA_LR)
    parser.add_argument("--ranks", default=",".join(map(str, EXTRACT_RANKS)))
    parser.add_argument("--skip", choices=("merge", "extract"), default=None)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args()
    args.ranks = [int(r) for r in args.ranks.split(",")]
    from mvc.demo.evaluate import accuracy, linear_probe
    from mvc.demo.tasks import make_task
    from mvc.demo.train import export_base

    tasks = [make_task(name) for name in args.tasks.split(",")]
    if len(tasks) != 2:
        raise SystemExit("--tasks names two demo tasks")
    work = args.work or Path(tempfile.mkdtemp(prefix="mvc-adapter-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = export_base(work / "base")
        probe = {t.name: accuracy(base, linear_probe(base, t), t) for t in tasks}
        if args.skip != "merge":
            merge_part(args, work, tasks, probe)
        else:
            from mvc.repo import Repo

            repo = Repo.init(work / "repo")
            export_base(repo.root / "model")
            repo.add([repo.root])
            repo.commit("base MiniLM")
        if args.skip != "extract":
            extract_part(args, work, tasks, probe)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
