"""The git merge driver: `git merge` runs mvc's three-way tensor merge on one model file.

git hands the driver the ancestor's, ours and theirs' blobs (manifests) as temp files; the
same planner and streaming executor as `mvc merge` decide each tensor and compute the
resolved ones into the store, and the merged manifest replaces ours. The recipe comes from
git config (`mvc.mergeStrategy`, `mvc.mergeDensity`, `mvc.mergePreset`), defaulting to
TIES; an unknown strategy name is reported when a tensor needs it. There is no merge record: git commits the result itself, so `mvc verify` cannot
prove a merge made this way (use `mvc merge` for auditable merges).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mvc.errors import FormatError, MvcError
from mvc.files import atomic_write
from mvc.gitdriver.filter import GitContext, read_manifest
from mvc.merge.params import MergeParams
from mvc.merge.planner import Planner
from mvc.repo.ingest import ingest_file
from mvc.repo.manifest import Manifest


@dataclass(frozen=True)
class DriverRecipe:
    """What the driver merges with, read from git config."""

    strategy: str = "ties"
    params: MergeParams = MergeParams()

    @classmethod
    def from_config(cls, ctx: GitContext) -> DriverRecipe:
        config = ctx.git.get_config_stack()

        def get(key: str) -> str | None:
            try:
                return config.get((b"mvc",), key.encode()).decode()
            except KeyError:
                return None

        strategy = get("mergeStrategy") or cls.strategy
        density = get("mergeDensity")
        try:
            params = MergeParams(
                density=float(density) if density is not None else 1.0,
                preset=get("mergePreset"),
            )
        except ValueError:
            raise MvcError(f"git config mvc.mergeDensity is not a number: {density!r}") from None
        return cls(strategy, params)


def _load(ctx: GitContext, file: Path, path: str) -> bytes | None:
    """The manifest blob of one side; a raw safetensors blob (committed before the filter
    was installed) is ingested first, an empty file means the side has no such file."""
    with open(file, "rb") as handle:
        if handle.seek(0, 2) == 0:
            return None
        found = read_manifest(handle, path)
    if found is not None:
        return found[1]
    try:
        return ingest_file(ctx.store, file).to_bytes()
    except FormatError as err:
        raise FormatError(f"{path}: {err.message}", hint=err.hint) from None


def merge_file(
    ctx: GitContext,
    ancestor: Path,
    ours: Path,
    theirs: Path,
    path: str,
) -> list[str]:
    """Merge `theirs` into `ours` (rewritten in place); the conflicts, empty on success.

    With conflicts nothing is written: `ours` keeps our version, as git expects.
    """
    recipe = DriverRecipe.from_config(ctx)
    base_blob, ours_blob, theirs_blob = (_load(ctx, f, path) for f in (ancestor, ours, theirs))
    base = {path: base_blob} if base_blob is not None else {}
    sides = [{path: b} if b is not None else {} for b in (ours_blob, theirs_blob)]
    plan = Planner(base, sides, recipe.strategy).plan()
    if plan.conflicts:
        return plan.conflicts
    if path not in plan.files:
        return [f"{path}: deleted on one side"]
    # Only now is arithmetic needed: a conflict is reported before importing the executor.
    from mvc.merge.device import resolve_device
    from mvc.merge.executor import Executor
    from mvc.merge.strategies import get_strategy

    get_strategy(recipe.strategy).check(recipe.params, 2)

    def models(files: dict[str, bytes]) -> dict[str, Manifest]:
        return {p: Manifest.from_bytes(b, p) for p, b in files.items()}

    executor = Executor(
        ctx.store,
        models(base),
        [models(s) for s in sides],
        recipe.params,
        resolve_device("auto"),
        masks=False,
    )
    merged = executor.run(plan)[path]
    data = merged.to_bytes() if isinstance(merged, Manifest) else merged
    atomic_write(ours, data)
    return []
