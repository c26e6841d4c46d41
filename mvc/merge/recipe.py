"""The merge recipe: what a merge computes, whoever asks for it.

`mvc merge`, `mvc pull`, `mvc verify`, `mvc unmerge` and the plain-git merge driver all
describe their merge as one :class:`Recipe` and hand it to :func:`mvc.merge.pipeline.run`.
The recipe is also the part of the merge record that says how to redo the merge:
:meth:`Recipe.record_fields` writes it and :meth:`Recipe.from_record` reads it back, so a
recorded merge recomputes from exactly what was recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mvc.merge.adapter_plan import AdapterOptions
from mvc.merge.layout import LayoutChoice
from mvc.merge.params import MergeParams, drop_branch
from mvc.merge.planner import TensorRule
from mvc.merge.strategies import get_strategy


@dataclass(frozen=True)
class Recipe:
    """A merge: the base, the parents (HEAD first) and which of them enter the arithmetic,
    the strategy with its global and per-branch parameters (per contributing branch, in
    order), the per-tensor rules, whether every tensor goes through the strategy, and
    whether TALL masks are kept; whose shard layout model folders are aligned to
    (``layout``, :mod:`mvc.merge.layout`); and, for a revert or cherry-pick
    (:mod:`mvc.merge.replay`), the ``operation``, whose commit has HEAD as only parent.

    ``base`` is the merge base commit; the git driver, which merges blobs git hands it,
    has none (it labels its two sides ``ours``/``theirs`` and aligns no layout).
    """

    base: str | None
    parents: tuple[str, ...]
    contributing: tuple[int, ...]
    names: tuple[str, ...] = ()
    strategy: str = "ties"
    params: MergeParams = field(default_factory=MergeParams)
    rules: tuple[TensorRule, ...] = ()
    all_tensors: bool = False
    masks: bool = True
    layout: LayoutChoice | None = None
    operation: Mapping[str, Any] | None = None
    adapter: AdapterOptions | None = None  # how LoRA adapters merged in ΔW space are written

    @property
    def branches(self) -> list[str]:
        """The commits that enter the arithmetic, in order."""
        return [self.parents[i] for i in self.contributing]

    @property
    def commit_parents(self) -> list[str]:
        """The parents of the commit the merge makes: HEAD alone for a revert/cherry-pick."""
        return [self.parents[0]] if self.operation else list(self.parents)

    def check(self) -> None:
        """Refuse, before anything is read, a strategy that is unknown or does not take this
        many branches, a preset it lacks, and rules naming unknown strategies or parameters
        (the executor checks each tensor's own branch count before computing any)."""
        get_strategy(self.strategy).check(self.params, len(self.contributing))
        for rule in self.rules:
            get_strategy(rule.strategy)
            self.params.with_overrides(rule.params)

    # ------------------------------------------------------------------ the record
    def record_fields(self) -> dict[str, Any]:
        """The merge record's recipe fields (docs/merge-record.md); the layout entry is the
        pipeline's (it is there only when a folder had to be realigned)."""
        replay = (
            {"operation": dict(self.operation), "commit_parents": self.commit_parents}
            if self.operation
            else {}
        )
        return {
            **replay,
            "base": self.base,
            "parents": list(self.parents),
            "parent_names": list(self.names),
            "contributing": list(self.contributing),
            "strategy": self.strategy,
            "preset": self.params.preset,
            "params": self.params.to_record(),
            "seed": self.params.seed,
            "all_tensors": self.all_tensors,
            "rules": [
                {"match": r.pattern, "strategy": r.strategy, **dict(r.params)} for r in self.rules
            ],
            "masks": self.masks,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Recipe:
        parents = tuple(record["parents"])
        rules = tuple(
            TensorRule(
                item["match"],
                item["strategy"],
                {k: v for k, v in item.items() if k not in ("match", "strategy")},
            )
            for item in record.get("rules") or []
        )
        return cls(
            base=record["base"],
            parents=parents,
            contributing=tuple(record["contributing"]),
            names=tuple(record.get("parent_names") or [p[:12] for p in parents]),
            strategy=record["strategy"],
            params=MergeParams.from_record(record["params"]),
            rules=rules,
            all_tensors=bool(record.get("all_tensors")),
            masks=bool(record.get("masks", True)),
            layout=LayoutChoice.from_record(record),
            operation=record.get("operation"),
            adapter=AdapterOptions.from_record(record),
        )

    def without(self, index: int) -> Recipe:
        """This merge as if parent ``index`` had never been in it (`mvc unmerge`): per-branch
        values, global and in rules, lose that branch's entry (from the declarations). The
        result is a merge of the remaining parents, no longer a revert or cherry-pick."""
        kept = [i for i in range(len(self.parents)) if i != index]
        params, rules = self.params, self.rules
        if index in self.contributing:
            position, n = self.contributing.index(index), len(self.contributing)
            params = MergeParams.from_record(drop_branch(params.to_record(), position, n))
            rules = tuple(
                TensorRule(r.pattern, r.strategy, drop_branch(r.params, position, n))
                for r in rules
            )
        return Recipe(
            base=self.base,
            parents=tuple(self.parents[i] for i in kept),
            contributing=tuple(kept.index(i) for i in self.contributing if i != index),
            names=tuple(self.names[i] for i in kept),
            strategy=self.strategy,
            params=params,
            rules=rules,
            all_tensors=self.all_tensors,
            masks=self.masks,
            layout=self.layout,
            adapter=self.adapter,
        )
