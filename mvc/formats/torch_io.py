"""The bridge between raw safetensors bytes and torch tensors.

This is the only formats module that touches torch, and it imports it inside functions:
``import torch`` costs seconds, and the fast commands must never pay it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mvc.errors import FormatError
from mvc.formats.dtypes import get_dtype
from mvc.formats.safetensors import (
    Header,
    build_header,
    parse_header,
    plan_layout,
    write_safetensors,
)

if TYPE_CHECKING:
    import torch

_TORCH_NAMES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "F16": "float16",
    "BF16": "bfloat16",
    "U32": "uint32",
    "I32": "int32",
    "F32": "float32",
    "U64": "uint64",
    "I64": "int64",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a safetensors dtype name."""
    import torch

    return getattr(torch, _TORCH_NAMES[get_dtype(name).name])


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype; dtypes safetensors cannot hold are an error."""
    import torch

    for name, attr in _TORCH_NAMES.items():
        if getattr(torch, attr) == dtype:
            return name
    raise FormatError(f"torch dtype {dtype} has no safetensors equivalent")


def to_torch(buf: Any, dtype_name: str, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """A tensor over ``buf`` (raw little-endian bytes), sharing its memory when that is safe.

    Sharing needs a writable buffer aligned to the dtype: torch cannot mark a tensor
    read-only, so a tensor over read-only memory (bytes, a read-only mmap) would crash or
    corrupt on the first in-place op. Other buffers are copied once.
    """
    import torch

    dtype = get_dtype(dtype_name)
    target = torch_dtype(dtype.name)
    view = memoryview(buf).cast("B")
    shape = tuple(shape)
    if view.nbytes != math.prod(shape) * dtype.itemsize:
        raise ValueError(
            f"{view.nbytes} bytes do not hold a {dtype.name} tensor of shape {list(shape)}"
        )
    if view.nbytes == 0:
        return torch.empty(shape, dtype=target)
    address = np.frombuffer(view, dtype=np.uint8).ctypes.data
    if view.readonly or address % dtype.itemsize:
        view = memoryview(bytearray(view))
    return torch.frombuffer(view, dtype=target).reshape(shape)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's contents as safetensors stores them: contiguous, CPU, little-endian."""
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def state_dict_specs(state_dict: Mapping[str, Any]) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, dtype, shape)`` for each tensor, refusing anything that is not a tensor."""
    import torch

    specs = []
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise FormatError(
                f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor"
            )
        if value.layout != torch.strided:
            raise FormatError(f"state_dict entry {name!r} is a {value.layout} tensor")
        specs.append((name, dtype_name(value.dtype), tuple(value.shape)))
    return specs


def write_state_dict(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
) -> Header:
    """Write a state_dict as a safetensors file laid out as the safetensors library does."""
    specs = state_dict_specs(state_dict)
    raw = build_header(specs, metadata)
    write_safetensors(path, raw, (tensor_bytes(state_dict[t.name]) for t in plan_layout(specs)))
    return parse_header(raw)
