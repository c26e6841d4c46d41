"""Which adapter folders a merge must take out of the ordinary planner, and how to write
them back: no torch here, so a merge without adapters never imports it.

A folder is merged in weight space when its (config, weights) pair changed differently on
several branches; a folder changed on one side only is an ordinary whole-file take.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mvc.errors import MvcError
from mvc.formats.peft import adapter_folders, config_path, weights_path

SVD_METHODS = ("auto", "exact", "randomized")
COMBINES = ("svd", "cat")
INTO = ("adapter", "model")


@dataclass(frozen=True)
class AdapterOptions:
    """How merged adapter modules are written back."""

    combine: str = "svd"  # svd | cat
    rank: int | None = None  # svd output rank (None: the largest input rank)
    into: str = "adapter"  # adapter | model
    svd: str = "auto"  # auto | exact | randomized

    def __post_init__(self) -> None:
        if self.combine not in COMBINES:
            raise MvcError(f"unknown --adapter-combine {self.combine!r}", hint="use svd or cat")
        if self.into not in INTO:
            raise MvcError(f"unknown --into {self.into!r}", hint="use adapter or model")
        if self.svd not in SVD_METHODS:
            raise MvcError(f"unknown SVD method {self.svd!r}", hint=", ".join(SVD_METHODS))
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise MvcError(f"--adapter-rank must be a positive integer, got {self.rank!r}")

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AdapterOptions | None:
        """The options a merge record's ``adapters`` entry names (None: no adapter merged)."""
        options = (record.get("adapters") or {}).get("options")
        return cls(**options) if options is not None else None


def adapter_folders_to_merge(
    base_files: Mapping[str, bytes], branch_files: Sequence[Mapping[str, bytes]]
) -> list[str]:
    """Adapter folders whose (config, weights) pair changed differently on several branches."""
    folders = adapter_folders(set(base_files).union(*branch_files))
    result = []
    for folder in folders:
        paths = (config_path(folder), weights_path(folder))

        def pair(files: Mapping[str, bytes], paths: tuple[str, str] = paths) -> tuple:
            return tuple(files.get(p) for p in paths)

        base = pair(base_files)
        changed = {pair(f) for f in branch_files if pair(f) != base}
        if len(changed) > 1:
            result.append(folder)
    return result


def without_folders(files: Mapping[str, bytes], folders: Sequence[str]) -> dict[str, bytes]:
    """``files`` without the two adapter files of each folder (the planner never sees them)."""
    drop = {p for f in folders for p in (config_path(f), weights_path(f))}
    return {p: v for p, v in files.items() if p not in drop}
