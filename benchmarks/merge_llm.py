"""Issue 15: TIES merge and verify at LLM scale against mergekit-yaml and the memory-speed limit.

One run measures, each command a fresh process (``benchmarks.measure.run``: wall time and
peak RSS sampled from /proc):

- a LLaMA-shaped bf16 model with TinyLlama-1.1B's widths (``LlamaShape.tiny_llama``, 22
  layers: 1.1 B parameters, 2.2 GB), three safetensors shards with an index as the Hub lays
  them out, and two synthetic fine-tunes (``FT_NOISE`` on every weight, so about half the
  elements move by an ulp or two and |τ| ties massively at the trim threshold);
- the same at ``--small-layers`` (6) layers, for peak RSS against model size (flat: the
  ratio stays near 1 while the model grows 3x);
- a synthetic BERT-large in fp32 (hidden 1024, 24 layers: 1.34 GB).

For each: ``mergekit-yaml`` (TIES, density 0.2, weights 1, normalize; fp32 arithmetic,
output in the input dtype), ``mvc merge`` in its default three-way mode and with
``--preset mergekit --all-tensors`` (mergekit's arithmetic on every tensor), ``mvc verify``
of the default merge, and one plain numpy pass over the same input bytes (the three models' files
read in 16 MiB blocks and reduced with ``np.max``): the "limit" column divides a tool's
seconds per GB of input by that pass's. Goals (issue 15): merge ≤ 0.25 of mergekit's wall
time and ≤ 0.25 of its peak RSS, verify ≤ the merge's own time.

Run: ``python -m benchmarks.merge_speed --llama --work DIR [--prepare]`` (``--prepare`` builds
the inputs and repositories first, untimed, outside the benchmark lock; about 25 GB under DIR
for the 22-layer model, deleted at the end; mergekit needs about 5 GB of memory).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from benchmarks.measure import Run, print_table, run, tool
from benchmarks.merging import MODES, build_repo, mergekit_merge, mvc_merge
from benchmarks.storage import GIT_ENV
from benchmarks.synthetic import LlamaShape, Shape, write_llama, write_model

DENSITY = 0.2
TIME_GOAL = 0.25
RSS_GOAL = 0.25
GB = 1e9
BLOCK = 16 * 1024 * 1024
READY = "prepared"  # marks a block whose models and repository are complete
BERT_LARGE = Shape(hidden=1024, layers=24, intermediate=4096)  # 1.34 GB of fp32


def numpy_pass(folders: list[str]) -> None:
    """One plain numpy pass over every file's bytes: read in blocks, ``np.max`` of each."""
    import numpy as np

    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    for folder in folders:
        for path in sorted(Path(folder).iterdir()):
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    np.max(np.frombuffer(view[: n - n % 2], dtype=np.uint16))


def input_bytes(folders: list[Path]) -> int:
    return sum(p.stat().st_size for folder in folders for p in folder.iterdir())


def _link_copy(src: Path, dst: Path) -> None:
    """A copy of a repository whose immutable store objects are hard links (seconds, not
    a copy of gigabytes); everything else is copied, so the two never share a written file."""

    def copy(s: str, d: str) -> None:
        if f"{os.sep}.git{os.sep}mvc{os.sep}objects{os.sep}" in s:
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=copy)


def _row(label: str, tool_name: str, r: Run, gb: float, limit: float, peer: Run | None):
    share = (
        [
            f"{r.seconds / peer.seconds:.2f}"
            + (" met" if r.seconds <= TIME_GOAL * peer.seconds else " missed"),
            f"{r.peak_rss_mib / peer.peak_rss_mib:.2f}"
            + (" met" if r.peak_rss_mib <= RSS_GOAL * peer.peak_rss_mib else " missed"),
        ]
        if peer is not None
        else ["—", "—"]
    )
    per_gb = r.seconds / gb
    row = [
        label,
        tool_name,
        f"{r.seconds:.1f}",
        f"{r.peak_rss_mib:.0f}",
        f"{per_gb:.2f}",
        f"{per_gb / limit:.1f}x",
        *share,
    ]
    print("row: | " + " | ".join(row) + " |", flush=True)  # kept if a later step fails
    return row


