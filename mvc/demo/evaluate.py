"""Score encoders on the demo tasks, and the figure the demo must show: gain retention.

Protocol (the same for every row of the demo's table):

- a *branch* is scored with its own encoder and the head trained jointly with it;
- a *merged* (or locked, unmerged, extracted) encoder is scored on each task with that
  task's branch head, unchanged: this is what a user shipping the merge would run;
- the *base* is scored on each task with a linear probe: a head trained to convergence on
  the frozen base features of the task's train split. Re-using a branch head on the base
  would understate the base (that head was co-adapted to the fine-tuned features) and so
  flatter every gain; the probe is the best the base encoder can do with a linear head.

Gain retention of a merge on a task is (acc(merged) - acc(base)) / (acc(branch) - acc(base)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvc.demo.tasks import Example, Task
from mvc.demo.train import (
    THREADS,
    Head,
    bundled_model_dir,
    embed,
    load_encoder,
    load_tokenizer,
)

if TYPE_CHECKING:
    import torch

# An encoder given to this module: a Hugging Face folder, a loaded model, or a state dict
# (tensor name -> tensor) that fits the bundled model's config.
Encoder = str | Path | Mapping[str, "torch.Tensor"] | Any

EVAL_BATCH = 64


def as_model(encoder: Encoder, config_dir: str | Path | None = None) -> Any:
    """Load ``encoder`` as a ``transformers`` model in eval mode.

    A state dict is loaded strictly into a model built from ``config_dir`` (default: the
    bundled model), so a merge that lost or renamed a tensor fails loudly.
    """
    if isinstance(encoder, (str, Path)):
        model = load_encoder(encoder)
    elif isinstance(encoder, Mapping):
        model = load_encoder(config_dir if config_dir is not None else bundled_model_dir())
        # Buffers such as ``embeddings.position_ids`` are rebuilt by the model; older
        # checkpoints (the bundled one) still carry them, newer saves do not.
        buffers = {name for name, _ in model.named_buffers()}
        params = {name: t for name, t in encoder.items() if name not in buffers}
        missing = set(model.state_dict()) - buffers - set(params)
        unexpected = set(params) - set(model.state_dict())
        if missing or unexpected:
            raise ValueError(
                f"encoder tensors do not fit the model: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        model.load_state_dict(params, strict=False)
    else:
        model = encoder
    return model.eval()


def features(model: Any, tokenizer: Any, examples: tuple[Example, ...]) -> torch.Tensor:
    """Frozen mean-pooled features of ``examples`` (no gradients, batched)."""
    import torch

    torch.set_num_threads(THREADS)
    with torch.inference_mode():
        parts = [
            embed(model, tokenizer, [e.text for e in examples[i : i + EVAL_BATCH]])
            for i in range(0, len(examples), EVAL_BATCH)
        ]
    return torch.cat(parts)


def _labels(examples: tuple[Example, ...]) -> torch.Tensor:
    import torch

    return torch.tensor([e.label for e in examples])


def accuracy(
    encoder: Encoder,
    head: Head,
    task: Task,
    split: str = "test",
    config_dir: str | Path | None = None,
) -> float:
    """Fraction of ``task``'s ``split`` that ``head`` on top of ``encoder`` gets right."""
    if head.task != task.name or tuple(head.labels) != tuple(task.labels):
        raise ValueError(f"head for {head.task!r} {head.labels} does not fit task {task.name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    examples = task.test if split == "test" else task.train
    model = as_model(encoder, config_dir)
    feats = features(model, load_tokenizer(config_dir), examples)
    predictions = head.logits(feats).argmax(-1)
    return float((predictions == _labels(examples)).float().mean())


def accuracies(
    encoder: Encoder,
    heads: Mapping[str, Head],
    tasks: Sequence[Task],
    config_dir: str | Path | None = None,
) -> dict[str, float]:
    """Test accuracy of ``encoder`` on each task with ``heads[task.name]``: one table row.

    Loads the encoder once for all tasks, which is most of the cost.
    """
    model = as_model(encoder, config_dir)
    return {
        task.name: accuracy(model, heads[task.name], task, config_dir=config_dir) for task in tasks
    }


def linear_probe(
    encoder: Encoder,
    task: Task,
    config_dir: str | Path | None = None,
    l2: float = 1e-3,
    iterations: int = 200,
) -> Head:
    """A head fitted to convergence on frozen ``encoder`` features of the train split.

    L2-regularised logistic regression by L-BFGS on standardised features, folded back into
    a plain linear head; ``l2`` is small so the probe is not held back by its regulariser.
    """
    import torch

    model = as_model(encoder, config_dir)
    x = features(model, load_tokenizer(config_dir), task.train)
    y = _labels(task.train)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    weight = torch.zeros(len(task.labels), x.shape[1], requires_grad=True)
    bias = torch.zeros(len(task.labels), requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight.T + bias, y)
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        folded = weight / std
        folded_bias = bias - (folded * mean).sum(1)
    return Head(task.name, task.labels, folded.detach(), folded_bias.detach())


def gain_retention(base: float, branch: float, merged: float) -> float:
    """Share of the branch's gain over the base that the merged model keeps on the task."""
    gain = branch - base
    if gain <= 0:
        raise ValueError(f"the branch ({branch:.3f}) did not improve on the base ({base:.3f})")
    return (merged - base) / gain
