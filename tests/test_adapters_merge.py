"""`mvc merge` of real PEFT LoRA adapters on MiniLM: weight space, with PEFT as the oracle
where PEFT is exact, and the exact ΔW-space answer where it is not."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from adapter_helpers import adapter_repo, lora_deltas, make_adapter, peft_model, tokens
from merge_in_memory import merge_tensor

from mvc.lineage.records import find_merge_record
from mvc.lineage.verify import verify
from mvc.merge import MergeOptions, MergeParams, merge
from mvc.merge.adapter_plan import AdapterOptions
from mvc.merge.strategies import get_strategy

# Two layers keep PEFT's (and our) per-module SVDs quick; the modules are MiniLM's own.
SMALL = {"layers_to_transform": [0, 1]}
RSLORA = {"use_rslora": True, "rank_pattern": {"layer.1.attention.self.query": 4},
          "alpha_pattern": {"value": 4}, **SMALL}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """main: MiniLM + an adapter at PEFT's init; branches a and b each 'train' it."""
    root = tmp_path_factory.mktemp("adapters")
    repo = adapter_repo(
        root / "repo", {"a": {"seed": 1, **SMALL}, "b": {"seed": 2, **SMALL}}, init=SMALL
    )
    exact = {}
    for name, seed in (("a", 1), ("b", 2)):
        exact[name] = make_adapter(root / f"exact_{name}", seed, **SMALL)
    return repo, exact


def merged_on_new_branch(repo, name: str, **options):
    repo.switch(name, create=True, start="a")
    result = merge(repo, ["b"], MergeOptions(**options))
    snapshot = repo.root.parent / f"{name}_adapter"
    shutil.rmtree(snapshot, ignore_errors=True)
    shutil.copytree(repo.root / "adapter", snapshot)
    repo.switch("main")
    return result, snapshot


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x.double() - y.double()).norm() / y.double().norm()).item()


