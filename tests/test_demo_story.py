"""The main job end to end: the demo's real branch-train-merge on MiniLM (slow, ~2 min)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_demo_keeps_gains_audits_and_locks(tmp_path):
    from mvc.demo.story import run_demo
    from mvc.progress import Progress

    lines: list[str] = []
    report = run_demo(tmp_path / "demo", say=lines.append, progress=Progress())
    rows = report.rows
    assert report.ok, "\n".join(lines)
    # The merge keeps ≥ 90% of each branch's own-task gain over the base (issue 7).
    assert len(report.retention) == len(report.tasks)
    assert all(kept >= 0.9 for kept in report.retention.values()), report.retention
    # verify recomputed the merge bit for bit (issue 4).
    assert report.checks["verify recomputes the merge bit for bit"]
    # extract rebuilds a parent within 2 accuracy points on its task (issue 4).
    extracted = next(label for label in rows if label.startswith("extracted "))
    task = extracted.split()[1]
    assert abs(rows[extracted][task] - rows[f"branch {task}"][task]) <= 0.02
    # A locked model answers like the original; merging it destroys its task (issue 5).
    locked_row = next(label for label in rows if label.endswith("(locked)"))
    locked_task = locked_row.split()[1]
    assert rows[locked_row][locked_task] == rows[f"branch {locked_task}"][locked_task]
    assert report.locked_retention < 0.5
    # Storage: each fine-tune commit adds at most 0.40 of the raw fp32 file (issue 2).
    fine_tunes = [(stored, raw) for label, stored, raw in report.storage if label != "base"]
    assert len(fine_tunes) == len(report.tasks)
    assert all(stored / raw <= 0.40 for stored, raw in fine_tunes)
    assert len(report.pictures) >= 2  # the accuracy chart and the lineage picture
    for picture in report.pictures:
        assert picture.stat().st_size > 1000