def bench(
    label: str,
    base: Path,
    a: Path,
    b: Path,
    work: Path,
    out_dtype: str,
    peer: bool = True,
    verify: bool = True,
) -> tuple[list[list[object]], dict[str, Run]]:
    """One block of rows: numpy pass, mergekit-yaml, each mvc mode and its verify."""
    mvc = tool("mvc")
    folders = [base, a, b]
    gb = input_bytes(folders) / GB
    repo = _prepared_repo(work, base, a, b)
    code = f"from benchmarks.merge_llm import numpy_pass; numpy_pass({[str(f) for f in folders]})"
    here = str(Path(__file__).resolve().parent.parent)
    limit_run = run([sys.executable, "-c", code], env={"PYTHONPATH": here})
    limit = limit_run.seconds / gb
    runs: dict[str, Run] = {}
    rows = [_row(label, "numpy: one pass over the inputs", limit_run, gb, limit, None)]
    mk = mergekit_merge(work, base, a, b, DENSITY, f"llm-{out_dtype}", out_dtype) if peer else None
    if mk is not None:
        rows.append(_row(label, "mergekit-yaml", mk, gb, limit, None))
    for i, mode in enumerate(MODES):
        fresh = work / f"mvc-repo-{i}"
        _link_copy(repo, fresh)
        merged = mvc_merge(fresh, mode, DENSITY, f"llm-{i}", int_rules=False)
        runs[mode.label] = merged
        rows.append(_row(label, mode.label, merged, gb, limit, mk))
        if verify and i == 0:  # the default mode's merge (time: one 1B verify, not two)
            checked = run([mvc, "verify"], cwd=fresh, env=GIT_ENV)
            runs[f"verify {mode.label}"] = checked
            row = _row(label, "mvc verify of that merge", checked, gb, limit, mk)
            ratio = checked.seconds / merged.seconds
            row[-2] = f"{ratio:.2f} of the merge" + (" (met <= 1)" if ratio <= 1 else " (missed)")
            print(f"row: verify/merge {row[-2]}", flush=True)
            rows.append(row)
        shutil.rmtree(fresh)
    shutil.rmtree(repo)
    return rows, runs


def _prepared_repo(work: Path, base: Path, a: Path, b: Path) -> Path:
    """The repository of the three models (built once: ``--prepare`` may have done it)."""
    repo = work / "mvc-repo"
    if not (work / READY).exists():
        shutil.rmtree(repo, ignore_errors=True)
        build_repo(work, base, a, b, sorted(p.name for p in base.iterdir()))
        (work / READY).touch()
    return repo


def _inputs(work: Path, kind: str, n_layers: int, quick: bool) -> tuple[list[Path], str]:
    """The block's three model folders (written unless prepared) and its label."""
    if kind == "llama":
        shape = LlamaShape.tiny_llama(n_layers)
        names = ("base", "a", "b")
        if not (work / READY).exists():
            for v, name in enumerate(names):
                write_llama(work / name, shape, seed=1, variant=v, shards=3)
        params = shape.nbytes / 2 / 1e9
        gb = shape.nbytes / GB
        return [work / n for n in names], f"LLaMA {n_layers} layers bf16 ({params:.2f} B, {gb:.2f} GB)"
    bert = Shape(hidden=256, layers=2, intermediate=1024) if quick else BERT_LARGE
    if not (work / READY).exists():
        for v, name in enumerate(("base", "a", "b")):
            write_model(work / name, bert, seed=1, variant=v)
    label = f"BERT {bert.layers}x{bert.hidden} fp32 ({bert.nbytes / GB:.2f} GB)"
    return [work / n for n in ("base", "a", "b")], label


def main_llama(
    work_root: Path, layers: int, small_layers: int, quick: bool = False, prepare: bool = False
) -> int:
    """All three blocks and the RSS-flatness table (``quick``: a small BERT, to try it out).

    ``prepare`` only writes the models and builds their repositories (nothing timed), so
    a later run under the benchmark lock spends its time on the measured commands."""
    print(
        f"merge at LLM scale: TIES density {DENSITY}, two branches, CPU, {os.cpu_count()} CPUs; "
        f"load average before: {open('/proc/loadavg').read().strip()}"
    )
    work_root.mkdir(parents=True, exist_ok=True)
    rows: list[list[object]] = []
    flat: dict[str, dict[str, Run]] = {}
    blocks = [("llama", layers, True), ("bert", 0, True), ("llama", small_layers, False)]
    for kind, n_layers, peer in blocks:
        work = work_root / f"{kind}{n_layers}"
        folders, label = _inputs(work, kind, n_layers, quick)
        if prepare:
            _prepared_repo(work, *folders)
            continue
        out_dtype = "bfloat16" if kind == "llama" else "float32"
        block, runs = bench(label, *folders, work, out_dtype, peer=peer, verify=kind == "llama" and peer)
        rows += block
        if kind == "llama":
            flat[label] = runs
        shutil.rmtree(work)
    if prepare:
        return 0
    print_table(
        "TIES merge and verify at LLM scale (fresh process each; limit = s/GB over numpy's)",
        [
            "inputs",
            "tool",
            "wall s",
            "peak RSS MiB",
            "s / GB input",
            "x numpy pass",
            "time / mergekit",
            "RSS / mergekit",
        ],
        rows,
    )
    (large, big), (small, little) = flat.items()
    print_table(
        f"mvc peak RSS against model size ({small} vs {large})",
        ["mode", "RSS MiB small", "RSS MiB large", "large / small"],
        [
            [
                mode.label,
                f"{little[mode.label].peak_rss_mib:.0f}",
                f"{big[mode.label].peak_rss_mib:.0f}",
                f"{big[mode.label].peak_rss_mib / little[mode.label].peak_rss_mib:.2f}",
            ]
            for mode in MODES
        ],
    )
    print(f"load average after: {open('/proc/loadavg').read().strip()}")
    return 0
