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
2. **extract-lora.** ``main`` of a second repository holds the base; one branch per task
   holds the demo's full fine-tune of it (60 steps, the seeds of ``benchmarks.merge_quality``,
   whose cache it shares); ``mvc extract-lora --rank r`` (the CLI) turns each into an
   adapter, which PEFT loads and the fine-tune's own head scores. Rank 384 (every MiniLM
   module's full rank) is the method's ceiling: each linear delta exact, embeddings left out.

Sentiment's gain over the probe is small (about 20 of the 200 test sentences), so one
sentence moves its gain kept by 5 points; every accuracy is also given on a held-out split
of ``--held-out`` sentences per label (fresh sentences of the same generator, none of them
in the train split), where one sentence is under 1 point. The trained adapters and the full
fine-tunes are cached under ``~/.cache/mvc-bench`` (``MVC_BENCH_CACHE``), keyed by recipe.

Run: ``.venv/bin/python -m benchmarks.adapter_quality [--tasks agent,sentiment] [--lora-steps 150]
[--skip merge|extract] [--ranks 4,16,64,128,384]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.finetune import CACHE_ROOT
from benchmarks.measure import print_table

TARGETS = ("query", "value", "dense")
RANK, ALPHA = 8, 16
LORA_STEPS = 150
LORA_LR = 1e-3
OUTPUT_RANK = 16
EXTRACT_RANKS = (4, 16, 64, 128, 384)
HELD_OUT_PER_LABEL = 600
WEIGHTS = "adapter_model.safetensors"
# Fixed before any run: mvc's TIES defaults, the density 0.2, the demo's λ 1.5.
TIES_SWEEP = (
    ("ties (defaults: density 1, λ 1)", ()),
    ("ties, density 0.2", ("--density", "0.2")),
    ("ties, λ 1.5", ("--lambda", "1.5")),
)


