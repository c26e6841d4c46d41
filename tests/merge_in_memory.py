"""In-memory drivers of the chunked strategy protocol, for tests.

They run exactly what the streaming executor runs (statistics passes over row chunks, then
a per-chunk combine) over torch tensors already in memory, so strategy tests and the
mergekit/PEFT oracles exercise the executor's code path without a repository. Each chunk
goes to the chosen backend (numpy on the CPU) as its raw bytes, as the executor's chunks do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from mvc.errors import MvcError
from mvc.formats.torch_io import dtype_name, tensor_bytes, to_torch
from mvc.merge.arrays import ArrayOps
from mvc.merge.device import resolve_device
from mvc.merge.lines import count_layers
from mvc.merge.params import MergeParams
from mvc.merge.strategies.base import Chunk, Strategy, TensorSpec, TensorStats


def _chunks(
    spec: TensorSpec,
    base: torch.Tensor | None,
    thetas: Sequence[torch.Tensor],
    chunk_rows: int | None,
    ops: ArrayOps,
) -> Iterator[Chunk]:
    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(1) if not spec.shape else t

    step = max(1, chunk_rows or spec.rows)
    for start in range(0, max(spec.rows, 1), step):
        stop = min(start + step, spec.rows)
        shape = (stop - start, *spec.shape[1:]) if spec.shape else ()

        def part(
            t: torch.Tensor, start: int = start, stop: int = stop, shape: tuple = shape
        ) -> object:
            return ops.load(tensor_bytes(rows(t)[start:stop]), spec.dtype, shape)

        yield Chunk(
            spec,
            start,
            None if base is None else part(base),
            tuple(part(t) for t in thetas),
            ops,
        )


def _spec(name: str, base: torch.Tensor | None, thetas: Sequence[torch.Tensor]) -> TensorSpec:
    if not thetas:
        raise MvcError(f"nothing to merge for {name}: no branches")
    first = thetas[0]
    for t in [*thetas, *([base] if base is not None else [])]:
        if t.shape != first.shape or t.dtype != first.dtype:
            raise MvcError(
                f"{name}: shapes/dtypes differ ({tuple(t.shape)} {t.dtype} vs "
                f"{tuple(first.shape)} {first.dtype})"
            )
    return TensorSpec(name, tuple(first.shape), dtype_name(first.dtype), len(thetas))


def merge_tensor(
    strategy: Strategy,
    params: MergeParams,
    base: torch.Tensor | None,
    thetas: Sequence[torch.Tensor],
    *,
    name: str,
    chunk_rows: int | None = None,
    device: str | ArrayOps = "cpu",
    masks: bool = False,
    model_context: object = None,
    n_layers: int = 0,
) -> tuple[torch.Tensor, TensorStats]:
    """Merge one tensor through the chunked protocol; returns (merged on CPU, stats).

    ``chunk_rows`` splits dim 0 (None: one chunk). With ``masks`` the stats carry each
    branch's packed TALL mask. Strategies with model-wide statistics need
    ``model_context`` (use :func:`merge_tensors`); ``n_layers`` is the model's block count
    ``--lines`` places a layer by (:func:`merge_tensors` counts it).
    """
    ops = resolve_device(device)
    spec = dataclasses.replace(_spec(name, base, thetas), n_layers=n_layers)
    if base is None and strategy.needs_base:
        raise MvcError(f"strategy {strategy.name} needs the merge base of {name}")
    job = strategy.tensor_job(params, spec, model_context, masks=masks)
    while (p := job.next_pass()) is not None:
        for chunk in _chunks(spec, base, thetas, chunk_rows, ops):
            p.update(chunk)
    parts = [
        to_torch(bytearray(ops.to_bytes(out)), spec.dtype, tuple(out.shape))
        for out in (job.combine(c) for c in _chunks(spec, base, thetas, chunk_rows, ops))
    ]
    merged = torch.cat(parts) if spec.shape else parts[0].reshape(())
    return merged.reshape(spec.shape), job.stats()


def merge_tensors(
    strategy: Strategy,
    params: MergeParams,
    base: Mapping[str, torch.Tensor],
    thetas: Sequence[Mapping[str, torch.Tensor]],
    *,
    chunk_rows: int | None = None,
    device: str | ArrayOps = "cpu",
    masks: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, TensorStats]]:
    """Merge every tensor of ``base`` (all sent through the strategy, in ``base``'s order).

    Runs the strategy's model-wide passes first (e.g. ``--preset paper``), then each tensor.
    """
    ops = resolve_device(device)
    names = list(base)
    for i, branch in enumerate(thetas):
        missing = [n for n in names if n not in branch]
        if missing:
            raise MvcError(f"branch {i} lacks tensor {missing[0]}")
    specs = {n: _spec(n, base[n], [b[n] for b in thetas]) for n in names}
    strategy.check(params, len(thetas))
    context = None
    model_job = strategy.model_job(params, list(specs.values()))
    if model_job is not None:
        while (p := model_job.next_pass()) is not None:
            for n in names:
                for chunk in _chunks(specs[n], base[n], [b[n] for b in thetas], chunk_rows, ops):
                    p.update(specs[n], chunk)
        context = model_job.context()
    merged, stats = {}, {}
    n_layers = count_layers(names)
    for n in names:
        merged[n], stats[n] = merge_tensor(
            strategy,
            params,
            base[n],
            [b[n] for b in thetas],
            name=n,
            chunk_rows=chunk_rows,
            device=ops,
            masks=masks,
            model_context=context,
            n_layers=n_layers,
        )
    return merged, stats


def unpack_mask(data: bytes, numel: int) -> np.ndarray:
    """The bool mask (flat) of ``numel`` elements packed by ``MaskPacker``."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=numel)
    return bits.astype(bool)
