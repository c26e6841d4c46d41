"""Adapters as stored in a commit, and applying ΔWs to a stored base model.

Shared by the adapter merge, `mvc bake` and `mvc extract-lora`: reading one commit's
adapter folder (config + weights manifest, validated together), forming one module's ΔW
from the store, finding the stored base model an adapter updates (a model folder seen as
one model across its shards, as LLMs are stored, or a standalone file), and writing it
back in its own layout with ΔW added to the targeted tensors while every other tensor, and
every shard the adapter does not touch, keeps its stored chunks (read nothing, copy
nothing). One module's tensors are in memory at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mvc.errors import FormatError, MvcError, NotFoundError
from mvc.formats.peft import (
    AdapterLayout,
    LoraConfig,
    adapter_folder,
    adapter_folders,
    check_factor_shapes,
    config_path,
    layout,
    weights_path,
)
from mvc.formats.torch_io import torch_dtype
from mvc.merge.lora import delta
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.models import (
    ModelView,
    folder_of,
    index_path,
    layout_index,
    model_folders,
    model_view,
    model_views,
)
from mvc.repo.state_dicts import load_tensor, store_tensor
from mvc.repo.worktree import is_model_path
from mvc.store import ObjectStore


@dataclass(frozen=True)
class AdapterSide:
    """One commit's adapter in one folder."""

    folder: str
    config: LoraConfig
    manifest: Manifest
    layout: AdapterLayout
    shapes: Mapping[str, tuple[int, int]]  # module -> (out, in)

    def entries(self, module: str) -> tuple[TensorEntry, TensorEntry]:
        a, b = self.layout.modules[module]
        return self.manifest.tensor(a), self.manifest.tensor(b)

    def scale(self, module: str) -> float:
        return self.config.scale_for(module)

    def rank(self, module: str) -> int:
        return self.entries(module)[0].shape[0]

    def identity(self, module: str) -> tuple[Any, ...] | None:
        """What decides the module's ΔW, compared without reading a byte of it."""
        if module not in self.layout.modules:
            return None
        a, b = self.entries(module)
        return (a.dtype, a.chunk_ids, b.dtype, b.chunk_ids, self.scale(module))

    def delta(self, store: ObjectStore, module: str) -> torch.Tensor:
        a, b = self.entries(module)
        return delta(load_tensor(store, a), load_tensor(store, b), self.scale(module))


def read_side(files: Mapping[str, bytes], folder: str) -> AdapterSide | None:
    """The adapter in ``folder`` of a commit's files (path -> blob), None when absent."""
    cpath, wpath = config_path(folder), weights_path(folder)
    config_blob, weights_blob = files.get(cpath), files.get(wpath)
    if config_blob is None and weights_blob is None:
        return None
    if config_blob is None:
        raise FormatError(f"{wpath} has no adapter_config.json next to it")
    if weights_blob is None:
        raise FormatError(f"{cpath} has no adapter_model.safetensors next to it")
    config = LoraConfig.parse(config_blob, cpath)
    manifest = Manifest.from_bytes(weights_blob, wpath)
    names = layout((t.name for t in manifest.tensors), wpath)
    shapes = {}
    for module in names.modules:
        a, b = (manifest.tensor(n) for n in names.modules[module])
        shapes[module] = check_factor_shapes(
            module, config.rank_for(module), a.shape, b.shape, wpath
        )
    return AdapterSide(folder, config, manifest, names, shapes)


def find_adapter(files: Mapping[str, bytes], folder: str | None, rev: str) -> str:
    """The adapter folder to use: ``folder`` when given (checked), else the only one."""
    folders = adapter_folders(files)
    if folder is not None:
        folder = folder.strip("/")
        folder = "" if folder == "." else folder
        if folder not in folders:
            if weights_path(folder) in files:
                raise FormatError(f"{weights_path(folder)} has no adapter_config.json next to it")
            raise NotFoundError(f"no adapter in '{folder or '.'}' at {rev}")
        return folder
    if not folders:
        raise NotFoundError(f"{rev} holds no adapter (no adapter_config.json)")
    if len(folders) > 1:
        shown = ", ".join(f or "." for f in folders)
        raise MvcError(f"{rev} holds several adapters ({shown})", hint="name one as ADAPTER_PATH")
    return folders[0]


