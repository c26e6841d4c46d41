"""The equivalence check: the locked model must compute what the original computes.

The transform is exact in real arithmetic, so any visible difference means a bug, an
architecture whose symmetries we misread, or precision lost in the cast. The base model is
built with transformers from its config (never from a hub) with its weights loaded one
module at a time (``lazy_model``), run on one probe batch for each weight set, and compared
on what the lock preserves:

- the final hidden states at the real (unpadded) tokens, mapped back through the stream
  transform when the stream is permuted or rotated (and the folded final norm re-applied);
- the pooler's output, when the model has one;
- the logits of every head that reads the final stream (lm_head, score, named heads).

Padded positions are excluded: their values are meaningless and amplify kernel noise.
For fp32 weights the probe computes in fp64 and the tolerance is 1e-4: the figure then
measures the stored weights (the transform and its one cast to fp32), not the rounding of
fp32 kernels, whose summation order a permuted or rotated stream changes (that alone moved
a MiniLM edited after locking by 1e-5 to 1e-4 depending on the key, at the tolerance's
edge). 16-bit weights are probed in fp32, one module's weights at a time either way. For 16-bit weights it is measured, not assumed:
the original weights are re-rounded with half an epsilon of noise on every tensor the lock
rewrites, and the lock may move outputs at most a few times as far as that does; for
causal LMs the top-1 token must agree about as often as it does under that noise.

transformers is an optional extra (``mvc[hf]``), imported only here and only when called.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mvc.errors import MvcError
from mvc.lock.families import model_type
from mvc.lock.lazy_model import Loader, lazy_model
from mvc.lock.ops import WINDOW_BYTES
from mvc.lock.symmetries import LockTransform

FP32_TOLERANCE = 1e-4
NOISE_FACTOR = 3.0  # the lock may move outputs this many times as far as re-rounding does
TOP1_SLACK = 0.05
PROBE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Model merging averages the weights of several fine-tunes of one base model.",
    "Paris is the capital of France.",
    "A short one.",
)
PROBE_LENGTH = 24


def _transformers():
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise MvcError(
            "the MergeLock equivalence check needs the transformers package",
            hint="install the extra: pip install 'mvc[hf]'",
        ) from None


def probe_batch(
    config: Mapping, tokenizer_dir: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Real sentences through the model's own tokenizer when a folder holds one, else random ids."""
    if tokenizer_dir is not None:
        tokenizer = _transformers().AutoTokenizer.from_pretrained(
            str(tokenizer_dir), local_files_only=True
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return dict(tokenizer(list(PROBE_SENTENCES), padding=True, return_tensors="pt"))
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int) or vocab <= 0:
        raise MvcError("config.json lacks vocab_size; cannot build a probe batch")
    ids = torch.randint(
        0, vocab, (len(PROBE_SENTENCES), PROBE_LENGTH), generator=torch.Generator().manual_seed(0)
    )
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@dataclass(frozen=True)
class Report:
    """How far the locked model's outputs are from the original's, and what was allowed."""

    max_abs_diff: float
    tolerance: float
    scale: float
    noise_diff: float | None = None
    top1: float | None = None
    noise_top1: float | None = None


