"""The trained-adapter path of benchmarks/adapter_quality.py, on a few steps: training moves
only the LoRA factors (and the head), the adapters merge in weight space, and the merged
adapter is what PEFT loads and what `mvc bake` applies. (The accuracy figures themselves
take minutes and are in docs/benchmarks.md.)"""

from __future__ import annotations

import pytest
import torch
from adapter_helpers import peft  # noqa: F401  (skips without peft)
from safetensors.torch import load_file

from benchmarks.adapter_quality import init_adapter, train_adapter, with_adapter
from mvc.demo.tasks import make_task
from mvc.lineage.bake import bake
from mvc.merge import MergeOptions, MergeParams, merge
from mvc.merge.adapter_plan import AdapterOptions
from mvc.repo import Repo

WEIGHTS = "adapter/adapter_model.safetensors"


@pytest.mark.slow
def test_trained_adapters_merge_and_bake(tmp_path):
    from mvc.demo.train import export_base

    repo = Repo.init(tmp_path / "repo")
    model = export_base(repo.root / "model")
    init_adapter(model, repo.root / "adapter")
    repo.add([repo.root])
    repo.commit("init")
    init = load_file(str(repo.root / WEIGHTS))
    for seed, name in enumerate(("agent", "sentiment")):
        repo.switch(name, create=True, start="main")
        task = make_task(name, train_per_label=16, test_per_label=4)
        head = train_adapter(model, repo.root / "adapter", task, steps=3, lr=1e-3, seed=seed)
        assert head.weight.abs().sum() > 0
        trained = load_file(str(repo.root / WEIGHTS))
        assert set(trained) == set(init)
        for key, value in trained.items():  # B leaves zero; A moves from the shared init
            # (the pooler is a "dense" target too, but mean pooling never reaches it)
            assert torch.equal(value, init[key]) == ("pooler" in key), key
        repo.add([repo.root / "adapter"])
        repo.commit(f"train {name}")
    repo.switch("merged", create=True, start="agent")
    result = merge(
        repo,
        ["sentiment"],
        MergeOptions(strategy="ties", params=MergeParams(), adapter=AdapterOptions(rank=16)),
    )
    modules = result.record["adapters"]["folders"]["adapter"]["modules"]
    trained = {n: m for n, m in modules.items() if "pooler" not in n}
    assert trained and all(m["action"] == "resolve" and m["rank"] == 16 for m in trained.values())
    assert all(m["action"] == "base" for n, m in modules.items() if "pooler" in n)
    reference = with_adapter(model, repo.root / "adapter").state_dict()
    bake(repo, "HEAD")
    ours = repo.load_state_dict("HEAD", "model/model.safetensors")
    worst = max((ours[n] - t).abs().max().item() for n, t in reference.items() if n in ours)
    assert worst <= 1e-6
    repo.switch("main")
