"""Issues 3 and 8: peak RSS of commit, checkout and merge at two model sizes.

mvc works chunk by chunk (16 MiB row chunks), so its peak memory should depend on the
chunk size, not on the model: the same operations on a model four times larger should
need about the same memory. Measured on synthetic BERT-shaped fp32 models (about 0.5 GB and
2 GB; 0.17 GB and 0.5 GB with ``--quick``), whose largest tensors span many chunks, with
two "fine-tunes" that perturb a quarter of the rows. Both peak RSS and peak anonymous
memory are shown (see ``benchmarks.measure``: RSS includes mapped file pages). Each operation is a fresh ``mvc``
process: ``add`` (hashing and compressing the model), ``commit``, ``switch`` (checkout of
another version), and a TIES merge (density 0.2). The peer is ``mergekit-yaml`` running
the same merge, whose memory grows with the model.

The models are streamed to disk tensor block by tensor block, so the benchmark itself
stays small, and deleted afterwards.

Run: ``.venv/bin/python -m benchmarks.memory_scaling [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.measure import MIB, Run, print_scaling_table
from benchmarks.merging import MODES, build_repo, mergekit_merge, mvc_merge
from benchmarks.synthetic import shape_for, write_model

DENSITY = 0.2
ROW_FRACTION = 0.25


def _peaks(work: Path, target_mib: int) -> tuple[float, dict[str, Run]]:
    """Model size (MiB) and one Run per operation at about ``target_mib``."""
    shape = shape_for(target_mib * MIB)
    models = [
        write_model(work / name, shape, seed=2, variant=v, row_fraction=ROW_FRACTION)
        for v, name in enumerate(("base", "a", "b"))
    ]
    setup = build_repo(work, *models)
    runs = {
        "mvc add (fine-tune a)": setup.adds["a"],
        "mvc commit (fine-tune a)": setup.commits["a"],
        "mvc switch (checkout)": max(setup.switches, key=lambda r: r.peak_rss_mib),
        "mvc merge (TIES, three-way default)": mvc_merge(setup.root, MODES[0], DENSITY, "scale"),
        "mergekit-yaml (TIES)": mergekit_merge(work, *models, DENSITY, "scale"),
    }
    return shape.nbytes / MIB, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.17 GB and 0.5 GB models")
    args = parser.parse_args(argv)
    targets = (128, 512) if args.quick else (512, 2048)
    measured = []
    for target in targets:
        with tempfile.TemporaryDirectory(prefix="mvc-bench-scale-") as tmp:
            measured.append(_peaks(Path(tmp), target))
    (small, small_runs), (large, large_runs) = measured
    print(
        f"memory scaling: synthetic BERT fp32 models of {small:.0f} MiB and {large:.0f} MiB "
        f"(x{large / small:.2f}), {ROW_FRACTION:.0%} of rows perturbed per fine-tune"
    )
    print_scaling_table(small, large, [(op, small_runs[op], large_runs[op]) for op in small_runs])
    merge = large_runs["mvc merge (TIES, three-way default)"]
    peer = large_runs["mergekit-yaml (TIES)"]
    print(
        f"\nAt {large:.0f} MiB: mvc merge peak RSS / mergekit = "
        f"{merge.peak_rss_mib / peer.peak_rss_mib:.2f}, peak anonymous memory / mergekit = "
        f"{merge.peak_anon_mib / peer.peak_anon_mib:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