def peft_deltas(model, adapter: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and adapter in getattr(module, "lora_A", {}):
            out[name.removeprefix("base_model.model.")] = module.get_delta_weight(adapter).double()
    return out


def test_cat_is_the_exact_weight_space_sum_and_equals_peft_cat(plain):
    repo, exact = plain
    result, folder = merged_on_new_branch(
        repo, "cat", strategy="task_arithmetic", adapter=AdapterOptions(combine="cat")
    )
    ours = lora_deltas(folder)
    want_a, want_b = lora_deltas(exact["a"]), lora_deltas(exact["b"])
    assert len(ours) == 10
    assert max(rel(ours[m], want_a[m] + want_b[m]) for m in ours) <= 1e-6
    record = result.record["adapters"]["folders"]["adapter"]["modules"]
    assert {item["method"] for item in record.values()} == {"cat"}
    assert {item["rank"] for item in record.values()} == {16}  # the zero-B init adds no rank

    reference = peft_model(exact["a"], exact["b"])
    reference.add_weighted_adapter(["a0", "a1"], [1.0, 1.0], "cat", combination_type="cat")
    reference.set_adapter("cat")
    mine = peft_model(folder)
    batch = tokens()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        got = mine(**batch).last_hidden_state
    assert (got - expected).abs().max().item() <= 1e-5


def test_full_rank_svd_equals_peft_svd(tmp_path):
    layer0 = {"layers_to_transform": [0]}  # PEFT's svd is slow: five modules are enough
    repo = adapter_repo(
        tmp_path / "repo", {"a": {"seed": 1, **layer0}, "b": {"seed": 2, **layer0}}, init=layer0
    )
    exact = {n: make_adapter(tmp_path / n, s, **layer0) for n, s in (("a", 1), ("b", 2))}
    result, folder = merged_on_new_branch(
        repo, "svd", strategy="task_arithmetic", adapter=AdapterOptions(rank=16, svd="exact")
    )
    reference = peft_model(exact["a"], exact["b"])
    reference.add_weighted_adapter(
        ["a0", "a1"], [1.0, 1.0], "svd", combination_type="svd", svd_rank=16
    )
    theirs = peft_deltas(reference, "svd")
    ours = lora_deltas(folder)
    assert len(ours) == 5 and set(ours) == set(theirs)
    assert max(rel(ours[m], theirs[m]) for m in ours) <= 1e-5
    modules = result.record["adapters"]["folders"]["adapter"]["modules"]
    assert all(item["method"] == "exact" and item["error"] < 1e-5 for item in modules.values())


def test_ties_rank_r_is_the_strategy_on_delta_w_and_factorwise_is_far_off(plain):
    repo, exact = plain
    params = MergeParams(density=0.2)
    result, folder = merged_on_new_branch(
        repo, "ties", strategy="ties", params=params, adapter=AdapterOptions(rank=16)
    )
    modules = result.record["adapters"]["folders"]["adapter"]["modules"]
    ours = lora_deltas(folder)
    da, db = lora_deltas(exact["a"]), lora_deltas(exact["b"])
    ties = get_strategy("ties")
    init = repo.load_state_dict("main", "adapter/adapter_model.safetensors")
    weights = {n: repo.load_state_dict(n, "adapter/adapter_model.safetensors") for n in "ab"}
    factorwise_worst = 0.0
    for module in list(ours)[:6]:
        out, inp = da[module].shape
        target, _ = merge_tensor(
            ties, params, torch.zeros(out, inp), [da[module].float(), db[module].float()],
            name=module,
        )
        assert rel(ours[module], target) <= modules[module]["error"] + 1e-6
        # The old behaviour: TIES on lora_A and on lora_B, each against the init, then B·A.
        a, b = (
            merge_tensor(
                ties,
                params,
                init[f"base_model.model.{module}.{which}.weight"],
                [weights[n][f"base_model.model.{module}.{which}.weight"] for n in "ab"],
                name=which,
            )[0]
            for which in ("lora_A", "lora_B")
        )
        factorwise_worst = max(factorwise_worst, rel((b.double() @ a.double()) * 2.0, target))
    assert factorwise_worst > 0.3


def test_rslora_and_rank_pattern_exact_where_peft_is_not(tmp_path):
    repo = adapter_repo(
        tmp_path / "repo", {"a": {"seed": 1, **RSLORA}, "b": {"seed": 2, **RSLORA}}, init=RSLORA
    )
    exact = {n: make_adapter(tmp_path / n, s, **RSLORA) for n, s in (("a", 1), ("b", 2))}
    _, folder = merged_on_new_branch(
        repo, "cat", strategy="task_arithmetic", adapter=AdapterOptions(combine="cat")
    )
    want = {m: d + lora_deltas(exact["b"])[m] for m, d in lora_deltas(exact["a"]).items()}
    ours = lora_deltas(folder)
    assert max(rel(ours[m], want[m]) for m in want) <= 1e-6
    reference = peft_model(exact["a"], exact["b"])
    reference.add_weighted_adapter(["a0", "a1"], [1.0, 1.0], "cat", combination_type="cat")
    theirs = peft_deltas(reference, "cat")
    assert max(rel(theirs[m], want[m]) for m in want) > 0.5  # PEFT rescales them wrongly


def test_adapter_merge_verifies_and_is_recorded(plain):
    repo, _ = plain
    result, _ = merged_on_new_branch(
        repo, "verified", strategy="ties", params=MergeParams(density=0.5),
        adapter=AdapterOptions(rank=8),
    )
    record = find_merge_record(repo, repo.resolve("verified"))
    assert record["adapters"]["options"]["combine"] == "svd"
    assert "adapter/adapter_model.safetensors" not in record["files"]
    report = verify(repo, "verified")
    assert report.ok, report.mismatches


def test_into_model_bakes_the_merged_update(plain):
    repo, exact = plain
    repo.switch("baked", create=True, start="a")
    merge(repo, ["b"], MergeOptions(strategy="task_arithmetic",
                                    adapter=AdapterOptions(into="model")))
    assert not (repo.root / "adapter" / "adapter_config.json").exists()
    merged = repo.load_state_dict("HEAD", "model/model.safetensors")
    base = repo.load_state_dict("main", "model/model.safetensors")
    da, db = lora_deltas(exact["a"]), lora_deltas(exact["b"])
    for module in list(da)[:4]:
        name = f"{module}.weight"
        assert rel(merged[name] - base[name], da[module] + db[module]) <= 1e-5
    assert torch.equal(merged["embeddings.word_embeddings.weight"],
                       base["embeddings.word_embeddings.weight"])
    repo.switch("main")


def test_modules_to_save_merge_against_the_base_model_when_the_base_has_no_adapter(tmp_path):
    saved = {"modules_to_save": ["pooler.dense"], "layers_to_transform": [0]}
    repo = adapter_repo(tmp_path / "repo", {"a": {"seed": 1, **saved}, "b": {"seed": 2, **saved}})
    _, folder = merged_on_new_branch(
        repo, "cat", strategy="task_arithmetic", adapter=AdapterOptions(combine="cat")
    )
    exact = {n: make_adapter(tmp_path / n, s, **saved) for n, s in (("a", 1), ("b", 2))}
    ours = lora_deltas(folder)
    want = {m: d + lora_deltas(exact["b"])[m] for m, d in lora_deltas(exact["a"]).items()}
    assert max(rel(ours[m], want[m]) for m in want) <= 1e-6  # no ancestor adapter: ΔW_base = 0
    base = repo.load_state_dict("main", "model/model.safetensors")["pooler.dense.weight"]
    key = "base_model.model.pooler.dense.weight"
    a, b = (repo.load_state_dict(n, "adapter/adapter_model.safetensors")[key] for n in "ab")
    merged = repo.load_state_dict("cat", "adapter/adapter_model.safetensors")[key]
    assert torch.allclose(merged, base + (a - base) + (b - base), atol=1e-6)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["pooler.dense"]


def test_octopus_merge_where_head_has_no_adapter(tmp_path):
    """HEAD never had the adapter (nor the base): it does not contribute, the others sum."""
    repo = adapter_repo(
        tmp_path / "repo", {"a": {"seed": 1, **SMALL}, "b": {"seed": 2, **SMALL}}
    )
    repo.switch("docs", create=True, start="main")
    (repo.root / "README.md").write_text("a note\n")
    repo.commit("docs", all=True)
    merge(repo, ["a", "b"], MergeOptions(strategy="task_arithmetic",
                                         adapter=AdapterOptions(combine="cat")))
    exact = {n: make_adapter(tmp_path / n, s, **SMALL) for n, s in (("a", 1), ("b", 2))}
    want = {m: d + lora_deltas(exact["b"])[m] for m, d in lora_deltas(exact["a"]).items()}
    ours = lora_deltas(repo.root / "adapter")
    assert max(rel(ours[m], want[m]) for m in want) <= 1e-6
    assert (repo.root / "README.md").read_text() == "a note\n"
