"""Where merge arithmetic runs and in which precision: the one place that decides.

Every strategy computes in float32 (float64 when the tensor itself is float64) and casts
back to the tensor's dtype once, so bf16/fp16 inputs lose nothing in intermediate steps and
the result does not depend on the storage dtype of the inputs beyond that final cast.
"""

from __future__ import annotations

import re

import torch

from mvc.errors import MvcError

_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device; a requested but absent GPU is an error.

    ``auto`` silently falls back to the CPU because that is what the user asked for; an
    explicit ``cuda`` that cannot be honoured must not silently run 50x slower.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = _CUDA_SPEC.match(spec)
    if not match:
        raise MvcError(f"unknown device {spec!r}", hint="use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise MvcError(
            f"device {spec} requested but CUDA is not available",
            hint="use --device cpu (or auto)",
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise MvcError(
            f"device {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device("cuda", index)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The arithmetic dtype for a tensor stored as ``dtype``: fp64 stays fp64, all else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_mergeable(dtype: torch.dtype) -> bool:
    """Whether arithmetic strategies apply; integer and bool tensors can only take a side."""
    return dtype.is_floating_point and dtype.itemsize >= 2
