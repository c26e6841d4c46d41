"""Wall time and peak memory of one command in a fresh child process, and table printing.

Every figure comes from a real subprocess (the ``mvc`` console script, ``git``,
``mergekit-yaml``), so start-up costs count the way a user pays them.

Peak memory is sampled from ``/proc/PID/status`` every few milliseconds: ``VmHWM`` (the
process's own peak RSS) and the peak of ``RssAnon`` (anonymous memory: what the process
allocated, without the pages of memory-mapped input files, which are page cache the
kernel can drop at will; a tool that streams a model through an mmap shows an RSS that
grows with the file even when its allocations do not). ``ru_maxrss`` from ``wait4`` is not
used: on Linux a child's ``ru_maxrss`` starts at its parent's RSS at fork/exec time, so it
would report the benchmark's own memory for any small command. The last few milliseconds
of a process can escape the sampling.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
MIB = 1024 * 1024


@dataclass(frozen=True)
class Run:
    """What one command cost."""

    seconds: float
    peak_rss_mib: float
    peak_anon_mib: float
    output: str
    cpu_seconds: float = 0.0  # user + system time of the process and its waited children


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; the message carries its output."""


def tool(name: str) -> str:
    """The executable ``name`` from this interpreter's venv, else from ``PATH``."""
    local = VENV_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise CommandFailed(f"{name} not found (in {VENV_BIN} or on PATH)")
    return found


def run(
    cmd: Sequence[str],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Run:
    """Run ``cmd`` to completion; raise ``CommandFailed`` if it fails."""
    full_env = {**os.environ, **(env or {})}
    with open(os.devnull, "rb") as stdin:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=full_env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        sampler = _MemorySampler(proc.pid)
        sampler.start()
        assert proc.stdout is not None
        output = proc.stdout.read().decode(errors="replace")
        sampler.stop.set()
        sampler.join()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-4000:]}")
    return Run(
        seconds=seconds,
        peak_rss_mib=sampler.peak["VmHWM"] / 1024,
        peak_anon_mib=sampler.peak["RssAnon"] / 1024,
        output=output,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )


class _MemorySampler(threading.Thread):
    """Polls a process's VmHWM and RssAnon (KiB) until told to stop or the process exits.

    Started after ``Popen`` returns, which is after the child's exec, so the figures are
    the command's own and not the parent's.
    """

    INTERVAL = 0.005
    FIELDS = (b"VmHWM:", b"RssAnon:")

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = f"/proc/{pid}/status"
        self.peak = {"VmHWM": 0, "RssAnon": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    for line in f:
                        if line.startswith(self.FIELDS):
                            key, value = line.split()[:2]
                            name = key[:-1].decode()
                            self.peak[name] = max(self.peak[name], int(value))
            except (OSError, ValueError):  # exited; a zombie has no memory lines
                return
            self.stop.wait(self.INTERVAL)


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes of every regular file under ``path`` (as stored, not as allocated)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


def ratio(value: float, peer: float) -> str:
    """``value / peer`` for a table cell (``-`` when the peer is zero)."""
    return f"{value / peer:.2f}" if peer else "-"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, so the output can be pasted into docs/benchmarks.md as it is."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n### {title}\n")
    for i, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


def print_scaling_table(small: float, large: float, runs: Sequence[tuple[str, Any, Any]]) -> None:
    """Peak RSS, peak anonymous memory and time of each operation at two model sizes.

    `runs` holds (operation, result at the small size, result at the large size); a growth
    near 1 while the model grows shows memory bounded by the chunk size, not the model.
    """
    rows = [
        [
            label,
            f"{s.peak_rss_mib:.0f}",
            f"{lg.peak_rss_mib:.0f}",
            f"{lg.peak_rss_mib / s.peak_rss_mib:.2f}",
            f"{s.peak_anon_mib:.0f}",
            f"{lg.peak_anon_mib:.0f}",
            f"{lg.peak_anon_mib / max(s.peak_anon_mib, 1):.2f}",
            f"{s.seconds:.1f}",
            f"{lg.seconds:.1f}",
        ]
        for label, s, lg in runs
    ]
    print_table(
        "Peak RSS and peak anonymous memory (MiB) at two sizes; growth = large / small",
        [
            "operation",
            f"RSS @ {small:.0f} MiB",
            f"RSS @ {large:.0f} MiB",
            "growth",
            f"anon @ {small:.0f} MiB",
            f"anon @ {large:.0f} MiB",
            "anon growth",
            f"s @ {small:.0f} MiB",
            f"s @ {large:.0f} MiB",
        ],
        rows,
    )
