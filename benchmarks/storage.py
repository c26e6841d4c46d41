"""Issue 2: what a fine-tune commit costs in bytes and seconds, against ZipNN and Git LFS.

On a real fine-tune of the bundled MiniLM (60 AdamW steps, lr 2e-5, torch's default weight
decay), in fp32 and with base and fine-tune cast to bf16:

- storage: bytes the fine-tune commit adds to the repository (everything under ``.git``),
  divided by the model file's size; against ZipNN full and XOR-delta compression of the same
  file, and Git LFS (a full copy per version, measured). Targets: <= 0.40 fp32, <= 0.15 bf16;
- throughput: ``mvc add`` + ``mvc commit`` and ``mvc switch`` between the two versions, each
  a fresh ``mvc`` process, against ``git add`` + ``git commit`` and ``git checkout`` of the
  same file tracked by ``git lfs`` in a temporary git repository, in the same run. Times
  include process start-up; a row shows it (``mvc status`` / ``git status`` in the same
  repository, which load each tool's whole stack).

Run: ``.venv/bin/python -m benchmarks.storage [--quick] [--zipnn-python PATH]``; with
``--llama --data DIR``, the 1.1B bf16 sharded model of issue 15 instead
(``benchmarks/storage_llama.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.finetune import MODEL_FILE, FineTune, base_model_dir, bf16_dir, fine_tuned_dir
from benchmarks.measure import MIB, CommandFailed, print_table, ratio, run, tool, tree_size

TARGETS = {"fp32": 0.40, "bf16": 0.15}
DEFAULT_ZIPNN_PYTHON = "/tmp/zipnn-venv/bin/python"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


@dataclass
class VcsResult:
    """One tool's figures for one (base, fine-tune) pair."""

    base_commit_bytes: int
    ft_commit_bytes: int
    commit_base_s: float
    commit_ft_s: float
    checkout_s: float  # median over the switches between the two versions
    startup_s: float


@dataclass(frozen=True)
class Tool:
    """How one version-control tool runs the story's steps (argument lists)."""

    name: str
    setup: tuple[tuple[str, ...], ...]
    startup: tuple[str, ...]
    add: tuple[str, ...]
    commit: tuple[str, ...]
    branch: tuple[str, ...]
    switch: tuple[str, ...]


def _tools() -> tuple[Tool, Tool]:
    mvc, git = tool("mvc"), tool("git")
    return (
        Tool(
            name="mvc",
            setup=((mvc, "init"),),
            startup=(mvc, "status"),
            add=(mvc, "add"),
            commit=(mvc, "commit", "-m"),
            branch=(mvc, "switch", "-c"),
            switch=(mvc, "switch"),
        ),
        Tool(
            name="lfs",
            setup=(
                (git, "init", "-q", "-b", "main"),
                (git, "lfs", "install", "--local"),
                (git, "lfs", "track", "*.safetensors"),
                (git, "add", ".gitattributes"),
                (git, "commit", "-q", "-m", "track"),
            ),
            startup=(git, "status", "-s"),
            add=(git, "add"),
            commit=(git, "commit", "-q", "-m"),
            branch=(git, "switch", "-q", "-c"),
            switch=(git, "checkout", "-q"),
        ),
    )


def _flow(t: Tool, base: Path, ft: Path, work: Path, repeats: int) -> VcsResult:
    """Commit base, branch, commit the fine-tune, switch back and forth; measure each step."""
    repo = work / t.name
    repo.mkdir()
    for cmd in t.setup:
        run(cmd, cwd=repo, env=GIT_ENV)
    startup = min(run(t.startup, cwd=repo).seconds for _ in range(3))
    target = repo / MODEL_FILE

    def commit(src: Path, message: str) -> tuple[float, int]:
        shutil.copyfile(src / MODEL_FILE, target)
        before = tree_size(repo / ".git")
        seconds = run([*t.add, MODEL_FILE], cwd=repo, env=GIT_ENV).seconds
        seconds += run([*t.commit, message], cwd=repo, env=GIT_ENV).seconds
        return seconds, tree_size(repo / ".git") - before

    commit_base_s, base_bytes = commit(base, "base")
    run([*t.branch, "ft"], cwd=repo, env=GIT_ENV)
    commit_ft_s, ft_bytes = commit(ft, "fine-tune")
    switches = [
        run([*t.switch, branch], cwd=repo, env=GIT_ENV).seconds
        for _ in range(repeats)
        for branch in ("main", "ft")
    ]
    if target.read_bytes() != (ft / MODEL_FILE).read_bytes():
        raise CommandFailed(f"{t.name} checkout did not reproduce the fine-tune byte for byte")
    return VcsResult(
        base_commit_bytes=base_bytes,
        ft_commit_bytes=ft_bytes,
        commit_base_s=commit_base_s,
        commit_ft_s=commit_ft_s,
        checkout_s=statistics.median(switches),
        startup_s=startup,
    )


