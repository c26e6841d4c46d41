"""`mvc extract-lora`: a PEFT LoRA adapter from a full fine-tune's delta against its base.

Per linear module (a 2-D ``*.weight`` that is not an embedding) the update ΔW = W_ft − W_base
is factorised by truncated SVD at the requested rank (B = U·√S, A = √S·Vᵀ, scale 1), and its
relative error ‖ΔW − B·A‖_F / ‖ΔW‖_F is reported. Changed tensors that are not linear
(norms; embeddings when asked) go into ``modules_to_save`` whole; changed biases of target
modules are saved as PEFT saves trained biases (``bias="lora_only"``). Unchanged tensors
are recognised by their chunk ids and never read.

The adapter file is streamed: its header is known before any SVD (shapes follow from the
rank), and each module's factors are computed just ahead of the writer, ``MVC_THREADS``
modules at a time (``mvc.tuning.threads``), so at most that many modules are in memory.
Each worker runs its SVD on one torch thread: these matrices are too small for torch's
intra-op parallelism to pay, and on a busy machine its OpenMP threads wait on each other
(on a busy 2-core VM a MiniLM module's factorisation ran many times slower on two threads
than on one), so the parallelism is across modules instead. The folder is written beside
its final name and renamed into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvc.errors import MvcError
from mvc.formats.peft import CONFIG_NAME, PREFIX, WEIGHTS_NAME, adapter_folder, output_config
from mvc.formats.safetensors import build_header, plan_layout, write_safetensors
from mvc.formats.torch_io import tensor_bytes, torch_dtype
from mvc.merge.lora import check_rank, factorize
from mvc.repo.manifest import TensorEntry
from mvc.repo.state_dicts import load_tensor
from mvc.tuning import threads

if TYPE_CHECKING:
    from mvc.repo import Repo

EMBEDDING_MARKERS = ("embed", "wte", "wpe")


@dataclass
class ExtractResult:
    folder: Path
    rank: int
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # module -> error, method
    saved: list[str] = field(default_factory=list)  # modules_to_save
    biases: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # changed embeddings left out

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "rank": self.rank,
            "modules": self.modules,
            "modules_to_save": self.saved,
            "biases": self.biases,
            "skipped": self.skipped,
        }


def _is_embedding(name: str) -> bool:
    """Whether tensor ``name`` belongs to an embedding table (by its own module's name, so
    BERT's ``embeddings.LayerNorm`` is a norm, saved like any other, not an embedding)."""
    leaf = name.rpartition(".")[0].rpartition(".")[2].lower()
    return any(marker in leaf for marker in EMBEDDING_MARKERS)


def _single_threaded() -> None:
    import torch

    torch.set_num_threads(1)  # per thread: the caller's own setting is left alone


def _module_of(key: str) -> str:
    """The module of an output key ``base_model.model.<module>.lora_A.weight``."""
    return key.removeprefix(PREFIX).rsplit(".", 2)[0]


def _pairs(repo: Repo, rev: str, base: str) -> list[tuple[str, TensorEntry, TensorEntry]]:
    """(file, fine-tuned entry, base entry) for every tensor the fine-tune changed."""
    tuned, original = repo.model_files(rev), repo.model_files(base)
    tuned = {p: m for p, m in tuned.items() if adapter_folder(p) is None}
    common = sorted(set(tuned) & set(original))
    if not common:
        raise MvcError(f"{rev} and {base} share no model file", hint="name the base model's commit")
    changed = []
    for path in common:
        base_names = original[path].by_name()
        for entry in tuned[path].tensors:
            old = base_names.get(entry.name)
            if old is None or (old.dtype, old.shape) != (entry.dtype, entry.shape):
                raise MvcError(
                    f"{path}::{entry.name} has no counterpart of the same shape in {base}",
                    hint="extract-lora needs a fine-tune of that base (same architecture)",
                )
            if old.chunk_ids != entry.chunk_ids:
                changed.append((path, entry, old))
    return changed


def extract_lora(
    repo: Repo,
    rev: str,
    base: str,
    rank: int,
    out: Path,
    *,
    embeddings: bool = False,
    fan_in_fan_out: bool = False,
    svd: str = "auto",
) -> ExtractResult:
    """Write a PEFT-loadable adapter folder ``out`` approximating ``rev`` − ``base``."""
    if rank < 1:
        raise MvcError(f"--rank must be a positive integer, got {rank}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MvcError(f"{out} exists and is not an empty folder")
    changed = _pairs(repo, rev, base)
    linear: dict[str, tuple[TensorEntry, TensorEntry]] = {}
    full: dict[str, TensorEntry] = {}  # output key -> fine-tuned entry
    result = ExtractResult(out, rank)
    for _, entry, old in changed:
        module, _, param = entry.name.rpartition(".")
        if len(entry.shape) == 2 and param == "weight" and not _is_embedding(entry.name):
            shape = entry.shape[::-1] if fan_in_fan_out else entry.shape
            check_rank(rank, (shape[0], shape[1]), module)
            linear[module] = (entry, old)
    for _, entry, _old in changed:
        module, _, param = entry.name.rpartition(".")
        if module in linear and param == "weight":
            continue
        if _is_embedding(entry.name) and not embeddings:
            result.skipped.append(entry.name)
        elif module in linear and param == "bias":
            full[f"{PREFIX}{module}.base_layer.bias"] = entry
            result.biases.append(entry.name)
        elif module not in result.saved:
            result.saved.append(module)
    tuned = repo.model_files(rev)
    by_name = {e.name: e for m in tuned.values() for e in m.tensors}
    for module in result.saved:  # a saved module is saved whole, changed or not
        for name, entry in by_name.items():
            if name.rpartition(".")[0] == module:
                full[f"{PREFIX}{name}"] = entry
    specs = []
    for module, (entry, _) in linear.items():
        rows, cols = entry.shape[::-1] if fan_in_fan_out else entry.shape
        specs.append((f"{PREFIX}{module}.lora_A.weight", entry.dtype, (rank, cols)))
        specs.append((f"{PREFIX}{module}.lora_B.weight", entry.dtype, (rows, rank)))
    specs += [(key, e.dtype, e.shape) for key, e in full.items()]
    if not specs:
        raise MvcError(f"{rev} does not differ from {base}: nothing to extract")

    layout = plan_layout(specs)
    order = list(dict.fromkeys(_module_of(i.name) for i in layout if i.name not in full))

    def factors_of(module: str) -> tuple[dict[str, bytes], dict[str, Any]]:
        entry, old = linear[module]
        update = load_tensor(repo.store, entry).float()
        update -= load_tensor(repo.store, old).float()
        if fan_in_fan_out:
            update = update.T
        f = factorize(update.contiguous(), rank, module, svd)
        dtype = torch_dtype(entry.dtype)
        parts = {"lora_A": tensor_bytes(f.a.to(dtype)), "lora_B": tensor_bytes(f.b.to(dtype))}
        return parts, {"error": f.error, "method": f.method}

    def data() -> Iterator[bytes]:
        workers = threads()
        upcoming = iter(order)
        pending: deque[tuple[str, Future]] = deque()
        ready: dict[str, dict[str, bytes]] = {}
        with ThreadPoolExecutor(
            workers, initializer=_single_threaded, thread_name_prefix="mvc-svd"
        ) as pool:
            for info in layout:
                if info.name in full:
                    yield b"".join(repo.iter_chunks(full[info.name]))
                    continue
                module, which = _module_of(info.name), info.name.split(".")[-2]
                if module not in ready:
                    while len(pending) < workers:  # keep `workers` modules in flight
                        nxt = next(upcoming, None)
                        if nxt is None:
                            break
                        pending.append((nxt, pool.submit(factors_of, nxt)))
                    done, future = pending.popleft()
                    assert done == module, (done, module)
                    ready[module], result.modules[module] = future.result()
                yield ready[module].pop(which)
                if not ready[module]:
                    del ready[module]

    config = output_config(
        {
            "peft_type": "LORA",
            "base_model_name_or_path": None,
            "bias": "lora_only" if result.biases else "none",
            "inference_mode": True,
            "init_lora_weights": True,
            "lora_dropout": 0.0,
            "task_type": None,
        },
        rank,
        {},
        {},
        sorted(linear),
        result.saved,
        fan_in_fan_out,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        header = build_header(specs, {"format": "pt"})
        write_safetensors(staging / WEIGHTS_NAME, header, data())
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.skipped.sort()
    return result
