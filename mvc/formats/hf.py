"""Hugging Face model folders: which files are weights, sharded indexes, and pickles.

Pickle checkpoints (``pytorch_model.bin`` and friends) run arbitrary code when loaded, so
mvc never loads them implicitly; the one exception is the explicit ``mvc import``, which
goes through ``torch.load(weights_only=True)``. Every path read from a file (index shard
names, manifest paths) goes through ``safe_relpath`` before it touches the filesystem.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mvc.errors import FormatError, MvcError, NotFoundError
from mvc.formats.jsonutil import short, strict_loads
from mvc.formats.safetensors import Header

MODEL_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"


def is_model_file(path: str | os.PathLike[str]) -> bool:
    """True for files mvc stores as tensors (safetensors), by name."""
    return Path(path).suffix.lower() in MODEL_SUFFIXES


def check_not_pickle(path: str | os.PathLike[str]) -> None:
    """Refuse a pickle checkpoint, pointing at the opt-in import."""
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise FormatError(
            f"{path} is a pickle checkpoint; mvc never loads pickles",
            hint=f"convert it with `mvc import {path}` (uses torch.load(weights_only=True))",
        )


def check_relpath(relpath: Any) -> str:
    """``relpath`` as a relative POSIX path of plain components, or a one-line FormatError.

    The lexical half of ``safe_relpath``, for paths that name no file on this disk yet
    (an index read from a commit's tree).
    """
    rel = os.fspath(relpath) if isinstance(relpath, os.PathLike) else relpath
    problem = None
    if not isinstance(rel, str) or not rel:
        problem = "not a non-empty string"
    elif "\0" in rel:
        problem = "contains NUL"
    elif "\\" in rel:
        problem = "contains a backslash"
    elif rel.startswith("/"):
        problem = "is absolute"
    elif any(part in ("", ".", "..") for part in rel.split("/")):
        problem = "has an empty, '.' or '..' component"
    if problem:
        raise FormatError(f"unsafe path {short(rel)}: {problem}")
    return rel


def safe_relpath(root: str | os.PathLike[str], relpath: Any) -> Path:
    """``root / relpath``, refusing any relpath that could land outside ``root``.

    ``relpath`` comes from a file (an index, a manifest, a tree), so it is hostile until
    checked: it must be a relative POSIX path of plain components, and must not reach out
    through a symlink already present under ``root``.
    """
    rel = check_relpath(relpath)
    base = Path(root).resolve()
    if not base.joinpath(rel).resolve().is_relative_to(base):
        raise FormatError(f"unsafe path {short(rel)}: leads out of {root} through a symlink")
    return Path(root) / rel


def parse_index(raw: bytes, where: str) -> dict[str, Any]:
    """Validate the bytes of a ``*.safetensors.index.json`` (``where`` names it in errors).

    Every shard must be a safetensors file name with a plain relative path; whether the
    shards exist and hold what the index says is the model view's check
    (``mvc.repo.models``), which sees the whole folder.
    """
    try:
        index = strict_loads(raw, "index")
        if not isinstance(index, dict):
            raise FormatError("index is not a JSON object")
        shards = index.get("weight_map")
        if not isinstance(shards, dict):
            raise FormatError("index has no 'weight_map' object")
        if not isinstance(index.get("metadata", {}), dict):
            raise FormatError("index 'metadata' is not an object")
        for tensor, shard in shards.items():
            if not tensor or "\0" in tensor:
                raise FormatError(f"index has an invalid tensor name {short(tensor)}")
            if not isinstance(shard, str) or not is_model_file(shard):
                raise FormatError(
                    f"index maps {short(tensor)} to {short(shard)}, not a safetensors file"
                )
            check_relpath(shard)
    except FormatError as e:
        raise FormatError(f"{where}: {e.message}", e.hint) from None
    return index


def read_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a ``*.safetensors.index.json`` (shards relative to its folder)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist") from None
    index = parse_index(raw, str(path))
    for shard in index["weight_map"].values():
        try:
            safe_relpath(path.parent, shard)
        except FormatError as e:
            raise FormatError(f"{path}: {e.message}", e.hint) from None
    return index


def index_bytes(weight_map: Mapping[str, str], metadata: Mapping[str, Any]) -> bytes:
    """An index as ``save_pretrained`` writes one (sorted keys, two-space indent)."""
    doc = {"metadata": dict(metadata), "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(text: str | int) -> int:
    """A shard size as transformers' ``max_shard_size`` takes it: ``40MB`` (10^6), ``5GiB``
    (2^30), or a number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise MvcError(
                f"'{text}' is not a size", hint="write bytes or a unit: 40MB, 2GB, 500MiB"
            )
        value = int(match.group(1)) * _SIZE_UNITS[unit]
    if value <= 0:
        raise MvcError(f"'{text}' is not a positive size")
    return value


def weight_map(folder: str | os.PathLike[str]) -> dict[str, str]:
    """Tensor name -> shard file name, from a folder's index (or an index file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / INDEX_NAME
    return read_index(path)["weight_map"]


def import_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None
) -> Path:
    """`mvc import`: convert `src` to `dst` (default: `src` with a .safetensors suffix).

    Refuses to replace an existing file, before loading anything; returns the file written.
    """
    target = Path(dst) if dst is not None else Path(src).with_suffix(".safetensors")
    if target.exists():
        raise MvcError(f"{target} already exists")
    convert_pickle_checkpoint(src, target)
    return target


def convert_pickle_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Header:
    """The opt-in ``mvc import``: load a pickle with ``weights_only=True``, write safetensors.

    Accepts a dict of tensors, or a training checkpoint holding one under ``"state_dict"``.
    """
    import torch

    from mvc.formats.torch_io import write_state_dict

    try:
        obj = torch.load(src, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise NotFoundError(f"{src} does not exist") from None
    except Exception as e:  # anything a hostile or foreign file makes the loader raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise FormatError(
            f"{src}: cannot be loaded with weights_only=True ({type(e).__name__}: {first})"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise FormatError(f"{src}: holds a {type(obj).__name__}, not a dict of tensors")
    try:
        return write_state_dict(dst, obj, metadata={"format": "pt"})
    except FormatError as e:
        raise FormatError(f"{src}: {e.message}", e.hint) from None
