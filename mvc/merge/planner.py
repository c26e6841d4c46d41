"""The three-way planner: what happens to every file and tensor, decided before any arithmetic.

Given the merge base and the branches (HEAD first), each model file is compared tensor by
tensor on chunk ids alone (no tensor bytes are read):

- changed on one side only: that side's entry, byte-exact;
- changed identically on several sides: that entry;
- added on one side: taken; deleted on one side and untouched elsewhere: deleted;
- changed differently on several sides: resolved by the tensor's strategy, over the
  branches that changed it;
- shape/dtype disagreements and delete-vs-modify: conflicts, all reported together, unless
  the tensor's rule is `ours`/`theirs`; except rows appended on one branch (new tokens,
  ``mvc.merge.growth``): the shared rows resolve, the appended ones come from that branch.

With `all_tensors` every tensor present on every branch with one layout goes through its
strategy (mergekit's behaviour, which knows no history). Ordinary files merge the same way
on their blob ids; a text file changed differently on two sides is a conflict.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mvc.errors import ConflictError, MvcError
from mvc.formats.dtypes import get_dtype
from mvc.merge.growth import appended_side, same_grid
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.references import RECORD_PREFIX
from mvc.repo.worktree import is_model_path

SIDE_STRATEGIES = ("ours", "theirs")


@dataclass(frozen=True)
class TensorRule:
    """Strategy and parameter overrides for tensors whose names match `pattern`."""

    pattern: str
    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorDecision:
    """The planner's verdict for one tensor of one file.

    `action` is one of: base (nobody changed it), one-sided, identical, added, deleted,
    resolve (arithmetic), conflict. `source` is the branch index whose entry is taken;
    `branches` are the branch indices that enter the strategy.
    """

    name: str
    action: str
    entry: TensorEntry | None = None
    source: int | None = None
    branches: tuple[int, ...] = ()
    strategy: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    # A resolve where branch `appended` grew the tensor along dim 0 (new token rows): the
    # base's rows go through the strategy, the rest come from that branch (`entry`).
    appended: int | None = None


@dataclass
class FilePlan:
    path: str
    kind: str  # "model" or "blob"
    action: str  # base | one-sided | identical | added | deleted | merged
    blob: bytes | None = None  # for blobs and files taken whole
    manifest: Manifest | None = None  # for model files taken whole
    tensors: list[TensorDecision] = field(default_factory=list)
    header_source: int = 0  # branch whose header (metadata, layout) the output keeps


@dataclass
class MergePlan:
    files: dict[str, FilePlan]
    conflicts: list[str]

    @property
    def resolve_count(self) -> int:
        return sum(1 for f in self.files.values() for t in f.tensors if t.action == "resolve")


@dataclass
class Planner:
    """Builds a MergePlan from the base's and each branch's files (path -> raw blob).

    ``parse`` turns a model file's blob into its manifest; the pipeline passes one that
    parses each blob once and shares the result with the executor.
    """

    base: Mapping[str, bytes]
    branches: Sequence[Mapping[str, bytes]]
    strategy: str
    rules: Sequence[TensorRule] = ()
    all_tensors: bool = False
    parse: Callable[[bytes, str], Manifest] = Manifest.from_bytes

    def plan(self) -> MergePlan:
        paths = set(self.base).union(*self.branches)
        files: dict[str, FilePlan] = {}
        conflicts: list[str] = []
        for path in sorted(p for p in paths if not p.startswith(RECORD_PREFIX)):
            plan = self._plan_file(path, conflicts)
            if plan is not None:
                files[path] = plan
        return MergePlan(files, conflicts)

    # ------------------------------------------------------------------ files
    def _plan_file(self, path: str, conflicts: list[str]) -> FilePlan | None:
        base = self.base.get(path)
        sides = [b.get(path) for b in self.branches]
        kind = "model" if is_model_path(path) else "blob"
        if not self.all_tensors or kind == "blob":
            whole = self._whole_file(path, kind, base, sides)
            if whole is not None:
                return whole if whole.action != "deleted" else None
        if kind == "blob":
            conflicts.append(f"{path}: changed differently on several branches")
            return None
        if any(s is None for s in sides) and not all(s is None for s in sides):
            changed_present = [i for i, s in enumerate(sides) if s is not None and s != base]
            if changed_present and base is not None:
                conflicts.append(f"{path}: deleted on one branch, modified on another")
                return None
        return self._plan_model(path, base, sides, conflicts)

    def _whole_file(
        self, path: str, kind: str, base: bytes | None, sides: list[bytes | None]
    ) -> FilePlan | None:
        changed = [i for i, s in enumerate(sides) if s != base]
        if not changed:
            return self._take(path, kind, "base", base)
        distinct = {sides[i] for i in changed}
        if len(distinct) == 1:
            value = sides[changed[0]]
            if value is None:
                # Deleted where it changed; elsewhere untouched: delete.
                return FilePlan(path, kind, "deleted")
            action = (
                "added" if base is None else ("one-sided" if len(changed) == 1 else "identical")
            )
            plan = self._take(path, kind, action, value)
            plan.header_source = changed[0]
            return plan
        return None

    def _take(self, path: str, kind: str, action: str, blob: bytes | None) -> FilePlan:
        if blob is None:
            return FilePlan(path, kind, "deleted")
        manifest = self.parse(blob, path) if kind == "model" else None
        return FilePlan(path, kind, action, blob=blob, manifest=manifest)

    # ------------------------------------------------------------------ tensors
    def _plan_model(
        self,
        path: str,
        base_blob: bytes | None,
        side_blobs: list[bytes | None],
        conflicts: list[str],
    ) -> FilePlan:
        base = self.parse(base_blob, path).by_name() if base_blob else {}
        sides = [self.parse(b, path).by_name() if b else None for b in side_blobs]
        header_source = next(i for i, s in enumerate(sides) if s is not None)
        names = list(base)
        for side in sides:
            for name in side or {}:
                if name not in names:
                    names.append(name)
        plan = FilePlan(path, "model", "merged", header_source=header_source)
        for name in names:
            decision = self._plan_tensor(
                path, name, base.get(name), [None if s is None else s.get(name) for s in sides]
            )
            if decision.action == "conflict":
                conflicts.append(f"{path}::{name}: {decision.reason}")
            plan.tensors.append(decision)
        return plan

    def _plan_tensor(
        self, path: str, name: str, base: TensorEntry | None, sides: list[TensorEntry | None]
    ) -> TensorDecision:
        strategy, params = self._rule_for(name)
        changed = [i for i, s in enumerate(sides) if not _same(s, base)]
        if (
            self.all_tensors
            and base is not None
            and _arithmetic_dtype(base.dtype)
            and all(s is not None and same_grid(s, base) for s in sides)
        ):
            if strategy in SIDE_STRATEGIES:
                return self._side(name, strategy, sides)
            return TensorDecision(
                name, "resolve", branches=tuple(range(len(sides))), strategy=strategy, params=params
            )
        if not changed:
            if base is None:
                return TensorDecision(name, "deleted")
            return TensorDecision(name, "base", entry=base)
        first = sides[changed[0]]
        if all(_same(sides[i], first) for i in changed):
            if first is None:
                return TensorDecision(name, "deleted")
            action = (
                "added" if base is None else ("one-sided" if len(changed) == 1 else "identical")
            )
            return TensorDecision(name, action, entry=first, source=changed[0])
        if strategy in SIDE_STRATEGIES:
            return self._side(name, strategy, sides)
        if base is None:
            return TensorDecision(name, "conflict", reason="added differently on several branches")
        if any(sides[i] is None for i in changed):
            return TensorDecision(
                name, "conflict", reason="deleted on one branch, modified on another"
            )
        if not all(same_grid(sides[i], base) for i in changed):
            grower, problem = appended_side(base, [sides[i] for i in changed])
            if grower is not None:
                return TensorDecision(
                    name,
                    "resolve",
                    entry=sides[changed[grower]],
                    branches=tuple(changed),
                    strategy=strategy,
                    params=params,
                    appended=changed[grower],
                )
            if problem is not None:
                return TensorDecision(name, "conflict", reason=problem)
            shapes = ", ".join(f"{sides[i].dtype}{list(sides[i].shape)}" for i in changed)
            return TensorDecision(name, "conflict", reason=f"shape/dtype differ ({shapes})")
        return TensorDecision(
            name, "resolve", branches=tuple(changed), strategy=strategy, params=params
        )

    def _side(self, name: str, strategy: str, sides: list[TensorEntry | None]) -> TensorDecision:
        index = 0 if strategy == "ours" else len(sides) - 1
        entry = sides[index]
        if entry is None:
            return TensorDecision(name, "deleted", source=index, strategy=strategy)
        return TensorDecision(name, "one-sided", entry=entry, source=index, strategy=strategy)

    def _rule_for(self, name: str) -> tuple[str, Mapping[str, Any]]:
        for rule in self.rules:
            if fnmatch.fnmatchcase(name, rule.pattern):
                return rule.strategy, rule.params
        return self.strategy, {}


def _arithmetic_dtype(dtype: str) -> bool:
    """Floats of 16 bits or more take arithmetic; integers, bools and fp8 follow the
    three-way rules even under --all-tensors (mergekit copies such buffers through)."""
    info = get_dtype(dtype)
    return info.kind == "float" and info.itemsize >= 2


def _same(a: TensorEntry | None, b: TensorEntry | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and a.shape == b.shape and a.chunk_ids == b.chunk_ids


class MergeConflicts(ConflictError):
    """The plan has conflicts; ``conflicts`` lists them all (the git driver reports them
    to git one by one, the commands in one line)."""

    def __init__(self, conflicts: list[str]) -> None:
        shown = "; ".join(conflicts[:10]) + (
            f"; and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
        )
        super().__init__(
            f"merge stopped with {len(conflicts)} conflict(s), nothing written: {shown}",
            hint="choose a side with --strategy ours|theirs, or give per-tensor rules with --config",
        )
        self.conflicts = conflicts


def raise_conflicts(conflicts: list[str]) -> None:
    """Stop the merge, listing every conflict and how to resolve them."""
    if conflicts:
        raise MergeConflicts(conflicts)


def load_rules(path: str) -> list[TensorRule]:
    """Per-tensor rules from a YAML file: a list of {match: GLOB, strategy: NAME, ...params}."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            doc = yaml.safe_load(handle)
    except OSError as err:
        raise MvcError(f"cannot read merge config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise MvcError(f"merge config {path} is not valid YAML: {err}") from None
    items = doc.get("rules") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise MvcError(f"merge config {path}: expected a list of rules under 'rules'")
    rules = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "match" not in item or "strategy" not in item:
            raise MvcError(f"merge config {path}: rule {i + 1} needs 'match' and 'strategy'")
        params = {k: v for k, v in item.items() if k not in ("match", "strategy")}
        rules.append(TensorRule(str(item["match"]), str(item["strategy"]), params))
    return rules
