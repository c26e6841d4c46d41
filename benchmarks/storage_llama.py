"""Issue 15: commit and checkout of a LLaMA-shaped 1.1B bf16 model, against Git LFS and cp.

The model is ``LlamaShape.tiny_llama()`` (TinyLlama-1.1B's shapes, 2.2 GB of bf16) in three
safetensors shards with an index, as the Hub lays it out, and a synthetic fine-tune of it
(``FT_NOISE`` on every weight, so every chunk changes). Each step is a fresh process:

- commit: ``mvc add model && mvc commit`` of the fine-tune on a branch whose parent holds
  the base, against ``git add model && git commit`` with ``git lfs track "*.safetensors"``;
- checkout: ``mvc switch`` between the two branches, each direction timed on its own,
  against ``git checkout`` of the same branches in the Git LFS repository, and ``cp`` of
  the same three shards into a fresh folder (plain ``cp``, which does not fsync; mvc's
  checkout fsyncs every file before its rename, so ``cp`` + ``sync`` is shown as well).

Page cache: nothing is dropped (other processes share the machine). Before every timed
step the files it reads (the sources of a commit or ``cp``, the object store or the LFS
object folder of a checkout, and the work tree it replaces) are read once, so every step
runs warm; the table says so. The goals (issue 15): commit <= 0.5x Git LFS's time,
checkout <= 1.2x ``cp`` of the same files.

Run: ``.venv/bin/python -m benchmarks.storage --llama --data DIR`` (models are generated in
DIR if missing; the repositories are made in DIR and removed afterwards).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import CommandFailed, print_table, ratio, run, tool
from benchmarks.synthetic import LlamaShape, write_llama

GOAL_COMMIT = 0.5  # of Git LFS's time
GOAL_CHECKOUT = 1.2  # of cp's time
SHARDS = 3


@dataclass
class Figures:
    """One tool's wall seconds for each step (checkouts: every run, per direction), and
    the CPU seconds (user + system) the same steps took, which a busy machine moves less."""

    commit_base: float = 0.0
    commit_ft: float = 0.0
    to_ft: list[float] = field(default_factory=list)
    to_base: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)


def models(data: Path) -> tuple[Path, Path]:
    """The base and fine-tune folders under ``data``, written when missing."""
    shape = LlamaShape.tiny_llama()
    folders = []
    for name, variant in (("base", 0), ("ft", 1)):
        folder = data / name
        if not (folder / "config.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            write_llama(folder, shape, seed=0, variant=variant, shards=SHARDS)
        folders.append(folder)
    return folders[0], folders[1]


def warm(*paths: Path) -> None:
    """Read every file under ``paths`` once, so the timed step finds them in the page cache."""
    for top in paths:
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in files:
            with open(path, "rb") as f:
                while f.read(64 << 20):
                    pass


def _put(src: Path, dst: Path) -> None:
    """The work tree's model folder becomes a copy of ``src`` (untimed)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


def _flow(kind: str, base: Path, ft: Path, repo: Path, repeats: int, env: dict) -> Figures:
    mvc, git = tool("mvc"), tool("git")
    repo.mkdir(parents=True)
    if kind == "mvc":
        setup = [[mvc, "init"]]
        add, commit = [mvc, "add", "model"], [mvc, "commit", "-m"]
        branch, switch, store = [mvc, "switch", "-c", "ft"], [mvc, "switch"], repo / ".git/mvc"
    else:
        setup = [
            [git, "init", "-q", "-b", "main"],
            [git, "lfs", "install", "--local"],
            [git, "lfs", "track", "*.safetensors"],
            [git, "add", ".gitattributes"],
            [git, "commit", "-q", "-m", "track"],
        ]
        add, commit = [git, "add", "model"], [git, "commit", "-q", "-m"]
        branch, switch, store = [git, "switch", "-q", "-c", "ft"], [git, "checkout", "-q"], repo / ".git/lfs"
    for cmd in setup:
        run(cmd, cwd=repo, env=env)
    out = Figures()
    work = repo / "model"

    def timed_commit(src: Path, message: str) -> float:
        _put(src, work)
        warm(work, *[store] if store.exists() else [])
        a = run(add, cwd=repo, env=env)
        b = run([*commit, message], cwd=repo, env=env)
        out.rss_mib[f"add {message}"] = a.peak_rss_mib
        out.cpu[message] = [a.cpu_seconds + b.cpu_seconds]
        return a.seconds + b.seconds

    out.commit_base = timed_commit(base, "base")
    run(branch, cwd=repo, env=env)
    out.commit_ft = timed_commit(ft, "fine-tune")
    for _ in range(repeats):
        for target, times in (("main", out.to_base), ("ft", out.to_ft)):
            warm(work, store)
            step = run([*switch, target], cwd=repo, env=env)
            times.append(step.seconds)
            out.cpu.setdefault(target, []).append(step.cpu_seconds)
            out.rss_mib[f"switch {target}"] = max(out.rss_mib.get(f"switch {target}", 0), step.peak_rss_mib)
    for shard in sorted(ft.glob("*.safetensors")):
        if not filecmp.cmp(shard, work / shard.name, shallow=False):
            raise CommandFailed(f"{kind} checkout did not reproduce {shard.name} byte for byte")
    return out


