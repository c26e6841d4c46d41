"""Exact bits on bf16 inputs with massive ties at the trim threshold.

In bf16 every task vector is a multiple of an ulp, so a large share of |τ| equals the k-th
magnitude and the choice among ties decides the merged bits. ``--preset mergekit`` must keep
the ties mergekit 0.1.5 keeps (first k of its unstable descending ``torch.argsort``), every
element, against the real ``mergekit-yaml`` on a small LLaMA-shaped (GQA, sharded) model;
the default rule (lowest flat index) must not depend on how the tensor is cut.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from model_factory import write_safetensors_np

from mvc.merge import MergeOptions, MergeParams, merge
from mvc.repo import Repo

pytest.importorskip("mergekit")
safetensors_torch = pytest.importorskip("safetensors.torch")

SHIM = Path(__file__).parents[1] / "benchmarks" / "mergekit_shim.py"
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, LAYERS, VOCAB = 256, 688, 4, 2, 2, 512
ULP = 2.0**-7  # bf16 ulp of |x| in [1, 2)


def llama_config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def llama_shapes() -> dict[str, tuple[int, ...]]:
    kv = KV_HEADS * HIDDEN // HEADS
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for n in range(LAYERS):
        p = f"model.layers.{n}."
        shapes |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (kv, HIDDEN),
            p + "self_attn.v_proj.weight": (kv, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    return shapes | {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}


def tied_weights(variant: int) -> dict[str, np.ndarray]:
    """Base: ±[1, 2), exact in bf16; a fine-tune adds -3..3 ulps, so |τ| takes 4 values."""
    out = {}
    for i, (name, shape) in enumerate(llama_shapes().items()):
        rng = np.random.default_rng([7, i])
        base = np.sign(rng.standard_normal(shape)) * (1 + rng.integers(0, 128, shape) * ULP)
        if variant:
            tweak = np.random.default_rng([7, i, variant])
            base = base + tweak.integers(-3, 4, shape) * ULP
        out[name] = base.astype(np.float32)
    return out


def write_llama(folder: Path, weights: dict[str, np.ndarray]) -> None:
    """Two bf16 shards and an index, as the Hub lays out a LLaMA checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(llama_config(), indent=2))
    names = list(weights)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        write_safetensors_np(folder / fname, {n: weights[n] for n in part}, bf16=True)
        weight_map |= dict.fromkeys(part, fname)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out |= safetensors_torch.load_file(str(path))
    return out


@pytest.fixture(scope="module")
def llama_repo(tmp_path_factory) -> tuple[Repo, Path]:
    """main = base, branches a and b = two fine-tunes; plain folders of all three beside it."""
    root = tmp_path_factory.mktemp("llama")
    plain = root / "plain"
    for variant, name in enumerate(("base", "a", "b")):
        write_llama(plain / name, tied_weights(variant))
    repo = Repo.init(root / "repo")
    write_llama(repo.root / "model", tied_weights(0))
    repo.add([repo.root / "model"])
    repo.commit("base")
    for variant, name in ((1, "a"), (2, "b")):
        repo.switch(name, create=True, start="main")
        write_llama(repo.root / "model", tied_weights(variant))
        repo.commit(name, all=True)
    return repo, plain


def mvc_merge(repo: Repo, branch: str, params: MergeParams) -> dict[str, torch.Tensor]:
    repo.switch(branch, create=True, start="a")
    merge(repo, ["b"], MergeOptions(params=params, all_tensors=True, message="merge"))
    return load_folder(repo.root / "model")


def mergekit_yaml(plain: Path, out: Path) -> dict[str, torch.Tensor]:
    recipe = {
        "merge_method": "ties",
        "base_model": str(plain / "base"),
        "models": [
            {"model": str(plain / m), "parameters": {"weight": 1.0, "density": 0.2}}
            for m in ("a", "b")
        ],
        "parameters": {"normalize": True},
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    config = out.parent / "mergekit.yaml"
    config.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, str(SHIM), str(config), str(out), "--no-copy-tokenizer", "--quiet"]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    return load_folder(out)


@pytest.mark.slow
def test_mergekit_preset_is_bit_identical_to_mergekit_yaml_under_massive_ties(llama_repo):
    repo, plain = llama_repo
    ours = mvc_merge(repo, "m-mergekit", MergeParams(preset="mergekit", density=0.2))
    theirs = mergekit_yaml(plain, repo.root.parent / "mergekit-out")
    assert set(ours) == set(theirs) == set(llama_shapes())
    a = load_folder(plain / "a")
    for name, expected in theirs.items():
        assert ours[name].dtype == expected.dtype == torch.bfloat16, name
        assert torch.equal(ours[name].view(torch.int16), expected.view(torch.int16)), name
    # The ties are massive, and choosing among them matters: the index rule differs.
    mlp = "model.layers.0.mlp.up_proj.weight"
    tau = (a[mlp].float() - load_folder(plain / "base")[mlp].float()).abs().flatten()
    k = int(0.2 * tau.numel())
    kth = tau.sort(descending=True).values[k - 1]
    assert int((tau == kth).sum()) > tau.numel() // 10
    default = mvc_merge(repo, "m-default", MergeParams(density=0.2))
    assert not torch.equal(default[mlp], theirs[mlp])
