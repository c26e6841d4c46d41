"""`mvc bake`: apply a LoRA adapter to the base model stored next to it, as a commit.

Like PEFT's ``merge_and_unload``: every target module's weight becomes W + s·B·A (Conv1D
layers transposed), and the adapter's full tensors (``modules_to_save``, trained biases)
replace the base's. The base is the stored model that holds the targets: one file, or a
model folder's shards (an LLM's usual layout), written back in that layout with a
consistent index (no tensor changes name, dtype or shard). It streams: one module's weight and factors are in memory at a time,
and every tensor the adapter does not touch keeps its stored chunks (nothing is read).
The commit drops the adapter folder (its effect is now in the weights; the adapter stays
in history) and carries a provenance record (source commit, adapter, model file, each
module's scale), so `mvc lineage` shows it and `mvc verify` recomputes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mvc.errors import ConflictError, MvcError
from mvc.formats.peft import config_path, weights_path
from mvc.lineage.records import PROVENANCE_PATH, PROVENANCE_RECORD, is_locked
from mvc.merge.adapters import find_adapter, find_base_model, oriented, read_side
from mvc.merge.planner import RECORD_PREFIX

if TYPE_CHECKING:
    from mvc.repo import Manifest, Repo
    from mvc.store import ObjectStore


@dataclass
class BakeResult:
    commit: str
    source: str
    adapter: str  # folder
    model: str  # model file path, or the folder of a sharded model
    modules: int
    replaced: int


def baked_files(
    repo: Repo, store: ObjectStore, sha: str, folder: str | None
) -> tuple[dict[str, Manifest | bytes], dict[str, Any]]:
    """The baked commit's files (records dropped, adapter removed, model updated) and what
    the provenance record says about it."""
    files = repo.files(sha)
    folder = find_adapter(files, folder, sha[:12])
    side = read_side(files, folder)
    assert side is not None
    model = find_base_model(files, repo.model_files(sha), side, sha[:12])
    fan = side.config.fan_in_fan_out
    deltas = {
        model.targets[m]: (lambda m=m: oriented(fan, side.delta(store, m)))
        for m in side.layout.modules
    }
    replacements = {base: side.manifest.tensor(name) for name, base in side.layout.full.items()}
    drop = {config_path(folder), weights_path(folder)}
    out: dict[str, Manifest | bytes] = {
        p: data for p, data in files.items() if p not in drop and not p.startswith(RECORD_PREFIX)
    }
    out.update(model.baked(store, deltas, replacements))
    details = {
        "adapter": folder,
        "model": model.label,
        "scales": {m: side.scale(m) for m in side.layout.modules},
        "replaced": sorted(replacements),
    }
    return out, details


def bake(
    repo: Repo, rev: str = "HEAD", folder: str | None = None, message: str | None = None
) -> BakeResult:
    """Bake the adapter of the checked-out commit ``rev`` into its base model and commit."""
    with repo.locked():
        sha = repo.resolve(rev)
        if sha != repo.head():
            raise MvcError(
                f"{rev} ({sha[:12]}) is not the checked-out commit",
                hint=f"switch to it first (`mvc switch`), then `mvc bake {rev}`",
            )
        if is_locked(repo, sha):
            raise MvcError(
                f"{rev} ({sha[:12]}) is MergeLock'ed: its base weights are transformed",
                hint="unlock it with its key before baking an adapter into it",
            )
        if not repo.status().clean:
            raise ConflictError(
                "you have uncommitted changes", hint="commit them first (bake writes the tree)"
            )
        files, details = baked_files(repo, repo.store, sha, folder)
        provenance: Mapping[str, Any] = {
            **PROVENANCE_RECORD.header(),
            "kind": "bake",
            "bake_of": sha,
            **details,
            "commit_parents": [sha],
        }
        files[PROVENANCE_PATH] = PROVENANCE_RECORD.encode(provenance)
        text = message or f"Bake {details['adapter'] or '.'}/ into {details['model']}"
        commit = repo.commit_tree(files, [sha], text)
    return BakeResult(
        commit,
        sha,
        details["adapter"],
        details["model"],
        len(details["scales"]),
        len(details["replaced"]),
    )