def init_adapter(model_dir: Path, out: Path, targets=TARGETS, seed: int = 0) -> Path:
    """PEFT's initial adapter for the encoder in ``model_dir`` (seeded A, zero B)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from mvc.demo.train import load_encoder

    torch.manual_seed(seed)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(targets))
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


def trained_adapter(args, model_dir: Path, init: Path, task, seed: int) -> Path:
    """The cached adapter (``adapter/``) and head (``head.safetensors``) trained on ``task``
    from the init adapter ``init`` (trained once per recipe)."""
    from mvc.demo.train import save_head

    key = f"{task.name}-seed{seed}-steps{args.lora_steps}-lr{args.lora_lr}-r{RANK}"
    out = CACHE_ROOT / "lora-tasks" / f"{key}-{'-'.join(args.targets)}"
    if not (out / "head.safetensors").exists():
        scratch = out.with_name(out.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(init, scratch / "adapter")
        head = train_adapter(
            model_dir, scratch / "adapter", task, args.lora_steps, args.lora_lr, seed
        )
        save_head(head, scratch / "head.safetensors")
        scratch.rename(out)
    return out


def held_out(task, per_label: int):
    """``task`` with a larger test split: sentences of the same generator, none of them in
    its train split."""
    from mvc.demo.tasks import Task, make_task

    seen = {e.text for e in task.train}
    big = make_task(task.name, test_per_label=per_label)
    test = tuple(e for e in big.test if e.text not in seen)
    return Task(task.name, task.description, task.labels, task.train, test)


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
    from mvc.demo.train import export_base, load_head
    from mvc.repo import Repo

    repo = Repo.init(work / "repo")
    export_base(repo.root / "model")
    init_adapter(repo.root / "model", repo.root / "adapter", args.targets)
    repo.add([repo.root])
    repo.commit("base MiniLM + LoRA adapter at PEFT's init")
    model = repo.root / "model"
    init = work / "init-adapter"
    shutil.copytree(repo.root / "adapter", init)
    heads, own = {}, {}
    for seed, task in enumerate(tasks):
        repo.switch(f"lora-{task.name}", create=True, start="main")
        cached = trained_adapter(args, model, init, task, seed)
        # Training changes the weights only; the config stays the init commit's (a cached
        # copy's base_model_name_or_path names the folder it was trained in).
        shutil.copyfile(cached / "adapter" / WEIGHTS, repo.root / "adapter" / WEIGHTS)
        (repo.root / "heads").mkdir(exist_ok=True)
        head = repo.root / "heads" / f"{task.name}.safetensors"
        shutil.copyfile(cached / "head.safetensors", head)
        heads[task.name] = load_head(head)
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
        f"LoRA adapters (r {RANK} on {', '.join(args.targets)}, {args.lora_steps} steps,"
        f" lr {args.lora_lr}) merged by mvc",
        ["model", *names, f"gain kept ({' / '.join(names)})", "SVD error mean / max"],
        rows,
    )
    repo.switch("main")


def extract_part(args, work: Path, tasks, probes) -> None:
    from benchmarks.merge_quality import MODEL_FILE, branch_dir
    from mvc.demo.evaluate import accuracy
    from mvc.demo.tasks import TASK_NAMES
    from mvc.demo.train import STEPS, export_base, head_path, load_head
    from mvc.repo import Repo

    repo = Repo.init(work / "extract-repo")
    # The adapters are applied to a copy of the base outside the repository: its work tree
    # holds the fine-tune while that branch is checked out.
    base = export_base(work / "base")
    shutil.copytree(base, repo.root / "model")
    repo.add([repo.root])
    repo.commit("base MiniLM")
    splits = [tasks, [held_out(t, args.held_out) for t in tasks]]
    rows = []

    def scores(encoder, head, n: int, reference: list[float] | None) -> list[str]:
        got = [accuracy(encoder, head, split[n]) for split in splits]
        cells = []
        for i, value in enumerate(got):
            probe = probes[i][tasks[n].name]
            gain = "1.00" if reference is None else kept(probe, reference[i], value)
            cells += [f"{value:.3f}", gain]
        return got if reference is None else cells

    for n, task in enumerate(tasks):
        tuned = branch_dir(task, TASK_NAMES.index(task.name), STEPS, base)
        repo.switch(f"full-{task.name}", create=True, start="main")
        shutil.copyfile(tuned / MODEL_FILE, repo.root / "model" / MODEL_FILE)
        repo.commit(f"full fine-tune for {task.name}", all=True)
        head = load_head(head_path(tuned, task.name))
        full = scores(tuned, head, n, None)
        rows.append([task.name, "full fine-tune", "", "", "", "", *sum(
            ([f"{v:.3f}", "1.00"] for v in full), [])])
        for rank in args.ranks:
            out = work / f"extract-{task.name}-{rank}"
            started = time.perf_counter()
            report = json.loads(mvc_cli(
                repo.root, "extract-lora", "HEAD", "--base", "main", "--rank", str(rank),
                "-o", str(out), "--json",
            ))
            seconds = time.perf_counter() - started
            errors = [m["error"] for m in report["modules"].values()]
            methods = sorted({m["method"] for m in report["modules"].values()})
            rows.append([
                task.name,
                f"extract-lora rank {rank}",
                f"{sum(errors) / len(errors):.3f}",
                f"{max(errors):.3f}",
                "/".join(methods),
                f"{seconds:.1f}",
                *scores(with_adapter(base, out), head, n, full),
            ])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)  # survives a kill
        repo.switch("main")
    big = sum(len(t.test) for t in splits[1]) // len(tasks)
    print_table(
        f"extract-lora from a full MiniLM fine-tune (the demo's {STEPS} steps)",
        ["task", "model", "module error mean", "module error max", "svd", "extract-lora s",
         "accuracy (200 test)", "gain kept", f"accuracy (~{big} held out)", "gain kept"],
        rows,
    )
    print("(base linear probe: " + "; ".join(
        f"{t.name} {probes[0][t.name]:.3f} / {probes[1][t.name]:.3f}" for t in tasks) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="agent,sentiment")
    parser.add_argument("--lora-steps", type=int, default=LORA_STEPS)
    parser.add_argument("--lora-lr", type=float, default=LORA_LR)
    parser.add_argument("--targets", default=",".join(TARGETS), help="the adapters' target_modules")
    parser.add_argument("--ranks", default=",".join(map(str, EXTRACT_RANKS)))
    parser.add_argument("--held-out", type=int, default=HELD_OUT_PER_LABEL,
                        help="held-out test sentences per label for the extract-lora table")
    parser.add_argument("--skip", choices=("merge", "extract"), default=None)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args()
    args.ranks = [int(r) for r in args.ranks.split(",")]
    args.targets = tuple(args.targets.split(","))
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
        probes = {t.name: linear_probe(base, t) for t in tasks}
        probe = {t.name: accuracy(base, probes[t.name], t) for t in tasks}
        if args.skip != "merge":
            merge_part(args, work, tasks, probe)
        if args.skip != "extract":
            wide = {
                t.name: accuracy(base, probes[t.name], held_out(t, args.held_out)) for t in tasks
            }
            extract_part(args, work, tasks, [probe, wide])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