def _cp(src: Path, dst: Path, repeats: int, sync: bool) -> tuple[list[float], list[float]]:
    """``cp`` of the shards into a fresh folder (then ``sync`` of the copies, if asked):
    wall and CPU seconds of each run."""
    shards = [str(p) for p in sorted(src.glob("*.safetensors"))]
    times, cpu = [], []
    for _ in range(repeats):
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        warm(src)
        steps = [run([tool("cp"), *shards, str(dst)])]
        if sync:
            steps.append(run([tool("sync"), *[str(dst / Path(s).name) for s in shards]]))
        times.append(sum(r.seconds for r in steps))
        cpu.append(sum(r.cpu_seconds for r in steps))
    shutil.rmtree(dst)
    return times, cpu


def bench_llama(data: Path, repeats: int = 2) -> int:
    """Run every step, print the tables; the repositories are removed afterwards."""
    data.mkdir(parents=True, exist_ok=True)
    base, ft = models(data)
    size = sum(p.stat().st_size for p in ft.glob("*.safetensors"))
    env = {
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    load_before = Path("/proc/loadavg").read_text().strip()
    repos = data / "repos"
    shutil.rmtree(repos, ignore_errors=True)
    try:
        mvc = _flow("mvc", base, ft, repos / "mvc", repeats, env)
        lfs = _flow("lfs", base, ft, repos / "lfs", repeats, env)
        cp, cp_cpu = _cp(ft, repos / "cp", repeats + 1, sync=False)
        cp_sync, cp_sync_cpu = _cp(ft, repos / "cp", repeats, sync=True)
    finally:
        shutil.rmtree(repos, ignore_errors=True)
    load_after = Path("/proc/loadavg").read_text().strip()
    med = statistics.median
    cp_s = med(cp)
    print(
        f"LLaMA-shaped bf16, {size / 2e9:.2f} B parameters (TinyLlama's shapes), {SHARDS} "
        f"shards + index, {size / 1e9:.2f} GB; "
        f"{os.cpu_count()} CPUs; warm page cache (every step's inputs read just before it); "
        f"loadavg before: {load_before}; after: {load_after}"
    )
    commit_ratio = mvc.commit_ft / lfs.commit_ft
    verdict = "met" if commit_ratio <= GOAL_COMMIT else "MISSED"
    rows = [
        ["commit base (add+commit)", f"{mvc.commit_base:.2f}", f"{lfs.commit_base:.2f}", "",
         ratio(mvc.commit_base, lfs.commit_base), "", _all(mvc.cpu["base"]),
         _all(lfs.cpu["base"])],
        ["commit fine-tune (add+commit)", f"{mvc.commit_ft:.2f}", f"{lfs.commit_ft:.2f}", "",
         f"{commit_ratio:.2f} x LFS", f"<= {GOAL_COMMIT} x LFS: {verdict}",
         _all(mvc.cpu["fine-tune"]), _all(lfs.cpu["fine-tune"])],
    ]
    for label, branch, m_times, l_times in (
        ("checkout base -> fine-tune", "ft", mvc.to_ft, lfs.to_ft),
        ("checkout fine-tune -> base", "main", mvc.to_base, lfs.to_base),
    ):
        m = med(m_times)
        verdict = "met" if m <= GOAL_CHECKOUT * cp_s else "MISSED"
        rows.append([label, _all(m_times), _all(l_times), f"{cp_s:.2f}",
                     f"{m / cp_s:.2f} x cp, {m / med(l_times):.2f} x LFS",
                     f"<= {GOAL_CHECKOUT} x cp: {verdict}", _all(mvc.cpu[branch]),
                     _all(lfs.cpu[branch])])
    rows.append(["cp of the 3 shards (no fsync)", "", "", _all(cp), "", "", "", _all(cp_cpu)])
    rows.append(["cp + sync of the copies", "", "", _all(cp_sync), "", "", "",
                 _all(cp_sync_cpu)])
    print_table(
        "Commit and checkout of a 1.1B bf16 sharded model (seconds; several runs: each shown)",
        ["operation", "mvc s", "Git LFS s", "cp s", "mvc / peer (median)", "goal",
         "mvc CPU s", "peer CPU s"],
        rows,
    )
    print("\npeak RSS of mvc (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in mvc.rss_mib.items()))
    return 0


def _all(times: list[float]) -> str:
    return " / ".join(f"{t:.2f}" for t in times)
