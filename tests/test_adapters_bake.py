"""`mvc bake` against PEFT's merge_and_unload, its provenance, and `mvc extract-lora`
against PEFT loading the folder it writes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from adapter_helpers import MODEL_DIR, adapter_repo, base_model, make_adapter, peft, tokens
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mvc.cli.main import cli
from mvc.errors import MvcError
from mvc.lineage.graph import lineage_graph
from mvc.lineage.verify import verify
from mvc.merge.extract_lora import extract_lora
from mvc.repo import Repo

SMALL = {"layers_to_transform": [0, 1]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """main: MiniLM; branch a: an adapter (with a modules_to_save head) committed beside it."""
    root = tmp_path_factory.mktemp("bake")
    extra = {"modules_to_save": ["pooler.dense"], **SMALL}
    repo = adapter_repo(root / "repo", {"a": {"seed": 3, **extra}})
    exact = make_adapter(root / "exact", 3, **extra)
    return repo, exact


def test_bake_equals_merge_and_unload_and_verifies(trained):
    repo, exact = trained
    repo.switch("baked", create=True, start="a")
    result = CliRunner().invoke(cli, ["-C", str(repo.root), "bake", "HEAD"])
    assert result.exit_code == 0, result.output
    assert "into model/model.safetensors" in result.output
    assert not (repo.root / "adapter" / "adapter_config.json").exists()
    ours = repo.load_state_dict("HEAD", "model/model.safetensors")
    reference = peft.PeftModel.from_pretrained(base_model(), exact).merge_and_unload()
    theirs = reference.state_dict()
    assert set(theirs) <= set(ours)
    worst = max((ours[n] - theirs[n]).abs().max().item() for n in theirs)
    assert worst <= 1e-6
    base = load_file(str(MODEL_DIR / "model.safetensors"))
    assert not torch.equal(ours["pooler.dense.weight"], base["pooler.dense.weight"])
    # Tensors the adapter does not touch keep their stored objects.
    main = repo.manifest("main", "model/model.safetensors").by_name()
    now = repo.manifest("HEAD", "model/model.safetensors").by_name()
    assert now["embeddings.word_embeddings.weight"].chunk_ids == (
        main["embeddings.word_embeddings.weight"].chunk_ids
    )
    report = verify(repo, "HEAD")
    assert report.ok and report.files > 0, report.mismatches
    assert lineage_graph(repo, "HEAD").nodes[0].kind == "bake"
    log = CliRunner().invoke(cli, ["-C", str(repo.root), "log", "-n", "1"])
    assert "bake of adapter/ into model/model.safetensors" in log.output
    repo.switch("main")


def test_bake_refuses_a_commit_that_is_not_checked_out_and_a_repo_without_base(tmp_path):
    repo = adapter_repo(tmp_path / "repo", {"a": {"seed": 1, **SMALL}}, with_model=False)
    head = repo.head()
    with pytest.raises(MvcError, match="not the checked-out commit"):
        from mvc.lineage.bake import bake

        bake(repo, "a")
    repo.switch("a")
    with pytest.raises(MvcError, match="no base model"):
        bake(repo, "HEAD")
    assert repo.head() == repo.resolve("a") and repo.resolve("main") == head


def fine_tune(tmp_path, rank: int, noise: float, only: str = "") -> dict[str, torch.Tensor]:
    """MiniLM with a rank-`rank` update (+ noise) on every linear weight whose name starts
    with `only`, and a changed LayerNorm."""
    weights = load_file(str(MODEL_DIR / "model.safetensors"))
    generator = torch.Generator().manual_seed(7)
    tuned = dict(weights)
    for name, w in weights.items():
        if w.dim() == 2 and "embeddings" not in name and name.startswith(only):
            out, inp = w.shape
            low = torch.randn(out, rank, generator=generator) @ torch.randn(
                rank, inp, generator=generator
            )
            update = low * (0.02 / rank**0.5) + torch.randn(w.shape, generator=generator) * noise
            tuned[name] = w + update
    tuned["encoder.layer.0.output.LayerNorm.weight"] = weights[
        "encoder.layer.0.output.LayerNorm.weight"
    ] * 1.1
    return tuned


@pytest.fixture(scope="module")
def full_fine_tune(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    repo = Repo.init(root / "repo")
    (repo.root / "model").mkdir()
    shutil.copy(MODEL_DIR / "model.safetensors", repo.root / "model" / "model.safetensors")
    shutil.copy(MODEL_DIR / "config.json", repo.root / "model" / "config.json")
    repo.add([repo.root])
    repo.commit("base")
    return repo


def test_extract_lora_is_peft_loadable_and_exact_for_a_low_rank_fine_tune(full_fine_tune,
                                                                          tmp_path):
    repo = full_fine_tune
    repo.switch("lowrank", create=True, start="main")
    tuned = fine_tune(tmp_path, rank=4, noise=0.0)
    save_file(tuned, str(repo.root / "model" / "model.safetensors"), metadata={"format": "pt"})
    repo.commit("fine-tune", all=True)
    result = extract_lora(repo, "lowrank", "main", 8, tmp_path / "lora")
    assert len(result.modules) == 37  # 6 layers × 6 linear modules + the pooler
    assert max(m["error"] for m in result.modules.values()) < 1e-5
    assert result.saved == ["encoder.layer.0.output.LayerNorm"]
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    model = peft.PeftModel.from_pretrained(base_model(), tmp_path / "lora").eval()
    full = base_model()
    full.load_state_dict(tuned, strict=False)  # the file also holds position_ids
    batch = tokens()
    with torch.no_grad():
        got = model(**batch).last_hidden_state
        want = full(**batch).last_hidden_state
    assert (got - want).abs().max().item() < 1e-4
    repo.switch("main")


def commit_noisy_fine_tune(
    repo, tmp_path, branch: str, *, rank: int, noise: float, layer: int
) -> None:
    """A new branch from main whose model is a rank-``rank`` fine-tune of one layer."""
    repo.switch(branch, create=True, start="main")
    tensors = fine_tune(tmp_path, rank=rank, noise=noise, only=f"encoder.layer.{layer}.")
    save_file(tensors, str(repo.root / "model" / "model.safetensors"), metadata={"format": "pt"})
    repo.commit(f"noisy fine-tune of layer {layer}", all=True)


def test_extract_lora_error_falls_as_rank_grows(full_fine_tune, tmp_path):
    repo = full_fine_tune
    commit_noisy_fine_tune(repo, tmp_path, "noisy", rank=48, noise=0.002, layer=0)
    errors = []
    for rank in (4, 16, 64):
        result = extract_lora(repo, "noisy", "main", rank, tmp_path / f"r{rank}")
        errors.append(sum(m["error"] for m in result.modules.values()) / len(result.modules))
    assert errors[0] > errors[1] > errors[2]
    with pytest.raises(MvcError, match="larger than module"):
        extract_lora(repo, "noisy", "main", 400, tmp_path / "too_big")
    assert not (tmp_path / "too_big").exists()
    repo.switch("main")


def test_extract_lora_saves_norms_inside_embeddings_and_embeddings_when_asked(full_fine_tune,
                                                                             tmp_path):
    """BERT's `embeddings.LayerNorm` is a norm (saved by default), not an embedding table;
    the tables themselves are saved only with `embeddings=True`, and then PEFT's model is
    the fine-tune."""
    repo = full_fine_tune
    repo.switch("embeddings", create=True, start="main")
    tuned = fine_tune(tmp_path, rank=4, noise=0.0, only="encoder.layer.1.")
    tuned["embeddings.LayerNorm.bias"] = tuned["embeddings.LayerNorm.bias"] + 0.05
    tuned["embeddings.position_embeddings.weight"] = (
        tuned["embeddings.position_embeddings.weight"] * 1.05
    )
    save_file(tuned, str(repo.root / "model" / "model.safetensors"), metadata={"format": "pt"})
    repo.commit("fine-tune with embeddings", all=True)
    plain = extract_lora(repo, "embeddings", "main", 8, tmp_path / "plain")
    assert "embeddings.LayerNorm" in plain.saved
    assert plain.skipped == ["embeddings.position_embeddings.weight"]
    full = extract_lora(repo, "embeddings", "main", 8, tmp_path / "full", embeddings=True)
    assert {"embeddings.LayerNorm", "embeddings.position_embeddings"} <= set(full.saved)
    assert full.skipped == []
    model = peft.PeftModel.from_pretrained(base_model(), tmp_path / "full").eval()
    want = base_model()
    want.load_state_dict(tuned, strict=False)
    batch = tokens()
    with torch.no_grad():
        got, expected = model(**batch).last_hidden_state, want(**batch).last_hidden_state
    assert (got - expected).abs().max().item() < 1e-4
    repo.switch("main")


def test_extract_lora_bytes_do_not_depend_on_the_thread_count(full_fine_tune, tmp_path,
                                                              monkeypatch):
    """Modules are factorised `MVC_THREADS` at a time ahead of the writer; the file is the
    same for any count (each module's SVD is seeded by its name and single-threaded)."""
    repo = full_fine_tune
    commit_noisy_fine_tune(repo, tmp_path, "threads", rank=24, noise=0.001, layer=2)
    files = []
    for count in ("1", "3"):
        monkeypatch.setenv("MVC_THREADS", count)
        result = extract_lora(repo, "threads", "main", 16, tmp_path / f"t{count}")
        assert len(result.modules) == 6 and all(
            m["method"] == "randomized" for m in result.modules.values()
        )
        files.append((tmp_path / f"t{count}" / "adapter_model.safetensors").read_bytes())
    assert files[0] == files[1]
    repo.switch("main")
