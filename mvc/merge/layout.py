"""Merging models whatever their shard layout: every side is first seen in one layout.

The planner compares files path by path. A branch that resharded a model (or moved a
tensor between shards) would look like files deleted and added, and the tensors in them
would never be compared. So before planning, each model folder of the base and of every
branch is rewritten, manifests only, into the *target* layout: HEAD's by default
(``--layout theirs``: the last branch's; ``--max-shard-size``: shards of that size, as
``save_pretrained`` cuts them). Tensors are then matched by name, and the three-way rules
apply to them exactly as when nobody resharded. Folders whose tensors sit in the same files
on every side are left as they are. Afterwards the folder gets the index of its final
shards (:func:`finish`).

The choice is part of the merge record (``layout``), so ``verify`` and ``unmerge`` run the
same alignment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mvc.errors import MvcError
from mvc.repo.manifest import Manifest
from mvc.repo.models import (
    Layout,
    ModelView,
    folder_of,
    index_path,
    layout_index,
    model_folders,
    model_view,
    realign,
    sharded_layout,
    tensor_sizes,
)

LAYOUT_SIDES = ("ours", "theirs")


@dataclass(frozen=True)
class LayoutChoice:
    """Whose shard layout a merge writes: commit ``source``'s, or shards of a size."""

    source: str
    max_shard_size: int | None = None

    @classmethod
    def pick(cls, side: str, parents: Sequence[str], max_shard_size: int | None) -> LayoutChoice:
        """``ours`` is HEAD (the first parent), ``theirs`` the last branch merged."""
        if side not in LAYOUT_SIDES:
            raise MvcError(f"unknown layout '{side}'", hint="use --layout ours or theirs")
        return cls(parents[0] if side == "ours" else parents[-1], max_shard_size)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LayoutChoice:
        layout = record.get("layout") or {}
        return cls(layout.get("source", record["parents"][0]), layout.get("max_shard_size"))


@dataclass
class Aligned:
    """The merge's inputs in one layout, and what ``finish`` needs to write the indexes."""

    base_files: dict[str, bytes]
    branch_files: list[dict[str, bytes]]
    choice: LayoutChoice
    realigned: list[str] = field(default_factory=list)
    # folder -> (whether its final shards get an index, the target's own index bytes)
    indexes: dict[str, tuple[bool, bytes | None]] = field(default_factory=dict)

    def finish(self, output: dict[str, Manifest | bytes]) -> dict[str, Manifest | bytes]:
        """Drop shards left without tensors and give each model folder its shards' index."""
        for folder, (wanted, source_raw) in self.indexes.items():
            shards = {
                p: m
                for p, m in output.items()
                if isinstance(m, Manifest) and folder_of(p) == folder
            }
            for path, manifest in list(shards.items()):
                if not manifest.tensors:
                    del output[path], shards[path]
            if wanted and shards:
                output[index_path(folder)] = layout_index(folder, shards, source_raw)
        return output

    def record(self) -> dict[str, Any] | None:
        """The record's ``layout`` entry: present when the alignment rewrote a folder's
        shards or its index (so ``verify`` repeats it with the same source)."""
        if not self.realigned and not self.indexes:
            return None
        return {
            "source": self.choice.source,
            "max_shard_size": self.choice.max_shard_size,
            "models": self.realigned,
        }


def align(
    base_files: Mapping[str, bytes],
    branch_files: Sequence[Mapping[str, bytes]],
    source_files: Mapping[str, bytes],
    choice: LayoutChoice,
    manifests: Callable[[Mapping[str, bytes]], Mapping[str, Manifest]] | None = None,
) -> Aligned:
    """Rewrite every model folder of the base and the branches into the target layout.

    ``manifests`` gives a side's already parsed model files (the merge pipeline parses each
    blob once for the alignment, the planner and the executor)."""

    def view(files: Mapping[str, bytes], folder: str) -> ModelView | None:
        return model_view(files, folder, manifests(files) if manifests is not None else None)

    aligned = Aligned(dict(base_files), [dict(f) for f in branch_files], choice)
    sides = [aligned.base_files, *aligned.branch_files]
    for folder in sorted(model_folders([*sides, source_files])):
        views = [view(files, folder) for files in sides]
        present = [v for v in views if v is not None]
        if not present:
            continue
        source = view(source_files, folder)
        target_view = source or next((v for v in views[1:] if v is not None), present[0])
        if choice.max_shard_size is not None:
            layout: Layout = sharded_layout(
                folder, tensor_sizes([target_view, *present]), choice.max_shard_size
            )
        else:
            layout = target_view.layout()
        layout = layout.extended(n for v in present for n in v.where)
        placement = layout.placement()
        moved = choice.max_shard_size is not None or any(
            placement[name] != path for v in present for name, path in v.where.items()
        )
        has_index = layout.index or any(v.index_raw is not None for v in present)
        if moved:
            templates = target_view.shards if choice.max_shard_size is None else {}
            first = next(iter(target_view.shards.values()), None)
            metadata = first.header.metadata if first is not None else None
            for i, side_view in enumerate(views):
                if side_view is not None:
                    sides[i] = realign(sides[i], side_view, layout, templates, metadata)
            aligned.realigned.append(folder)
        elif has_index:
            for i, side_view in enumerate(views):
                if side_view is not None:
                    sides[i].pop(index_path(folder), None)
        if moved or has_index:
            aligned.indexes[folder] = (layout.index, target_view.index_raw)
    aligned.base_files, aligned.branch_files = sides[0], sides[1:]
    return aligned