def _outputs(
    plan: LockTransform,
    config: Mapping,
    names: Collection[str],
    loader: Loader,
    batch: Mapping[str, torch.Tensor],
    map_back: bool,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    prefix = plan.prefix

    def checkpoint_name(local: str) -> str:
        full = prefix + local
        return full if full in names or local not in names else local

    model = lazy_model(
        _transformers(), config, model_type(config), any("pooler." in n for n in names), dtype
    )
    missing = [n for n in model.names if checkpoint_name(n) not in names]
    if missing:
        raise MvcError(
            f"cannot check equivalence: the checkpoint lacks {len(missing)} tensors the "
            f"model needs (first: {missing[0]!r})"
        )
    out = model.run(lambda n: loader(checkpoint_name(n)), batch)
    mask = batch["attention_mask"].bool()
    hidden = out.last_hidden_state[mask].double()
    result = {}
    for head in plan.heads:
        result[f"head {head}"] = _logits(hidden, loader(head))
    if map_back and plan.stream_op is not None:
        hidden = plan.stream_op.apply(hidden, inverse=True)
        if plan.final_scale is not None:
            hidden = hidden * torch.from_numpy(plan.final_scale)
    result["hidden states"] = hidden
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None and plan.pooled_heads:
        for head in plan.pooled_heads:
            result[f"head {head}"] = _logits(pooled.double(), loader(head))
    elif pooled is not None:
        result["pooler output"] = pooled.double()
    return result


def _logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``hidden @ weightᵀ`` in fp64, a window of the head's rows at a time: an fp64 copy of a
    whole LM head (32000 × 2048) would be 0.5 GB."""
    rows = max(1, WINDOW_BYTES // (8 * max(1, weight[0].numel())))
    return torch.cat(
        [hidden @ weight[i : i + rows].double().T for i in range(0, weight.shape[0], rows)], dim=-1
    )


def _difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _top1(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float | None:
    heads = [k for k in a if k.startswith("head ")]
    if not heads:
        return None
    k = heads[0]
    return (a[k].argmax(-1) == b[k].argmax(-1)).double().mean().item()


def _noisy(loader: Loader, rewritten: Collection[str]) -> Loader:
    """``loader`` with every rewritten 16-bit tensor re-rounded after half an epsilon of
    relative noise: about as far as the lock's single cast moves each weight."""

    def load(name: str) -> torch.Tensor:
        tensor = loader(name)
        if name not in rewritten or torch.finfo(tensor.dtype).bits > 16:
            return tensor
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        eps = torch.finfo(tensor.dtype).eps
        # 1 + eps/2 · u for u uniform in [-1, 1), built in place in fp32 (exact enough for a
        # factor that is then rounded to 16 bits): one working copy, not four fp64 ones.
        factor = torch.rand(tensor.shape, generator=gen, dtype=torch.float32)
        factor.mul_(eps).add_(1 - eps / 2).mul_(tensor)
        return factor.to(tensor.dtype)

    return load


def compare(
    plan: LockTransform,
    config: Mapping,
    names: Collection[str],
    original: Loader,
    locked: Loader,
    batch: Mapping[str, torch.Tensor],
    *,
    low_precision: bool,
    tolerance: float | None = None,
) -> Report:
    """Run both weight sets; raise ``MvcError`` when the locked outputs move too far."""
    dtype = torch.float32 if low_precision else torch.float64
    reference = _outputs(plan, config, names, original, batch, map_back=False, dtype=dtype)
    moved = _outputs(plan, config, names, locked, batch, map_back=True, dtype=dtype)
    diff = _difference(reference, moved)
    scale = max(v.abs().max().item() for v in reference.values())
    top1 = _top1(reference, moved)
    noise_diff = noise_top1 = None
    limit = FP32_TOLERANCE if tolerance is None else tolerance
    if low_precision and tolerance is None:
        noisy = _outputs(
            plan, config, names, _noisy(original, plan.tensor_names), batch, False, dtype
        )
        noise_diff = _difference(reference, noisy)
        noise_top1 = _top1(reference, noisy)
        limit = max(FP32_TOLERANCE, NOISE_FACTOR * noise_diff)
    report = Report(diff, limit, scale, noise_diff, top1, noise_top1)
    if not diff <= limit:  # also catches NaN
        raise MvcError(
            f"equivalence check failed: outputs moved by {diff:.3g} (tolerance {limit:.3g})",
            hint="nothing was written; the transform does not preserve this model's outputs",
        )
    if top1 is not None and noise_top1 is not None and top1 < min(noise_top1, 1.0) - TOP1_SLACK:
        raise MvcError(
            f"equivalence check failed: top-1 tokens agree on {top1:.0%} of the probe "
            f"(re-rounding alone keeps {noise_top1:.0%})",
            hint="nothing was written; the transform does not preserve this model's outputs",
        )
    return report


def check_equivalence(
    original: Mapping[str, torch.Tensor],
    transformed: Mapping[str, torch.Tensor],
    config: Mapping,
    plan: LockTransform,
    *,
    tokenizer_dir: str | Path | None = None,
    batch: Mapping[str, torch.Tensor] | None = None,
    tolerance: float | None = None,
) -> Report:
    """``compare`` over two in-memory weight sets (the probe is ``batch`` or built here)."""
    if batch is None:
        batch = probe_batch(config, tokenizer_dir)
    low = any(
        torch.finfo(original[n].dtype).bits <= 16
        for n in plan.tensor_names
        if original[n].dtype.is_floating_point
    )
    return compare(
        plan,
        config,
        set(original),
        original.__getitem__,
        transformed.__getitem__,
        batch,
        low_precision=low,
        tolerance=tolerance,
    )

