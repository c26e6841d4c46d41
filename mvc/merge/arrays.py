"""The array backends merge arithmetic runs on: numpy on the CPU, torch on a GPU.

Strategies are written once, against the operators numpy arrays and torch tensors share
(``+ - * / abs() < == & | ~``, ``.reshape``, ``.view``) plus the few functions below, and
run unchanged on either backend. The CPU backend is numpy because a merge on the CPU then
never imports torch, which alone costs seconds and a few hundred MiB per process; torch
is loaded only when a GPU will do the work (or when a test asks for its CPU device, to
check the GPU code path against numpy bit for bit).

Arrays hold a tensor's *storage* values; :meth:`ArrayOps.compute` widens them to the
arithmetic dtype (fp32, fp64 for fp64 tensors) and :meth:`ArrayOps.store` narrows a
result back, rounding to nearest-even exactly as torch does. numpy has no bfloat16, so
the numpy backend keeps bf16 (and fp8, which is never computed on) as raw bit patterns.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np

from mvc.formats.dtypes import get_dtype

if TYPE_CHECKING:
    import torch

Array = Any  # a numpy.ndarray or a torch.Tensor, whichever the backend holds

_BF16_NAN = 0x7FC0  # the quiet NaN torch's scalar conversion produces


class ArrayOps(ABC):
    """One backend: where arrays live and the functions the operators do not cover."""

    # Whether several threads computing at once use several cores (numpy releases the GIL
    # inside large operations; torch already parallelises each operation itself).
    concurrent: bool = False
    float32: Any
    float64: Any
    int32: Any
    int64: Any
    bool_: Any

    @abstractmethod
    def load(self, data: Any, dtype: str, shape: tuple[int, ...]) -> Array:
        """An array over raw little-endian bytes (storage dtype), on this backend's device."""

    @abstractmethod
    def to_bytes(self, x: Array) -> bytes | memoryview:
        """The array's raw little-endian bytes, as the store keeps them."""

    @abstractmethod
    def compute(self, x: Array, dtype: str) -> Array:
        """Storage values of a ``dtype`` tensor widened to its compute dtype."""

    @abstractmethod
    def store(self, x: Array, dtype: str) -> Array:
        """Compute-dtype values rounded (to nearest even) to storage values of ``dtype``."""

    @abstractmethod
    def astype(self, x: Array, dtype: Any) -> Array: ...

    @abstractmethod
    def where(self, condition: Array, a: Array, b: Array) -> Array: ...

    @abstractmethod
    def maximum(self, x: Array, value: float) -> Array: ...

    @abstractmethod
    def zeros_like(self, x: Array, dtype: Any) -> Array: ...

    @abstractmethod
    def count_nonzero(self, x: Array) -> int: ...

    @abstractmethod
    def cumsum(self, x: Array) -> Array:
        """Running sum of a flat array (int64 for bool input)."""

    @abstractmethod
    def kth_smallest(self, keys: Array, k: int) -> int:
        """The ``k``-th smallest (1-based) of flat integer ``keys``."""

    @abstractmethod
    def bincount(self, x: Array, minlength: int) -> np.ndarray:
        """Counts of each non-negative integer in ``x``, as a host int64 array."""

    @abstractmethod
    def from_numpy(self, x: np.ndarray) -> Array: ...

    @abstractmethod
    def to_numpy(self, x: Array) -> np.ndarray: ...


def _numpy_storage(dtype: str) -> np.dtype:
    spec = get_dtype(dtype)
    return spec.numpy if spec.numpy is not None else spec.uint