def _zipnn(base: Path, ft: Path, dtype: str, python: str | None) -> dict[str, object]:
    """ZipNN's sizes from the probe script, run by an interpreter that has zipnn."""
    script = Path(__file__).with_name("zipnn_probe.py")
    args = [str(base / MODEL_FILE), str(ft / MODEL_FILE), dtype]
    if python is None or not Path(python).exists():
        cmd = [sys.executable, str(script), *args, "--emulate"]
    else:
        cmd = [python, str(script), *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _mbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MIB / seconds:.0f}" if seconds > 0 else "-"


def bench_pair(
    label: str, base: Path, ft: Path, zipnn_python: str | None, repeats: int
) -> tuple[list[list[object]], list[list[object]]]:
    """Storage rows and throughput rows for one dtype (``label``: fp32 or bf16)."""
    raw = (ft / MODEL_FILE).stat().st_size
    with tempfile.TemporaryDirectory(prefix="mvc-bench-storage-") as tmp:
        work = Path(tmp)
        mvc_tool, lfs_tool = _tools()
        mvc = _flow(mvc_tool, base, ft, work, repeats)
        lfs = _flow(lfs_tool, base, ft, work, repeats)
    zipnn = _zipnn(base, ft, "float32" if label == "fp32" else "bfloat16", zipnn_python)
    mvc_ratio = mvc.ft_commit_bytes / raw
    target = TARGETS[label]
    storage = [
        [
            label,
            "mvc (fine-tune commit)",
            f"{mvc.ft_commit_bytes:,}",
            f"{mvc_ratio:.3f}",
            f"<= {target:.2f}: {'met' if mvc_ratio <= target else 'MISSED'}",
        ],
        [
            label,
            f"ZipNN XOR delta [{zipnn['engine']}]",
            f"{zipnn['delta']:,}",
            f"{zipnn['delta'] / raw:.3f}",
            f"mvc/ZipNN {ratio(mvc.ft_commit_bytes, zipnn['delta'])}",
        ],
        [
            label,
            f"ZipNN full [{zipnn['engine']}]",
            f"{zipnn['full']:,}",
            f"{zipnn['full'] / raw:.3f}",
            "",
        ],
        [
            label,
            "Git LFS (fine-tune commit)",
            f"{lfs.ft_commit_bytes:,}",
            f"{lfs.ft_commit_bytes / raw:.3f}",
            f"mvc/LFS {ratio(mvc.ft_commit_bytes, lfs.ft_commit_bytes)}",
        ],
        [
            label,
            "mvc (base commit, no parent)",
            f"{mvc.base_commit_bytes:,}",
            f"{mvc.base_commit_bytes / raw:.3f}",
            "",
        ],
    ]
    throughput = []
    for op, m_s, l_s in (
        ("commit base (add+commit)", mvc.commit_base_s, lfs.commit_base_s),
        ("commit fine-tune (add+commit)", mvc.commit_ft_s, lfs.commit_ft_s),
        ("checkout (switch, median)", mvc.checkout_s, lfs.checkout_s),
    ):
        throughput.append(
            [label, op, f"{m_s:.2f}", _mbps(raw, m_s), f"{l_s:.2f}", _mbps(raw, l_s)]
            + [ratio(l_s, m_s)]
        )
    throughput.append(
        [label, "process start-up", f"{mvc.startup_s:.2f}", "", f"{lfs.startup_s:.2f}", "", ""]
    )
    return storage, throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fp32 only, one switch each way")
    parser.add_argument(
        "--zipnn-python",
        default=os.environ.get("MVC_BENCH_ZIPNN_PYTHON", DEFAULT_ZIPNN_PYTHON),
        help="an interpreter with the zipnn package (else ZipNN is emulated)",
    )
    parser.add_argument(
        "--llama", action="store_true", help="a 1.1B bf16 sharded LLaMA (issue 15) instead"
    )
    parser.add_argument("--data", type=Path, help="--llama: folder for the models and repositories")
    args = parser.parse_args(argv)
    if args.llama:
        if args.data is None:
            parser.error("--llama needs --data DIR (about 20 GB free)")
        from benchmarks.storage_llama import bench_llama

        return bench_llama(args.data, repeats=1 if args.quick else 2)
    repeats = 1 if args.quick else 3
    base = base_model_dir()
    ft = fine_tuned_dir(FineTune())
    pairs = [("fp32", base, ft)]
    if not args.quick:
        pairs.append(("bf16", bf16_dir(base), bf16_dir(ft)))
    size = (ft / MODEL_FILE).stat().st_size
    print(
        f"storage: all-MiniLM-L6-v2 ({size / MIB:.1f} MiB fp32), fine-tune {FineTune()}, "
        f"{os.cpu_count()} CPUs"
    )
    storage_rows: list[list[object]] = []
    speed_rows: list[list[object]] = []
    for label, b, f in pairs:
        s, t = bench_pair(label, b, f, args.zipnn_python, repeats)
        storage_rows += s
        speed_rows += t
    print_table(
        "Storage: bytes added by the commit / raw file size",
        ["dtype", "method", "bytes", "ratio", "vs"],
        storage_rows,
    )
    print_table(
        "Throughput: mvc CLI vs git + git-lfs on the same file (MB/s = MiB/s of the file)",
        [
            "dtype",
            "operation",
            "mvc s",
            "mvc MB/s",
            "lfs s",
            "lfs MB/s",
            "speed mvc/lfs",
        ],
        speed_rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
