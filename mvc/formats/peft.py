"""PEFT LoRA adapters: the folder layout, `adapter_config.json`, and tensor naming.

An adapter is a folder holding ``adapter_config.json`` and ``adapter_model.safetensors``.
Per target module ``M`` the weights file carries ``lora_A`` (r × in) and ``lora_B``
(out × r), and the module's update is ΔW = s · B · A with s = alpha / r, or alpha / √r
under rsLoRA, where ``rank_pattern``/``alpha_pattern`` override r and alpha per module
(the first pattern key that matches the end of the module name, as PEFT resolves them).
Anything else in the file (``modules_to_save``, trained biases) is a full tensor that
replaces the base model's tensor of the same name.

Only what mvc understands is accepted: other PEFT types (LoHa, LoKr, IA³, ...), DoRA and
LoRA on embeddings are refused by name, so a merge never treats their tensors as plain
LoRA factors.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mvc.errors import FormatError
from mvc.formats.jsonutil import short, strict_loads

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
FACTOR_SUFFIXES = {"A": ".lora_A.weight", "B": ".lora_B.weight"}
# Tensor-name fragments of adapter kinds that look like LoRA files but are not plain LoRA.
_UNSUPPORTED_TENSORS = {
    "lora_magnitude_vector": "DoRA",
    "lora_embedding_A": "LoRA on embeddings",
    "lora_embedding_B": "LoRA on embeddings",
    "hada_w1": "LoHa",
    "lokr_w1": "LoKr",
    "ia3_l": "IA³",
}
_BIASES = ("none", "all", "lora_only")


def config_path(folder: str) -> str:
    return posixpath.join(folder, CONFIG_NAME) if folder else CONFIG_NAME


def weights_path(folder: str) -> str:
    return posixpath.join(folder, WEIGHTS_NAME) if folder else WEIGHTS_NAME


def adapter_folder(path: str) -> str | None:
    """The adapter folder a repository path belongs to, when it is one of the two files."""
    folder, name = posixpath.split(path)
    return folder if name in (CONFIG_NAME, WEIGHTS_NAME) else None


def adapter_folders(paths: Iterable[str]) -> list[str]:
    """Folders (repository-relative, '' for the root) that hold an adapter config."""
    return sorted(
        {posixpath.dirname(p) for p in paths if posixpath.basename(p) == CONFIG_NAME}
    )


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


@dataclass(frozen=True)
class LoraConfig:
    """The parts of a PEFT LoRA config that decide ΔW, validated."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    target_modules: tuple[str, ...] | str = ()
    fan_in_fan_out: bool = False
    modules_to_save: tuple[str, ...] = ()
    bias: str = "none"
    base_model: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, blob: bytes, path: str = CONFIG_NAME) -> LoraConfig:
        """Read an ``adapter_config.json``; unsupported kinds are a one-line FormatError."""
        doc = strict_loads(blob, path)
        if not isinstance(doc, dict):
            raise FormatError(f"{path} is not a JSON object")
        kind = doc.get("peft_type")
        if kind != "LORA":
            raise FormatError(
                f"{path}: adapter type {short(kind)} is not supported (only LoRA)",
                hint="mvc merges, bakes and extracts PEFT LoRA adapters only",
            )
        if doc.get("use_dora"):
            raise FormatError(f"{path}: adapter type DoRA (use_dora) is not supported")
        r = doc.get("r")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise FormatError(f"{path}: r must be a positive integer, got {short(r)}")
        alpha = doc.get("lora_alpha", 8)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
            raise FormatError(f"{path}: lora_alpha must be a number, got {short(alpha)}")
        patterns = {}
        for key in ("rank_pattern", "alpha_pattern"):
            value = doc.get(key) or {}
            if not isinstance(value, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for v in value.values()
            ):
                raise FormatError(f"{path}: {key} must map module names to positive numbers")
            patterns[key] = value
        if any(not isinstance(v, int) for v in patterns["rank_pattern"].values()):
            raise FormatError(f"{path}: rank_pattern ranks must be integers")
        bias = doc.get("bias", "none")
        if bias not in _BIASES:
            raise FormatError(f"{path}: bias must be one of {', '.join(_BIASES)}")
        targets = doc.get("target_modules") or ()
        saved = doc.get("modules_to_save") or ()
        base = doc.get("base_model_name_or_path")
        return cls(
            r=r,
            lora_alpha=float(alpha),
            use_rslora=bool(doc.get("use_rslora", False)),
            rank_pattern=patterns["rank_pattern"],
            alpha_pattern=patterns["alpha_pattern"],
            target_modules=targets if isinstance(targets, str) else tuple(sorted(targets)),
            fan_in_fan_out=bool(doc.get("fan_in_fan_out", False)),
            modules_to_save=tuple(saved),
            bias=bias,
            base_model=base if isinstance(base, str) else None,
            raw=doc,
        )

    def rank_for(self, module: str) -> int:
        key = _pattern_key(self.rank_pattern, module)
        return int(self.rank_pattern[key]) if key is not None else self.r

    def alpha_for(self, module: str) -> float:
        key = _pattern_key(self.alpha_pattern, module)
        return float(self.alpha_pattern[key]) if key is not None else self.lora_alpha

    def scale_for(self, module: str) -> float:
        """s in ΔW = s·B·A for ``module`` (rank and alpha after the per-module patterns)."""
        r = self.rank_for(module)
        return self.alpha_for(module) / (math.sqrt(r) if self.use_rslora else r)

    def describe(self) -> str:
        """One line for status/log/show: kind, rank and targets."""
        targets = (
            self.target_modules
            if isinstance(self.target_modules, str)
            else ", ".join(self.target_modules) or "none"
        )
        extra = []
        if self.rank_pattern:
            extra.append("rank_pattern")
        if self.use_rslora:
            extra.append("rsLoRA")
        if self.fan_in_fan_out:
            extra.append("fan_in_fan_out")
        if self.modules_to_save:
            extra.append(f"modules_to_save: {', '.join(self.modules_to_save)}")
        tail = f"; {'; '.join(extra)}" if extra else ""
        return f"LoRA adapter, r={self.r}, alpha={self.lora_alpha:g}, targets: {targets}{tail}"


