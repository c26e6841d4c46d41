"""The equivalence check: the locked model must compute what the original computes.

The transform is exact in real arithmetic, so any visible difference means a bug, an
architecture whose attention we misread, or precision lost in the cast. We build the
model with transformers from its config (never from a hub), run both weight sets on one
probe batch in fp32, and compare the final hidden states at the real (unpadded) tokens.
Padded positions are excluded on purpose: their values are meaningless and they amplify
fp32 kernel noise to about the size of the tolerance.

transformers is an optional extra (``mvc[hf]``), imported only here and only when called.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from mvc.errors import MvcError
from mvc.lock.families import model_type, plan_lock
from mvc.lock.transform import shapes_of

FP32_TOLERANCE = 1e-4
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


def default_tolerance(tensors: Mapping[str, torch.Tensor], names: list[str], scale: float) -> float:
    """1e-4 for fp32/fp64 weights; for 16-bit weights one machine epsilon of the output scale.

    A 16-bit cast of the locked weights is a fresh rounding of every attention weight, which
    moves outputs by a fraction of the dtype's epsilon (about 0.3 eps for bf16 MiniLM);
    a wrong transform moves them by the order of the outputs themselves.
    """
    eps = max(torch.finfo(tensors[n].dtype).eps for n in names)
    if eps <= torch.finfo(torch.float32).eps:
        return FP32_TOLERANCE
    return max(FP32_TOLERANCE, eps * scale)


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


def _build_model(config: Mapping):
    """The model class for ``config`` in fp32 (the last one is reused: every check loads a
    full state dict into it, so its random initial weights never matter)."""
    return _cached_model(json.dumps(dict(config), sort_keys=True, default=str))


@functools.lru_cache(maxsize=1)
def _cached_model(config_json: str):
    transformers = _transformers()
    config = json.loads(config_json)
    kind = model_type(config)
    options = {k: v for k, v in config.items() if k != "model_type"}
    try:
        hf_config = transformers.AutoConfig.for_model(kind, **options)
    except (KeyError, ValueError) as err:
        raise MvcError(
            f"transformers cannot build a {kind!r} model from config.json: {err}"
        ) from None
    model = transformers.AutoModel.from_config(hf_config, attn_implementation="eager")
    return model.to(torch.float32).eval()


def _load(model, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
    expected = set(model.state_dict())
    state = {}
    for name, tensor in tensors.items():
        local = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        if local in expected:
            state[local] = tensor
    missing = sorted(expected - set(state))
    if missing:
        raise MvcError(
            f"cannot check equivalence: the checkpoint lacks {len(missing)} tensors the "
            f"model needs (first: {missing[0]!r})"
        )
    model.load_state_dict(state, strict=False)


def output_difference(
    original: Mapping[str, torch.Tensor],
    transformed: Mapping[str, torch.Tensor],
    config: Mapping,
    batch: Mapping[str, torch.Tensor],
) -> tuple[float, float]:
    """(max abs difference, max abs original value) of the final hidden states at real tokens."""
    prefix = plan_lock(config, shapes_of(original)).prefix
    model = _build_model(config)
    mask = batch["attention_mask"].bool()
    outputs = []
    for tensors in (original, transformed):
        _load(model, tensors, prefix)
        with torch.no_grad():
            outputs.append(model(**batch).last_hidden_state[mask].double())
    return (outputs[0] - outputs[1]).abs().max().item(), outputs[0].abs().max().item()


def check_equivalence(
    original: Mapping[str, torch.Tensor],
    transformed: Mapping[str, torch.Tensor],
    config: Mapping,
    *,
    tokenizer_dir: str | Path | None = None,
    batch: Mapping[str, torch.Tensor] | None = None,
    tolerance: float | None = None,
) -> float:
    """Max abs output difference; raises ``MvcError`` when it exceeds the tolerance.

    The probe is ``batch`` when given, else ``probe_batch(config, tokenizer_dir)``.
    """
    plan = plan_lock(config, shapes_of(original))
    if batch is None:
        batch = probe_batch(config, tokenizer_dir)
    diff, scale = output_difference(original, transformed, config, batch)
    limit = (
        tolerance
        if tolerance is not None
        else default_tolerance(original, plan.tensor_names, scale)
    )
    if not diff <= limit:  # also catches NaN
        raise MvcError(
            f"equivalence check failed: outputs moved by {diff:.3g} (tolerance {limit:.3g})",
            hint="nothing was written; the transform does not preserve this model's outputs",
        )
    return diff
