"""`mvc export`: a merge's recipe in the formats other tools read.

- `mergekit`: a mergekit YAML (`merge_method`, `base_model`, `models` with the per-model
  parameters, the shared ones, `dtype`), all derived from the strategy's declarations:
  its mergekit method, and each parameter's mergekit name and scope. Run on folders
  holding each commit's checkout, it reproduces the merge within floating-point noise when
  the merge was made with `--preset mergekit --all-tensors` (mergekit knows no history, so
  it sends every tensor through the method); the YAML says so in a comment otherwise.
- `model-card`: Hugging Face model-card metadata, with `base_model` listing the merged
  models and `base_model_relation: merge`, as YAML front matter and a short description.

Model locations are given per parent name (`base` for the merge base); without one, a
placeholder folder named after the parent is written.

A merge of LoRA adapters is exported with mergekit's `MODEL+LORA` references: mergekit
would merge an adapter folder's `lora_A`/`lora_B` as tensors (the cross-term error mvc
avoids), but applies a LoRA to its model first when named that way, so its merge is then
one of the updates ΔW at full rank: what `mvc merge --into model` writes.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from mvc.errors import MvcError
from mvc.formats.peft import config_path
from mvc.lineage.records import merge_recipe_text, merge_record, parent_label, per_branch
from mvc.merge.declare import SEED
from mvc.merge.strategies import get_strategy, strategies
from mvc.repo.models import model_folders

if TYPE_CHECKING:
    from mvc.repo import Repo

FORMATS = ("mergekit", "model-card")

_TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def model_locations(record: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, str]:
    """Location of the base and of each parent, by label (placeholders where not given)."""
    labels = ["base"] + [parent_label(record, i) for i in range(len(record["parents"]))]
    unknown = [k for k in given if k not in labels]
    if unknown:
        raise MvcError(
            f"--model-path names '{unknown[0]}', which is not in this merge",
            hint=f"use one of: {', '.join(labels)}",
        )
    return {label: given.get(label, f"./checkouts/{label}") for label in labels}


def _storage_dtype(repo: Repo, base: str) -> str | None:
    counts: dict[str, int] = {}
    for manifest in repo.model_files(base).values():
        for tensor in manifest.tensors:
            if tensor.dtype in _TORCH_NAMES:
                counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.nbytes
    return _TORCH_NAMES[max(counts, key=lambda k: counts[k])] if counts else None


def mergekit_yaml(repo: Repo, rev: str, paths: Mapping[str, str] | None = None) -> str:
    """A mergekit YAML reproducing merge `rev`, with comments on what mergekit cannot match."""
    sha, record = merge_record(repo, rev)
    strategy = get_strategy(record["strategy"])
    if strategy.mergekit is None:
        exportable = [s.name for s in strategies() if s.mergekit is not None]
        raise MvcError(
            f"mergekit has no counterpart of strategy {strategy.name}",
            hint=f"exportable strategies: {', '.join(exportable)}",
        )
    if record.get("rules"):
        raise MvcError("a merge with per-tensor --config rules cannot be exported to mergekit")
    where = model_locations(record, paths or {})
    if record.get("adapters"):
        where = _with_adapter(repo, record, where)
    params: dict[str, Any] = record["params"]
    contributing: list[int] = record["contributing"]
    exported = [p for p in strategy.declared() if p.mergekit is not None]
    per_model = {
        p.mergekit: per_branch(params.get(p.name, p.default), len(contributing))
        for p in exported
        if p.per_branch
    }
    models = []
    for position, index in enumerate(contributing):
        entry: dict[str, Any] = {"model": where[parent_label(record, index)]}
        model_params = {k: v[position] for k, v in per_model.items() if v is not None}
        if model_params:
            entry["parameters"] = model_params
        models.append(entry)
    config: dict[str, Any] = {"merge_method": strategy.mergekit}
    if strategy.mergekit_base == "first":
        config["base_model"] = models[0]["model"]
    elif strategy.mergekit_base == "base":
        config["base_model"] = where["base"]
    config["models"] = models
    global_params = {
        p.mergekit: value
        for p in exported
        if not p.per_branch and not p.omitted_in_mergekit(value := params.get(p.name, p.default))
    }
    if global_params:
        config["parameters"] = global_params
    config["dtype"] = "float32"
    storage = _storage_dtype(repo, record["base"])
    if storage and storage != "float32":
        config["out_dtype"] = storage
    return _comments(sha, record, where) + yaml.safe_dump(config, sort_keys=False)


def _with_adapter(
    repo: Repo, record: Mapping[str, Any], where: Mapping[str, str]
) -> dict[str, str]:
    """Each location as mergekit's `MODEL+LORA` where that commit holds the merged adapter
    (the model: the commit's one model folder, else the adapter's base_model_name_or_path)."""
    folders = sorted(record["adapters"]["folders"])
    if len(folders) != 1:
        raise MvcError(
            f"this merge combined {len(folders)} adapter folders; a mergekit model takes one LoRA",
            hint="export needs a merge of one adapter folder",
        )
    folder = folders[0]
    commits = {"base": record["base"]}
    commits.update({parent_label(record, i): c for i, c in enumerate(record["parents"])})
    out = {}
    for label, location in where.items():
        files = repo.files(commits[label])
        if config_path(folder) not in files:
            out[label] = location  # no adapter on this side (a base before any adapter)
            continue
        models = sorted(model_folders([files]))
        if len(models) > 1:
            shown = ", ".join(m or "." for m in models)
            raise MvcError(
                f"{commits[label][:12]} holds several models ({shown}): which one the adapter "
                f"{folder or '.'}/ updates is not known to mergekit"
            )
        if models:
            model = posixpath.join(location, models[0]) if models[0] else location
        else:
            model = json.loads(files[config_path(folder)]).get("base_model_name_or_path")
            if not model:
                raise MvcError(
                    f"{commits[label][:12]} holds no base model for the adapter {folder or '.'}/"
                    " and its config names none (base_model_name_or_path)",
                    hint="commit the base model beside the adapter",
                )
        out[label] = f"{model}+{posixpath.join(location, folder) if folder else location}"
    return out


def _comments(sha: str, record: Mapping[str, Any], where: Mapping[str, str]) -> str:
    lines = [
        f"# mergekit configuration exported by mvc from merge {sha}",
        f"# recipe: {merge_recipe_text(record)}",
        f"# base: {record['base']} -> {where['base']}",
    ]
    for index, commit in enumerate(record["parents"]):
        label = parent_label(record, index)
        lines.append(f"# parent {index} ({label}): {commit} -> {where[label]}")
    lines.append("# check out each commit into its folder, then run: mergekit-yaml THIS.yaml OUT")
    if record.get("adapters"):
        options = record["adapters"]["options"]
        written = (
            "a full model (--into model)" if options.get("into") == "model"
            else "exact concatenated factors (--adapter-combine cat)"
            if options.get("combine") == "cat"
            else "an adapter by truncated SVD of the merged ΔW (--adapter-rank)"
        )
        lines.append(
            "# note: LoRA adapters, merged in ΔW space; mergekit applies each one to its model"
            " (MODEL+LORA) and merges the full weights, so it writes a full model: the result"
            f" of `mvc merge --into model`; this merge wrote {written}"
        )
    if record.get("preset") != "mergekit" or not record.get("all_tensors"):
        lines.append(
            "# note: not merged with --preset mergekit --all-tensors, so mergekit's result "
            "differs (mvc takes one-sided tensors whole and uses its own preset's arithmetic)"
        )
    if SEED in get_strategy(record["strategy"]).parameters:
        lines.append(
            f"# note: mvc seeds its random drops (seed {record.get('seed')}); mergekit draws "
            "its own, so the dropped elements differ"
        )
    return "\n".join(lines) + "\n"


def model_card(repo: Repo, rev: str, names: Mapping[str, str] | None = None) -> str:
    """Hugging Face model-card metadata (YAML front matter) and a one-paragraph description."""
    sha, record = merge_record(repo, rev)
    where = model_locations(record, names or {})
    merged = [where[parent_label(record, i)] for i in record["contributing"]]
    tags = ["mvc", "merge", record["strategy"]]
    if record.get("preset"):
        tags.append(f"preset-{record['preset']}")
    metadata = {
        "base_model": merged,
        "base_model_relation": "merge",
        "tags": tags,
        "mvc": {
            "commit": sha,
            "base": record["base"],
            "merge_base_model": where["base"],
            "parents": list(record["parents"]),
            "recipe": merge_recipe_text(record),
        },
    }
    body = (
        f"This model is a {record['strategy']} merge of {', '.join(merged)} over the common "
        f"base {where['base']}, made with mvc (commit {sha[:12]}). Recipe: "
        f"{merge_recipe_text(record)}. `mvc verify {sha[:12]}` recomputes it from the "
        "stored parents.\n"
    )
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n{body}"


def export(repo: Repo, rev: str, fmt: str, paths: Mapping[str, str] | None = None) -> str:
    if fmt == "mergekit":
        return mergekit_yaml(repo, rev, paths)
    if fmt == "model-card":
        return model_card(repo, rev, paths)
    raise MvcError(f"unknown export format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
