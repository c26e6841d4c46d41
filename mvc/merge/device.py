"""Where merge arithmetic runs and in which precision: the one place that decides.

``auto`` runs on a CUDA GPU when one is present and on the CPU otherwise. The CPU backend
is numpy (see :mod:`mvc.merge.arrays`), so torch is imported only when a GPU might be
there: a driver node must exist before torch is asked whether CUDA works.

Every strategy computes in float32 (float64 when the tensor itself is float64) and casts
back to the tensor's dtype once, so bf16/fp16 inputs lose nothing in intermediate steps and
the result does not depend on the storage dtype of the inputs beyond that final cast.
"""

from __future__ import annotations

import re
from pathlib import Path

from mvc.errors import MvcError
from mvc.formats.dtypes import get_dtype
from mvc.merge.arrays import ArrayOps, NumpyOps, TorchOps

_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")
# Present whenever an NVIDIA (or ROCm, which torch also drives as "cuda") driver is loaded.
_GPU_DRIVER_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")


def gpu_driver_present() -> bool:
    """A cheap test that spares CPU-only machines torch's import."""
    return any(Path(node).exists() for node in _GPU_DRIVER_NODES)


def _cuda_available() -> bool:
    if not gpu_driver_present():
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(spec: str | ArrayOps = "auto") -> ArrayOps:
    """Turn ``auto|cpu|cuda|cuda:N`` into a backend; a requested but absent GPU is an error.

    ``auto`` silently falls back to the CPU because that is what the user asked for; an
    explicit ``cuda`` that cannot be honoured must not silently run 50x slower. A backend
    instance passes through (the Python API and tests choose one directly).
    """
    if isinstance(spec, ArrayOps):
        return spec
    spec = spec.strip().lower()
    if spec == "auto":
        return TorchOps("cuda") if _cuda_available() else NumpyOps()
    if spec == "cpu":
        return NumpyOps()
    match = _CUDA_SPEC.match(spec)
    if not match:
        raise MvcError(f"unknown device {spec!r}", hint="use auto, cpu, cuda or cuda:N")
    if not _cuda_available():
        raise MvcError(
            f"device {spec} requested but CUDA is not available",
            hint="use --device cpu (or auto)",
        )
    import torch

    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise MvcError(
            f"device {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return TorchOps(torch.device("cuda", index))


def compute_dtype(dtype: str) -> str:
    """The arithmetic dtype for a tensor stored as ``dtype``: fp64 stays fp64, all else fp32."""
    return "F64" if dtype == "F64" else "F32"


def is_mergeable(dtype: str) -> bool:
    """Whether arithmetic strategies apply; integer, bool and fp8 tensors can only take a side."""
    spec = get_dtype(dtype)
    return spec.kind == "float" and spec.itemsize >= 2
