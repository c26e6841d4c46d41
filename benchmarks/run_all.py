"""Every benchmark, one after the other (``make bench``); results go to stdout only.

``--quick`` passes the smaller sizes to each benchmark. A benchmark that fails is reported
and the others still run; the exit status is 1 if any failed.

Run: ``.venv/bin/python -m benchmarks.run_all [--quick]``.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable

from benchmarks import memory_scaling, merge_speed, models, remote, storage

BENCHMARKS: tuple[tuple[str, Callable[[list[str]], int]], ...] = (
    ("storage", storage.main),
    ("merge_speed", merge_speed.main),
    ("memory_scaling", memory_scaling.main),
    ("remote", remote.main),
    ("models", lambda argv: models.main([])),  # MiniLM-sized either way: nothing to shrink
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer repeats")
    args = parser.parse_args(argv)
    forwarded = ["--quick"] if args.quick else []
    failed = []
    for name, bench in BENCHMARKS:
        print(f"\n## benchmarks.{name}\n", flush=True)
        start = time.perf_counter()
        try:
            bench(forwarded)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"\n({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