@dataclass(frozen=True)
class BaseModel:
    """The stored model an adapter updates: a model folder's shards (with their index, as
    ``mvc.repo.models`` sees it: tensors named by (folder, name)) or one standalone file."""

    label: str  # the shard path when the model is one file, else the folder
    view: ModelView
    targets: dict[str, str]  # module -> the weight tensor it updates

    def baked(
        self,
        store: ObjectStore,
        deltas: Mapping[str, Callable[[], torch.Tensor]],
        replacements: Mapping[str, TensorEntry],
    ) -> dict[str, Manifest | bytes]:
        """Every shard with its updated tensors (a shard the adapter does not touch keeps its
        manifest), in the base's own layout, and its index made to fit them."""
        shards: dict[str, Manifest] = {}
        for path, manifest in self.view.shards.items():
            if any(e.name in deltas or e.name in replacements for e in manifest.tensors):
                manifest = bake_manifest(store, manifest, deltas, replacements)
            shards[path] = manifest
        out: dict[str, Manifest | bytes] = dict(shards)
        if self.view.index_raw is not None:
            folder = self.view.folder
            out[index_path(folder)] = layout_index(folder, shards, self.view.index_raw)
        return out


def _candidates(
    files: Mapping[str, bytes], models: Mapping[str, Manifest], adapter: str
) -> list[ModelView]:
    """Every model of a commit outside adapter folders: model folders (all their shards as
    one model), then each safetensors file that stands alone."""
    paths = [p for p in files if adapter_folder(p) is None or not is_model_path(p)]
    folders = model_folders([paths])
    views = [
        v for v in model_views({p: files[p] for p in paths}, folders, models).values() if v.shards
    ]
    for path in sorted(models):
        if path == weights_path(adapter) or adapter_folder(path) is not None:
            continue
        if folder_of(path) not in folders and is_model_path(path):
            views.append(model_view({path: files[path]}, folder_of(path), models))
    return views


def find_base_model(
    files: Mapping[str, bytes], models: Mapping[str, Manifest], side: AdapterSide, rev: str
) -> BaseModel:
    """The stored model (a model folder, however sharded, or one file) holding every
    tensor the adapter updates; refuses target shapes that do not fit."""
    wanted = [f"{m}.weight" for m in side.layout.modules] + list(side.layout.full.values())
    for view in _candidates(files, models, side.folder):
        if not all(name in view.where for name in wanted):
            continue
        targets = {m: f"{m}.weight" for m in side.layout.modules}
        for module, name in targets.items():
            out, inp = side.shapes[module]
            expect = (inp, out) if side.config.fan_in_fan_out else (out, inp)
            entry = view.entry(name)
            assert entry is not None
            if tuple(entry.shape) != expect:
                raise MvcError(
                    f"{view.where[name]}::{name} is {list(entry.shape)}, but the adapter's "
                    f"{module} updates a {list(expect)} weight",
                    hint="the adapter was trained on a different base (or fan_in_fan_out is wrong)",
                )
        label = next(iter(view.shards)) if len(view.shards) == 1 else (view.folder or ".")
        return BaseModel(label, view, targets)
    raise NotFoundError(
        f"{rev} holds no base model with the adapter's target modules "
        f"(e.g. {wanted[0] if wanted else '?'})",
        hint="commit the base model (one safetensors file or a sharded folder) next to the adapter",
    )


def oriented(side_fan_in_fan_out: bool, update: torch.Tensor) -> torch.Tensor:
    """ΔW in the base weight's layout: Conv1D (fan_in_fan_out) stores in × out."""
    return update.T if side_fan_in_fan_out else update


def bake_manifest(
    store: ObjectStore,
    model: Manifest,
    deltas: Mapping[str, Callable[[], torch.Tensor]],
    replacements: Mapping[str, TensorEntry],
) -> Manifest:
    """``model`` with ΔW added to each tensor named in ``deltas`` (computed on demand, one at
    a time) and full tensors swapped in from ``replacements``; the header is unchanged
    because no name, dtype or shape changes."""
    entries = []
    for entry in model.tensors:
        if entry.name in replacements:
            new = replacements[entry.name]
            if (new.dtype, new.shape) != (entry.dtype, entry.shape):
                raise MvcError(
                    f"adapter tensor for {entry.name} is {new.dtype}{list(new.shape)}, the "
                    f"model's is {entry.dtype}{list(entry.shape)}"
                )
            entries.append(
                TensorEntry(entry.name, entry.dtype, entry.shape, entry.nbytes, new.chunks)
            )
        elif entry.name in deltas:
            weight = load_tensor(store, entry)
            merged = (weight.float() + deltas[entry.name]()).to(torch_dtype(entry.dtype))
            entries.append(store_tensor(store, entry.name, merged, entry))
        else:
            entries.append(entry)
    return Manifest(header_raw=model.header_raw, tensors=tuple(entries))