@dataclass(frozen=True)
class AdapterLayout:
    """Which tensors of an adapter file are LoRA factors and which are full tensors.

    ``modules`` maps a module name (as in the base model, without PEFT's prefix) to its
    (lora_A, lora_B) tensor names; ``full`` maps a full tensor's name in the adapter to the
    base model's tensor it replaces.
    """

    modules: Mapping[str, tuple[str, str]]
    full: Mapping[str, str]


def base_tensor_name(adapter_name: str) -> str:
    """The base model tensor a full adapter tensor replaces (PEFT's prefix and the
    ``base_layer`` wrapper removed)."""
    name = adapter_name.removeprefix(PREFIX)
    return name.replace(".base_layer.", ".")


def layout(names: Iterable[str], path: str = WEIGHTS_NAME) -> AdapterLayout:
    """Classify an adapter file's tensor names; refuse kinds that are not plain LoRA."""
    factors: dict[str, dict[str, str]] = {}
    full: dict[str, str] = {}
    for name in names:
        for fragment, kind in _UNSUPPORTED_TENSORS.items():
            if fragment in name:
                raise FormatError(
                    f"{path}: adapter type {kind} is not supported ({short(name)})",
                    hint="mvc merges, bakes and extracts PEFT LoRA adapters only",
                )
        for which, suffix in FACTOR_SUFFIXES.items():
            if name.endswith(suffix):
                module = name.removeprefix(PREFIX)[: -len(suffix)]
                factors.setdefault(module, {})[which] = name
                break
        else:
            if ".lora_" in name:
                raise FormatError(f"{path}: unrecognised LoRA tensor {short(name)}")
            full[name] = base_tensor_name(name)
    modules = {}
    for module, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise FormatError(f"{path}: module {short(module)} has no {missing}")
        modules[module] = (pair["A"], pair["B"])
    return AdapterLayout(modules, full)


def check_factor_shapes(
    module: str, rank: int, a_shape: tuple[int, ...], b_shape: tuple[int, ...], path: str
) -> tuple[int, int]:
    """(out, in) of a module's update, after checking A is r×in and B is out×r."""
    if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
        raise FormatError(
            f"{path}: {module}: lora_A {list(a_shape)} and lora_B {list(b_shape)} do not "
            "multiply"
        )
    if a_shape[0] != rank:
        raise FormatError(
            f"{path}: {module}: rank {a_shape[0]} in the weights, {rank} in the config"
        )
    return b_shape[0], a_shape[1]


def output_config(
    template: Mapping[str, Any],
    rank: int,
    module_ranks: Mapping[str, int],
    module_alphas: Mapping[str, float],
    targets: Iterable[str],
    modules_to_save: Iterable[str] = (),
    fan_in_fan_out: bool | None = None,
) -> dict[str, Any]:
    """An adapter config for factors mvc wrote: scale alpha/r (no rsLoRA), with r and alpha
    per module through exact-name patterns wherever a module differs from ``rank``."""
    doc = dict(template)
    doc.update(
        peft_type="LORA",
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        rank_pattern={m: r for m, r in sorted(module_ranks.items()) if r != rank},
        alpha_pattern={
            m: a for m, a in sorted(module_alphas.items()) if a != rank
        },
        target_modules=sorted(targets),
        modules_to_save=sorted(modules_to_save) or None,
    )
    if fan_in_fan_out is not None:
        doc["fan_in_fan_out"] = fan_in_fan_out
    return doc
