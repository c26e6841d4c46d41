"""The git merge driver: `git merge` runs mvc's three-way tensor merge on one model file.

git hands the driver the ancestor's, ours and theirs' blobs (manifests) as temp files; the
merge pipeline of `mvc merge` (`mvc.merge.pipeline`) decides each tensor and computes the
resolved ones into the store, and the merged manifest replaces ours. The recipe comes from
git config (`mvc.mergeStrategy`, defaulting to TIES, and one key per declared parameter:
`mvc.mergeDensity`, `mvc.mergePreset`, `mvc.mergeLambda`, ...), checked like `mvc merge`'s
options before anything is read. There is no merge record: git commits the result itself,
so `mvc verify` cannot prove a merge made this way (use `mvc merge` for auditable merges).
"""

from __future__ import annotations

from pathlib import Path

from mvc.errors import FormatError, MvcError
from mvc.files import atomic_write
from mvc.gitdriver.filter import GitContext, read_manifest
from mvc.merge.declare import Param
from mvc.merge.device import resolve_device
from mvc.merge.params import MergeParams
from mvc.merge.pipeline import run
from mvc.merge.planner import MergeConflicts
from mvc.merge.recipe import Recipe
from mvc.merge.strategies import PARAMETERS
from mvc.repo.ingest import ingest_file
from mvc.repo.manifest import Manifest


def config_key(param: Param) -> str:
    """The git config key (in section `mvc`) of a declared parameter: mergeDensity, ..."""
    return "merge" + "".join(word.capitalize() for word in param.spelling.split("_"))


def driver_recipe(ctx: GitContext) -> Recipe:
    """The driver's recipe from git config: `mvc.mergeStrategy` (default ties) and one key
    per declared parameter (`mvc.mergeDensity`, `mvc.mergePreset`, `mvc.mergeLambda`, ...)."""
    config = ctx.git.get_config_stack()

    def get(key: str) -> str | None:
        try:
            return config.get((b"mvc",), key.encode()).decode()
        except KeyError:
            return None

    given = {}
    for param in PARAMETERS.values():
        text = get(config_key(param))
        if text is not None:
            given[param.name] = _parse(param, text)
    return Recipe(
        base=None,
        parents=("ours", "theirs"),
        contributing=(0, 1),
        names=("ours", "theirs"),
        strategy=get("mergeStrategy") or "ties",
        params=MergeParams(**given),
        masks=False,
    )


def _parse(param: Param, text: str):
    """A git config string as the parameter's type."""
    if param.kind is str:
        return text
    if param.kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return lowered in ("true", "yes", "on", "1")
        raise MvcError(f"git config mvc.{config_key(param)} is not true or false: {text!r}")
    try:
        return param.kind(text)
    except ValueError:
        kind = "an integer" if param.kind is int else "a number"
        raise MvcError(f"git config mvc.{config_key(param)} is not {kind}: {text!r}") from None


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
    recipe = driver_recipe(ctx)
    base_blob, ours_blob, theirs_blob = (_load(ctx, f, path) for f in (ancestor, ours, theirs))
    base = {path: base_blob} if base_blob is not None else {}
    sides = [{path: b} if b is not None else {} for b in (ours_blob, theirs_blob)]
    try:
        merged = run(recipe, ctx.store, base, sides, resolve_device("auto"), record=False)
    except MergeConflicts as err:
        return err.conflicts
    if path not in merged.files:
        return [f"{path}: deleted on one side"]
    data = merged.files[path]
    atomic_write(ours, data.to_bytes() if isinstance(data, Manifest) else data)
    return []