class NumpyOps(ArrayOps):
    """The CPU backend. Python float scalars stay weak (NEP 50): fp32 arrays stay fp32."""

    concurrent = True

    float32 = np.float32
    float64 = np.float64
    int32 = np.int32
    int64 = np.int64
    bool_ = np.bool_

    def __str__(self) -> str:
        return "cpu"

    def load(self, data: Any, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        storage = _numpy_storage(dtype)
        view = memoryview(data).cast("B")
        if view.nbytes != math.prod(shape) * storage.itemsize:
            raise ValueError(f"{view.nbytes} bytes do not hold a {dtype} tensor of shape {shape}")
        return np.frombuffer(view, dtype=storage).reshape(shape)

    def to_bytes(self, x: np.ndarray) -> memoryview:
        return memoryview(np.ascontiguousarray(x)).cast("B")

    def compute(self, x: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "BF16":  # one ufunc pass widening as it shifts (4x an astype, then <<)
            return np.left_shift(x, 16, dtype=np.uint32).view(np.float32)
        return x.astype(np.float64 if dtype == "F64" else np.float32, copy=False)

    def store(self, x: np.ndarray, dtype: str) -> np.ndarray:
        if dtype != "BF16":
            return x.astype(_numpy_storage(dtype), copy=False)
        bits = x.astype(np.float32, copy=False).view(np.uint32)
        # (bits + ((bits >> 16) & 1) + 0x7FFF) >> 16 in one buffer; wraps only for NaNs
        rounded = np.right_shift(bits, 16)
        np.bitwise_and(rounded, 1, out=rounded)
        np.add(rounded, bits, out=rounded)
        np.add(rounded, 0x7FFF, out=rounded)
        np.right_shift(rounded, 16, out=rounded)
        out = rounded.astype(np.uint16)
        nan = np.isnan(x)
        if nan.any():
            out[nan] = _BF16_NAN
        return out

    def astype(self, x: np.ndarray, dtype: Any) -> np.ndarray:
        return x.astype(dtype, copy=False)

    def where(self, condition: np.ndarray, a: Any, b: Any) -> np.ndarray:
        return np.where(condition, a, b)

    def maximum(self, x: np.ndarray, value: float) -> np.ndarray:
        return np.maximum(x, value)

    def zeros_like(self, x: np.ndarray, dtype: Any) -> np.ndarray:
        return np.zeros(x.shape, dtype=dtype)

    def count_nonzero(self, x: np.ndarray) -> int:
        return int(np.count_nonzero(x))

    def cumsum(self, x: np.ndarray) -> np.ndarray:
        return np.cumsum(x, dtype=np.int64 if x.dtype == np.bool_ else None)

    def kth_smallest(self, keys: np.ndarray, k: int) -> int:
        return int(np.partition(keys, k - 1)[k - 1])

    def bincount(self, x: np.ndarray, minlength: int) -> np.ndarray:
        return np.bincount(x, minlength=minlength).astype(np.int64, copy=False)

    def from_numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x


class TorchOps(ArrayOps):
    """The GPU backend (any torch device; on the CPU it serves to test the GPU code path)."""

    def __init__(self, device: torch.device | str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.float32 = torch.float32
        self.float64 = torch.float64
        self.int32 = torch.int32
        self.int64 = torch.int64
        self.bool_ = torch.bool

    def __str__(self) -> str:
        return str(self.device)

    def load(self, data: Any, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
        from mvc.formats.torch_io import to_torch

        return to_torch(data, dtype, shape).to(self.device)

    def to_bytes(self, x: torch.Tensor) -> bytes:
        from mvc.formats.torch_io import tensor_bytes

        return tensor_bytes(x)

    def compute(self, x: torch.Tensor, dtype: str) -> torch.Tensor:
        return x.to(self.float64 if dtype == "F64" else self.float32)

    def store(self, x: torch.Tensor, dtype: str) -> torch.Tensor:
        from mvc.formats.torch_io import torch_dtype

        return x.to(torch_dtype(dtype))

    def astype(self, x: torch.Tensor, dtype: Any) -> torch.Tensor:
        return x.to(dtype)

    def where(self, condition: torch.Tensor, a: Any, b: Any) -> torch.Tensor:
        return self.torch.where(condition, a, b)

    def maximum(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return self.torch.clamp(x, min=value)

    def zeros_like(self, x: torch.Tensor, dtype: Any) -> torch.Tensor:
        return self.torch.zeros_like(x, dtype=dtype)

    def count_nonzero(self, x: torch.Tensor) -> int:
        return int(self.torch.count_nonzero(x))

    def cumsum(self, x: torch.Tensor) -> torch.Tensor:
        return self.torch.cumsum(x, 0)

    def kth_smallest(self, keys: torch.Tensor, k: int) -> int:
        return int(self.torch.kthvalue(keys, k).values)

    def bincount(self, x: torch.Tensor, minlength: int) -> np.ndarray:
        return self.torch.bincount(x, minlength=minlength).cpu().numpy()

    def from_numpy(self, x: np.ndarray) -> torch.Tensor:
        return self.torch.from_numpy(x).to(self.device)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()
