"""The same TIES merge run by ``mvc merge`` and by ``mergekit-yaml``, each in a fresh process.

Shared by the merge-speed and memory-scaling benchmarks. mvc gets a repository whose
``main`` holds the base and whose branches ``a`` and ``b`` hold the two fine-tunes; a merge
runs on a new branch started at ``a`` (so every run merges the same commits), as a user
would type it. mergekit gets the three model folders and an equivalent YAML recipe.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.measure import Run, run, tool
from benchmarks.storage import GIT_ENV

MODEL_FILES = ("model.safetensors", "config.json")


@dataclass(frozen=True)
class MvcMode:
    """One way of invoking ``mvc merge``."""

    label: str
    flags: tuple[str, ...]


MODES = (
    MvcMode("mvc (three-way, default)", ()),
    MvcMode("mvc --all-tensors --preset mergekit", ("--all-tensors", "--preset", "mergekit")),
)
# With --all-tensors mvc sends integer tensors (BERT's position_ids) to TIES and refuses
# them, where mergekit passes them through; a rule keeps them as they are on HEAD.
INT_RULES = {"rules": [{"match": "*position_ids", "strategy": "ours"}]}


@dataclass(frozen=True)
class RepoSetup:
    """The repository and what building it cost (commit and checkout are measured too)."""

    root: Path
    commits: dict[str, Run]  # branch -> `mvc commit` of its model
    adds: dict[str, Run]  # branch -> `mvc add` of its model
    switches: list[Run]  # `mvc switch` between branches with different models


def _commit(repo: Path, src: Path, message: str, files: Sequence[str]) -> tuple[Run, Run]:
    mvc = tool("mvc")
    for name in files:
        shutil.copyfile(src / name, repo / name)
    add = run([mvc, "add", *files], cwd=repo, env=GIT_ENV)
    return add, run([mvc, "commit", "-m", message], cwd=repo, env=GIT_ENV)


def build_repo(
    work: Path, base: Path, a: Path, b: Path, files: Sequence[str] = MODEL_FILES
) -> RepoSetup:
    """``main`` = base, ``a`` and ``b`` = the fine-tunes (their ``files``: a sharded
    model's shards, index and config), each committed by the CLI."""
    mvc = tool("mvc")
    repo = work / "mvc-repo"
    repo.mkdir()
    run([mvc, "init"], cwd=repo, env=GIT_ENV)
    adds, commits, switches = {}, {}, []
    adds["main"], commits["main"] = _commit(repo, base, "base", files)
    for branch, src in (("a", a), ("b", b)):
        switches.append(run([mvc, "switch", "-c", branch, "main"], cwd=repo, env=GIT_ENV))
        adds[branch], commits[branch] = _commit(repo, src, f"fine-tune {branch}", files)
    switches.append(run([mvc, "switch", "a"], cwd=repo, env=GIT_ENV))
    return RepoSetup(root=repo, commits=commits, adds=adds, switches=switches)


def mvc_merge(
    repo: Path,
    mode: MvcMode,
    density: float | None,
    run_id: str,
    strategy: str = "ties",
    int_rules: bool = True,
) -> Run:
    """``mvc merge b`` (``strategy``, ``density`` unless None) on a fresh branch at ``a``;
    the merge alone is timed. ``int_rules=False`` leaves out ``INT_RULES`` (for models
    without integer tensors, so the merge stays exportable to mergekit)."""
    mvc = tool("mvc")
    run([mvc, "switch", "-c", f"m-{run_id}", "a"], cwd=repo, env=GIT_ENV)
    cmd = [mvc, "merge", "b", "-q", "-m", "merge", "-s", strategy, *mode.flags]
    if density is not None:
        cmd += ["--density", str(density)]
    if "--all-tensors" in mode.flags and int_rules:
        rules = repo.parent / "int-rules.yaml"
        rules.write_text(yaml.safe_dump(INT_RULES))
        cmd += ["--config", str(rules)]
    return run(cmd, cwd=repo, env=GIT_ENV)


def mergekit_merge(
    work: Path,
    base: Path,
    a: Path,
    b: Path,
    density: float,
    run_id: str,
    out_dtype: str | None = None,
) -> Run:
    """``mergekit-yaml`` with the same TIES recipe, on the CPU, writing safetensors (in
    ``out_dtype`` when given, e.g. bf16 for bf16 inputs: mergekit computes in fp32).

    Run through ``mergekit_shim.py``, which works around mergekit 0.1.5's crash on BERT.
    """
    recipe = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(m), "parameters": {"weight": 1.0, "density": density}} for m in (a, b)
        ],
        "parameters": {"normalize": True},
        "dtype": "float32",
    }
    if out_dtype is not None:
        recipe["out_dtype"] = out_dtype
    return mergekit_run(work, recipe, run_id)


def mergekit_run(work: Path, recipe: dict, run_id: str) -> Run:
    """``mergekit-yaml`` on ``recipe`` (a parsed YAML), on the CPU, writing safetensors."""
    config = work / f"mergekit-{run_id}.yaml"
    config.write_text(yaml.safe_dump(recipe))
    out = work / f"mergekit-out-{run_id}"
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("mergekit_shim.py")),
        str(config),
        str(out),
        "--no-copy-tokenizer",
        "--no-write-model-card",
        "--quiet",
    ]
    result = run(cmd, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    shutil.rmtree(out, ignore_errors=True)
    return result
