"""`mvc bake` and `merge --into model` on a sharded bf16 LLaMA-shaped base (the LLM norm):
the result keeps the base's shard layout and index, and equals PEFT's merge_and_unload."""

from __future__ import annotations

import shutil

import pytest
import torch
from adapter_helpers import lora_deltas, make_adapter, peft, transformers
from click.testing import CliRunner

from mvc.cli.main import cli
from mvc.lineage.verify import verify
from mvc.merge import MergeOptions, merge
from mvc.merge.adapter_plan import AdapterOptions
from mvc.repo import Repo
from mvc.repo.models import model_view

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER = {"target_modules": TARGETS, "layers_to_transform": [0], "b_scale": 0.05}
INDEX = "model/model.safetensors.index.json"


def tiny_llama(folder) -> None:
    """A LLaMA-shaped causal LM in bf16, saved by transformers in five shards + index."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="60KB")


def load(folder, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """main: the sharded model + an adapter at PEFT's init; a and b train the adapter."""
    root = tmp_path_factory.mktemp("sharded")
    repo = Repo.init(root / "repo")
    model_dir = repo.root / "model"
    tiny_llama(model_dir)
    assert len(list(model_dir.glob("model-*.safetensors"))) == 5
    shutil.copytree(model_dir, root / "base_model")  # PEFT's reference base, outside the repo

    def base():
        return load(root / "base_model")

    make_adapter(repo.root / "adapter", None, model_fn=base, **ADAPTER)
    repo.add([repo.root])
    repo.commit("base")
    for name, seed in (("a", 1), ("b", 2)):
        repo.switch(name, create=True, start="main")
        make_adapter(repo.root / "adapter", seed, model_fn=base, **ADAPTER)
        make_adapter(root / f"exact_{name}", seed, model_fn=base, **ADAPTER)
        repo.add([repo.root / "adapter"])
        repo.commit(f"adapter {name}")
    repo.switch("main")
    return repo


def shards(repo, rev):
    files = repo.files(rev)
    return {p: files[p] for p in files if p.startswith("model/model-")}, files[INDEX]


def check_layout(repo, rev, touched_layers=("layers.0.",)):
    """Same shard files and index as main; a shard without a target keeps its manifest."""
    base_shards, base_index = shards(repo, "main")
    new_shards, new_index = shards(repo, rev)
    assert set(new_shards) == set(base_shards)
    assert new_index == base_index
    view = model_view(repo.files(rev), "model")  # the index is consistent with the shards
    assert view is not None and set(view.shards) == set(base_shards)
    kept = 0
    for path, manifest in repo.model_files(rev).items():
        if not path.startswith("model/"):
            continue
        before = repo.manifest("main", path)
        assert manifest.header_raw == before.header_raw
        if not any(t in e.name for e in manifest.tensors for t in touched_layers):
            assert new_shards[path] == base_shards[path]
            kept += 1
    assert kept >= 2


def state(repo, rev):
    out = {}
    for path in repo.model_files(rev):
        if path.startswith("model/"):
            out.update(repo.load_state_dict(rev, path))
    return out


def close_in_bf16(ours, reference):
    """Ours (bf16) against an fp32 reference rounded to bf16: at most one bf16 step apart,
    and almost every element identical (only fp32 rounding may tip a value)."""
    want = reference.to(torch.bfloat16).float()
    got = ours.float()
    step = want.abs().clamp(min=1e-30) * 2.0**-7
    assert bool(((got - want).abs() <= step).all())
    assert (got == want).double().mean().item() >= 0.999


def test_bake_of_a_sharded_base_equals_merge_and_unload(repo):
    repo.switch("baked", create=True, start="a")
    result = CliRunner().invoke(cli, ["-C", str(repo.root), "bake", "HEAD"])
    assert result.exit_code == 0, result.output
    assert "into model" in result.output
    check_layout(repo, "HEAD")
    root = repo.root.parent
    reference = peft.PeftModel.from_pretrained(load(root / "base_model"), root / "exact_a")
    reference = reference.merge_and_unload().state_dict()
    ours = state(repo, "HEAD")
    assert set(reference) == set(ours)
    for name, tensor in reference.items():
        close_in_bf16(ours[name], tensor)
    base = state(repo, "main")
    assert not torch.equal(
        ours["model.layers.0.self_attn.q_proj.weight"],
        base["model.layers.0.self_attn.q_proj.weight"],
    )
    report = verify(repo, "HEAD")
    assert report.ok and report.files > 0, report.mismatches
    repo.switch("main")


def test_merge_into_a_sharded_model_equals_peft(repo):
    repo.switch("into", create=True, start="a")
    merge(
        repo,
        ["b"],
        MergeOptions(strategy="task_arithmetic", adapter=AdapterOptions(into="model")),
    )
    assert not (repo.root / "adapter" / "adapter_config.json").exists()
    check_layout(repo, "HEAD")
    root = repo.root.parent
    reference = peft.PeftModel.from_pretrained(
        load(root / "base_model"), root / "exact_a", adapter_name="a"
    )
    reference.load_adapter(root / "exact_b", adapter_name="b")
    reference.add_weighted_adapter(["a", "b"], [1.0, 1.0], "sum", combination_type="cat")
    reference.set_adapter("sum")
    theirs = reference.merge_and_unload().state_dict()
    ours = state(repo, "HEAD")
    assert set(theirs) == set(ours)
    for name, tensor in theirs.items():
        close_in_bf16(ours[name], tensor)
    # The sum of both updates, as PEFT computes each one, landed in the weights.
    da, db = lora_deltas(root / "exact_a"), lora_deltas(root / "exact_b")
    base = state(repo, "main")
    name = "model.layers.0.mlp.down_proj"
    moved = ours[f"{name}.weight"].double() - base[f"{name}.weight"].double()
    want = da[name] + db[name]
    assert ((moved - want).norm() / want.norm()).item() < 0.05  # bf16 rounding of W + ΔW
    assert verify(repo, "HEAD").ok
    repo.switch("main")


def test_into_model_keeps_a_branchs_own_change_of_the_base(repo):
    """A branch that also edited the base model (here its final norm) keeps that edit: the
    merged update is baked into the merge's result, not into the merge base's model."""
    from safetensors.torch import load_file, save_file

    repo.switch("a-norm", create=True, start="a")
    shard = next(
        p
        for p in (repo.root / "model").glob("model-*.safetensors")
        if "model.norm.weight" in load_file(str(p))
    )
    tensors = load_file(str(shard))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 2
    save_file(tensors, str(shard), metadata={"format": "pt"})
    repo.add([repo.root / "model"])
    repo.commit("a: scale the final norm")
    edited = repo.load_state_dict("HEAD", f"model/{shard.name}")["model.norm.weight"]
    repo.switch("into-norm", create=True, start="a-norm")
    merge(
        repo,
        ["b"],
        MergeOptions(strategy="task_arithmetic", adapter=AdapterOptions(into="model")),
    )
    ours = state(repo, "HEAD")
    assert torch.equal(ours["model.norm.weight"], edited)
    assert torch.equal(
        ours["model.layers.1.mlp.up_proj.weight"],
        state(repo, "main")["model.layers.1.mlp.up_proj.weight"],
    )
    into = state(repo, "into")  # the same adapters merged into the unedited base
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(ours[name], into[name])
    assert repo.status().clean and verify(repo, "HEAD").ok
    repo.switch("main")
