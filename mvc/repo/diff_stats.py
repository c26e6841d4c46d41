"""The figures `mvc diff` reports for one tensor, or one LoRA module's update ΔW.

Kept apart from `diff.py` so that the adapter diff, which `diff.py` dispatches to, can use
the same accumulator without importing its caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class TensorDiff:
    path: str
    name: str
    status: str  # added | deleted | changed | unchanged | retyped
    changed_fraction: float | None = None
    relative_l2: float | None = None
    cosine: float | None = None
    sign_conflicts: float | None = None
    kind: str = "tensor"  # tensor | delta (a LoRA module's update ΔW = s·B·A)


class ChangeStats:
    """The diff figures of one tensor (or one adapter module's ΔW), accumulated block by
    block: relative L2 change, and with a base the task vectors' cosine and sign conflicts."""

    def __init__(self, with_base: bool) -> None:
        self.with_base = with_base
        self.changed = self.total = self.conflicts = self.both_moved = 0
        self.diff_sq = self.old_sq = self.dot = self.na = self.nb = 0.0

    def add(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | None, changed: int) -> None:
        """One block: old values ``x``, new ``y``, base ``z``; ``changed`` of its elements
        count as changed (bits for a tensor, beyond rounding for a ΔW)."""
        self.changed += changed
        self.total += x.size
        delta = y - x
        self.diff_sq += float(np.vdot(delta, delta))
        self.old_sq += float(np.vdot(x, x))
        if z is not None:
            ta, tb = x - z, y - z
            self.dot += float(np.vdot(ta, tb))
            self.na += float(np.vdot(ta, ta))
            self.nb += float(np.vdot(tb, tb))
            moved = (ta != 0) & (tb != 0)
            self.both_moved += int(moved.sum())
            self.conflicts += int((moved & (np.sign(ta) != np.sign(tb))).sum())

    def relative(self) -> float:
        diff = math.sqrt(self.diff_sq)
        return diff / math.sqrt(self.old_sq) if self.old_sq else diff

    def result(self, path: str, name: str, status: str = "changed") -> TensorDiff:
        result = TensorDiff(path, name, status)
        result.changed_fraction = self.changed / self.total if self.total else 0.0
        result.relative_l2 = self.relative()
        if self.with_base:
            result.cosine = self.dot / math.sqrt(self.na * self.nb) if self.na and self.nb else None
            result.sign_conflicts = self.conflicts / self.both_moved if self.both_moved else 0.0
        return result
