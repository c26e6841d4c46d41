"""Which models of a commit a lock applies to: model folders, their attached weights, adapters.

Each model directory (safetensors files beside a config.json) is one model. Weight files in
folders below it with no config of their own (task heads) are attached to it; weight files
beside no model are left as they are, unless they look like a transformer (attention
tensors), which cannot be locked without knowing its architecture. A commit holding a PEFT
adapter is refused as a whole (``refuse_adapters``).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

from mvc.errors import MvcError
from mvc.formats.hf import is_model_file
from mvc.formats.peft import adapter_folders
from mvc.repo import Manifest, TensorEntry
from mvc.repo.models import model_view
from mvc.repo.references import RECORD_PREFIX


@dataclass
class LockModel:
    """One model directory of a commit: its config, its weight files and attached ones."""

    directory: str
    config: dict
    manifests: dict[str, Manifest]
    attached: dict[str, Manifest] = field(default_factory=dict)

    def entries(self) -> dict[str, tuple[str, TensorEntry]]:
        found: dict[str, tuple[str, TensorEntry]] = {}
        for path, manifest in {**self.manifests, **self.attached}.items():
            local = posixpath.relpath(path, self.directory or ".")
            for entry in manifest.tensors:
                name = entry.name if path in self.manifests else f"{local}:{entry.name}"
                if name in found:
                    raise MvcError(f"tensor {name!r} appears in two files of {self.label}")
                found[name] = (path, entry)
        return found

    @property
    def label(self) -> str:
        return self.directory or "the repository root"


def lockable_models(files: Mapping[str, bytes]) -> list[LockModel]:
    by_dir: dict[str, dict[str, Manifest]] = {}
    for path, blob in files.items():
        if is_model_file(path) and not path.startswith(RECORD_PREFIX):
            by_dir.setdefault(posixpath.dirname(path), {})[path] = Manifest.from_bytes(blob, path)
    models: dict[str, LockModel] = {}
    loose: dict[str, dict[str, Manifest]] = {}
    for directory, manifests in sorted(by_dir.items()):
        config_path = posixpath.join(directory, "config.json")
        if config_path not in files:
            loose[directory] = manifests
            continue
        try:
            config = json.loads(files[config_path])
        except (UnicodeDecodeError, ValueError) as err:
            raise MvcError(f"{config_path} is not valid JSON: {err}") from None
        model_view(files, directory, manifests)  # refuses an ambiguous model (bad index)
        models[directory] = LockModel(directory, config, manifests)
    for directory, manifests in loose.items():
        owner = _owner(directory, models)
        if owner is not None:
            owner.attached.update(manifests)
        elif _has_attention(manifests):
            raise MvcError(
                f"cannot lock {sorted(manifests)[0]}: no config.json beside it",
                hint="MergeLock detects the architecture from the model's config.json",
            )
        # else: weights beside no model (task heads, probes) are committed unchanged.
    if not models:
        raise MvcError("the commit holds no safetensors model files to lock")
    return [models[d] for d in sorted(models)]


def _owner(directory: str, models: Mapping[str, LockModel]) -> LockModel | None:
    """The model whose folder is the nearest one above ``directory``."""
    parent = directory
    while parent:
        parent = posixpath.dirname(parent)
        if parent in models:
            return models[parent]
    return None


_ATTENTION_MARKERS = ("attn", "attention", "q_proj", "k_proj", "v_proj", "query", "key", "value")


def _has_attention(manifests: Mapping[str, Manifest]) -> bool:
    return any(
        marker in entry.name
        for manifest in manifests.values()
        for entry in manifest.tensors
        for marker in _ATTENTION_MARKERS
    )


def refuse_adapters(files: Mapping[str, bytes]) -> None:
    """Refuse a commit holding a PEFT adapter (docs/mergelock.md, "Adapters").

    An adapter's ΔW = s·B·A is an update of the unlocked weights: on a locked module it is
    wrong without any error unless its factors are transformed with the secret key as
    well, and the lock's equivalence check runs the model, not the model with its adapter.
    Baking it first gives one full model that the lock transforms and checks as a whole.
    """
    folders = adapter_folders(files)
    if folders:
        raise MvcError(
            f"cannot lock a commit holding the LoRA adapter {folders[0] or '.'}/: its factors "
            "update the unlocked weights and would not fit the locked ones",
            hint="bake it into its model first (`mvc bake`), or lock a commit without it",
        )
