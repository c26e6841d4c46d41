"""`mvc diff` of LoRA adapters compares each module's update ΔW = s·B·A, not its factors."""

from __future__ import annotations

import math

import pytest
import torch
from adapter_helpers import adapter_repo, lora_deltas, write_adapter_tensors
from click.testing import CliRunner
from safetensors.torch import load_file

import mvc.repo.adapter_diff as adapter_diff
from mvc.cli.main import cli
from mvc.repo.diff import diff_revisions

SMALL = {"layers_to_transform": [0]}
SAVED = {"modules_to_save": ["pooler.dense"], **SMALL}


def refactor(folder, seed: int = 7) -> None:
    """Rewrite each module's factors as (B·Q, Q⁻¹·A) for a random well-conditioned Q."""
    path = folder / "adapter_model.safetensors"
    weights = load_file(str(path))
    generator = torch.Generator().manual_seed(seed)
    for key in [k for k in weights if k.endswith("lora_A.weight")]:
        a, b = weights[key].double(), weights[key.replace("lora_A", "lora_B")].double()
        r = a.shape[0]
        q, _ = torch.linalg.qr(torch.randn(r, r, generator=generator, dtype=torch.float64))
        q = q * torch.linspace(0.5, 2.0, r, dtype=torch.float64)
        weights[key] = (torch.linalg.inv(q) @ a).float()
        weights[key.replace("lora_A", "lora_B")] = (b @ q).float()
    write_adapter_tensors(folder, weights)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """main: MiniLM + adapter at PEFT's init; a and b train it (with a saved pooler);
    refactored: a's factors reparametrised; a-only: main's A nudged, B still zero."""
    repo = adapter_repo(
        tmp_path_factory.mktemp("diff") / "repo",
        {"a": {"seed": 1, **SAVED}, "b": {"seed": 2, **SAVED}},
        init=SMALL,
    )
    for name, start, edit in (
        ("refactored", "a", refactor),
        ("a-only", "main", None),
    ):
        repo.switch(name, create=True, start=start)
        folder = repo.root / "adapter"
        if edit is not None:
            edit(folder)
        else:
            weights = load_file(str(folder / "adapter_model.safetensors"))
            write_adapter_tensors(
                folder, {k: v * 1.5 if "lora_A" in k else v for k, v in weights.items()}
            )
        repo.add([folder])
        repo.commit(f"{name}")
    repo.switch("main")
    return repo


def rows(report):
    return {t.name: t for t in report.tensors if t.path == "adapter/adapter_model.safetensors"}


def test_a_refactorisation_is_no_change_of_the_update(repo):
    report = rows(diff_revisions(repo, "a", "refactored"))
    modules = {n: t for n, t in report.items() if t.kind == "delta"}
    assert modules and not any("lora_" in n for n in report)  # no factor rows at all
    for t in modules.values():
        assert t.status == "refactored", t
        assert t.relative_l2 < 1e-6 and t.changed_fraction == 0.0
    # The saved pooler did not change: it is compared as a plain tensor, unchanged.
    saved = {n: t for n, t in report.items() if t.kind == "tensor"}
    assert saved and all("pooler.dense" in n and t.status == "unchanged" for n, t in saved.items())
    # Changing A while B is zero (PEFT's init) changes no update either.
    zero = rows(diff_revisions(repo, "main", "a-only"))
    assert zero and all(t.status == "refactored" and t.relative_l2 == 0 for t in zero.values())


def test_a_real_change_is_measured_on_delta_w(repo, monkeypatch):
    a_dir, b_dir = repo.root.parent / "a_out", repo.root.parent / "b_out"
    for rev, out in (("a", a_dir), ("b", b_dir)):
        repo.switch(rev)
        out.mkdir(exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (out / name).write_bytes((repo.root / "adapter" / name).read_bytes())
    repo.switch("main")
    da, db = lora_deltas(a_dir), lora_deltas(b_dir)
    report = diff_revisions(repo, "a", "b")
    assert report.base == repo.resolve("main")
    modules = {n: t for n, t in rows(report).items() if t.kind == "delta"}
    assert set(modules) == set(da)
    for module, t in modules.items():
        assert t.status == "changed" and t.changed_fraction > 0.99
        expected = ((db[module] - da[module]).norm() / da[module].norm()).item()
        assert math.isclose(t.relative_l2, expected, rel_tol=1e-9)
        # The base's adapter is at PEFT's init (B = 0): the task vectors are the ΔWs.
        cosine = torch.nn.functional.cosine_similarity(
            da[module].flatten(), db[module].flatten(), dim=0
        ).item()
        assert math.isclose(t.cosine, cosine, rel_tol=1e-9, abs_tol=1e-12)
        conflicts = ((da[module].sign() != db[module].sign()).double().mean()).item()
        assert math.isclose(t.sign_conflicts, conflicts, rel_tol=1e-9)
    # Streaming in row blocks of a few rows gives the same figures as larger blocks.
    monkeypatch.setattr(adapter_diff, "BLOCK_BYTES", 8 * 384 * 5)
    again = {n: t for n, t in rows(diff_revisions(repo, "a", "b")).items() if t.kind == "delta"}
    for module, t in modules.items():
        assert math.isclose(again[module].relative_l2, t.relative_l2, rel_tol=1e-12)
        assert again[module].sign_conflicts == t.sign_conflicts


def test_cli_and_work_tree_diff_show_delta_w(repo):
    repo.switch("a")
    try:
        refactor(repo.root / "adapter", seed=11)
        result = CliRunner().invoke(cli, ["-C", str(repo.root), "diff"])
        assert result.exit_code == 0, result.output
        assert "modified  adapter/adapter_model.safetensors" in result.output
        assert "query ΔW" in result.output and "refactored" in result.output
        assert "lora_A" not in result.output
        shown = CliRunner().invoke(cli, ["-C", str(repo.root), "diff", "main", "a"])
        assert shown.exit_code == 0 and "changed" in shown.output and "ΔW" in shown.output
    finally:
        repo.switch("main", force=True)
