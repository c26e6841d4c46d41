"""Running a recorded recipe again: the merge planner and executor over stored commits.

`verify` recomputes a merge to compare it with the commit; `unmerge` recomputes it over
fewer parents. Both go through the same planner and streaming executor as `mvc merge`, so
they produce exactly what a merge with those options produces, and never hold more than a
few chunks in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvc.merge.layout import LayoutChoice, align_revisions
from mvc.merge.params import MergeParams
from mvc.merge.planner import MergePlan, Planner, TensorRule, raise_conflicts
from mvc.store import ObjectStore, object_id

if TYPE_CHECKING:
    from mvc.merge.arrays import ArrayOps
    from mvc.merge.executor import TensorResult
    from mvc.progress import Progress
    from mvc.repo import Manifest, Repo


def record_params(record: Mapping[str, Any]) -> MergeParams:
    return MergeParams.from_record(dict(record["params"]))


def record_rules(record: Mapping[str, Any]) -> list[TensorRule]:
    """The `--config` rules as the merge recorded them ({match, strategy, **params})."""
    rules = []
    for item in record.get("rules") or []:
        params = {k: v for k, v in item.items() if k not in ("match", "strategy")}
        rules.append(TensorRule(item["match"], item["strategy"], params))
    return rules


@dataclass
class Recipe:
    """What the planner and executor need, independent of where it came from."""

    base: str
    branches: list[str]  # commits entering the arithmetic, in order
    strategy: str
    params: MergeParams
    rules: list[TensorRule]
    all_tensors: bool
    masks: bool
    layout: LayoutChoice | None = None  # None: the first branch's shard layout

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Recipe:
        return cls(
            base=record["base"],
            branches=[record["parents"][i] for i in record["contributing"]],
            strategy=record["strategy"],
            params=record_params(record),
            rules=record_rules(record),
            all_tensors=bool(record.get("all_tensors")),
            masks=bool(record.get("masks", True)),
            layout=LayoutChoice.from_record(record),
        )


@dataclass
class Recomputed:
    plan: MergePlan
    files: dict[str, Manifest | bytes]
    results: dict[tuple[str, str], TensorResult]
    device: ArrayOps
    layout: dict[str, Any] | None = None  # the record's `layout` entry, when one is due


class ScratchStore:
    """The repository's store for reading; new objects go to a scratch folder instead.

    `verify` must not leave objects behind when a recomputation differs from the commit,
    yet it needs the differing chunks afterwards to measure how far they are off.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.real = store
        self._tmp = tempfile.TemporaryDirectory(prefix="mvc-verify-")
        self.scratch = ObjectStore(Path(self._tmp.name))

    def has(self, oid: str) -> bool:
        return self.real.has(oid) or self.scratch.has(oid)

    def prefetch(self, oids) -> None:
        self.real.prefetch(oids)

    def get(self, oid: str, known: Mapping[str, bytes] | None = None) -> bytes:
        # The scratch folder first: a miss in the real store may fetch from its promisor.
        store = self.scratch if self.scratch.has(oid) else self.real
        return store.get(oid, known)

    def get_view(self, oid: str, known: Mapping[str, bytes] | None = None) -> memoryview:
        store = self.scratch if self.scratch.has(oid) else self.real
        return store.get_view(oid, known)

    def put(
        self,
        data: Any,
        dtype: str,
        shape: Sequence[int],
        base: str | None = None,
        base_data: bytes | None = None,
    ) -> str:
        """Store in the scratch folder, whole (a delta base may live in the real store)."""
        oid = object_id(dtype, shape, data)
        if self.real.has(oid):
            return oid
        return self.scratch.put(data, dtype, shape)

    def close(self) -> None:
        self.scratch.close()
        self._tmp.cleanup()


def recompute(
    repo: Repo,
    recipe: Recipe,
    device: ArrayOps,
    store: ObjectStore | ScratchStore | None = None,
    progress: Progress | None = None,
) -> Recomputed:
    """Plan and execute `recipe`; outputs go into `store` (the repository's by default)."""
    from mvc.merge.executor import Executor
    from mvc.merge.strategies import get_strategy

    get_strategy(recipe.strategy).check(recipe.params, len(recipe.branches))
    choice = recipe.layout or LayoutChoice(recipe.branches[0])
    aligned = align_revisions(repo, recipe.base, recipe.branches, choice)
    plan = Planner(
        aligned.base_files,
        aligned.branch_files,
        recipe.strategy,
        recipe.rules,
        recipe.all_tensors,
    ).plan()
    raise_conflicts(plan.conflicts)
    executor = Executor(
        store if store is not None else repo.store,  # type: ignore[arg-type]
        aligned.manifests(aligned.base_files),
        [aligned.manifests(files) for files in aligned.branch_files],
        recipe.params,
        device,
        masks=recipe.masks,
        progress=progress,
    )
    files = aligned.finish(executor.run(plan))
    return Recomputed(plan, files, executor.results, device, aligned.record())
