"""The mergekit preset's choice among tied magnitudes, reproduced without torch.

mergekit 0.1.5 keeps the first k of ``torch.argsort(|w|.float(), descending=True)``; torch's
CPU sort is libstdc++'s unstable introsort, which :mod:`mvc.merge.introsort` replays. These
tests hold the replay against the real torch on massive ties (sizes on both sides of the
16-element insertion-sort threshold, bf16-derived and fp32 inputs, one and two threads) and
check that a mergekit-preset merge on the CPU never imports torch.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from model_factory import write_model_folder

from mvc.merge.arrays import NumpyOps
from mvc.merge.introsort import _heapsort, torch_kept_ties
from mvc.merge.select import TORCH_ORDER, Request, Selection
from mvc.merge.strategies.base import Chunk, TensorSpec


def tied_magnitudes(n: int, kind: str, seed: int) -> np.ndarray:
    """|τ| with few distinct values: bf16 fine-tune deltas, or an fp32 grid with NaNs."""
    rng = np.random.default_rng(seed)
    if kind == "bf16":
        base = torch.from_numpy(rng.standard_normal(n, dtype=np.float32) * 0.02).bfloat16()
        step = torch.from_numpy(rng.integers(-3, 4, n).astype(np.float32) * 2.0**-13)
        tuned = (base.float() + step).bfloat16()
        return (tuned.float() - base.float()).abs().numpy()
    values = rng.integers(0, 6, n).astype(np.float32) * 0.25
    values[rng.random(n) < 0.01] = np.nan
    return values


def torch_kept(magnitudes: np.ndarray, k: int, descending: bool = True) -> np.ndarray:
    """The flat indices mergekit keeps: the first k of torch's CPU argsort."""
    return torch.argsort(torch.from_numpy(magnitudes), descending=descending).numpy()[:k]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [5, 16, 17, 40, 1000, 65_537, 1_000_003])
@pytest.mark.parametrize("kind", ["bf16", "fp32"])
def test_replay_keeps_the_ties_torch_keeps(n, kind, threads):
    magnitudes = tied_magnitudes(n, kind, seed=n)
    keys = np.minimum(magnitudes.view(np.int32), 0x7F800001)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        order = torch.argsort(torch.from_numpy(magnitudes), descending=True).numpy()
    finally:
        torch.set_num_threads(previous)
    split = 0
    for k in sorted({1, max(1, n // 5), n // 2, n - 1}):
        value = keys[order[k - 1]]
        greater = int(np.count_nonzero(keys > value))
        equal = int(np.count_nonzero(keys == value))
        assert greater + equal >= k
        kept = torch_kept_ties(keys, int(value), k - greater)
        np.testing.assert_array_equal(kept, np.sort(order[greater:k]))
        split += 0 < k - greater < equal
    assert split or n <= 16  # the case this exists for: many ties, some kept, some dropped


@pytest.mark.parametrize("rows", [1_000, 7_919, 50_000])
@pytest.mark.parametrize("top", [True, False])
def test_selection_under_torch_order_matches_argsort_whatever_the_chunks(rows, top):
    """Streamed rank passes plus the gathered replay give exactly mergekit's mask."""
    n = 50_000
    magnitudes = tied_magnitudes(n, "bf16", seed=3)
    count = n // 5
    spec = TensorSpec("w", (n,), "F32", 1)
    ops = NumpyOps()

    def chunks():
        for s in range(0, n, rows):
            part = magnitudes[s : s + rows]
            yield Chunk(spec, s, np.zeros_like(part), (part,), ops)

    selection = Selection([Request(0, top, count)], n, "F32", tie_order=TORCH_ORDER)
    for p in selection.passes():
        for c in chunks():
            p.update(c)
    cut = selection.cuts[0]
    assert cut.split
    mask = np.concatenate(
        [cut.apply(ops, c.magnitudes()[0].view(np.int32), c.flat_start) for c in chunks()]
    )
    expected = np.zeros(n, dtype=bool)
    expected[torch_kept(magnitudes, count, descending=top)] = True
    np.testing.assert_array_equal(mask, expected)


def test_heapsort_fallback_matches_libstdcxx(tmp_path):
    """Past the depth limit introsort heapsorts; the port must order ties as libstdc++ does."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler to build libstdc++'s partial_sort")
    source = tmp_path / "heap.cpp"
    source.write_text(
        "#include <algorithm>\n#include <cstdio>\n#include <utility>\n#include <vector>\n"
        "int main() { std::vector<std::pair<int, int>> v; int x;\n"
        "  while (std::scanf(\"%d\", &x) == 1) v.push_back({x, (int)v.size()});\n"
        "  std::partial_sort(v.begin(), v.end(), v.end(),\n"
        "    [](const auto& a, const auto& b) { return a.first > b.first; });\n"
        "  for (auto& p : v) std::printf(\"%d\\n\", p.second); }\n"
    )
    binary = tmp_path / "heap"
    subprocess.run([compiler, "-O1", "-std=c++17", str(source), "-o", str(binary)], check=True)
    rng = np.random.default_rng(11)
    for n in (1, 2, 17, 100, 301):
        keys = rng.integers(0, 5, n)
        out = subprocess.run(
            [str(binary)], input="\n".join(map(str, keys)), capture_output=True, text=True
        )
        idx = np.arange(n)
        _heapsort(keys.copy(), idx, 0, n)
        np.testing.assert_array_equal(idx, np.array(out.stdout.split(), dtype=np.int64))


def mergekit_ties(base: torch.Tensor, tuned: list[torch.Tensor], density: float) -> torch.Tensor:
    """mergekit 0.1.5's TIES (weights 1, normalize, fp32 arithmetic) from its own functions."""
    sparsify = pytest.importorskip("mergekit.sparsify")
    gta = pytest.importorskip("mergekit.merge_methods.generalized_task_arithmetic")
    deltas = torch.stack([sparsify.magnitude(t.float() - base.float(), density) for t in tuned])
    mask = gta.get_mask(deltas, method="sum")
    divisor = mask.to(deltas.dtype).sum(dim=0)
    divisor[divisor == 0] = 1
    return (base.float() + (deltas * mask).sum(dim=0) / divisor).to(torch.bfloat16)


def test_mergekit_preset_on_bf16_ties_never_imports_torch(base_repo, assert_no_torch):
    """The split ties of a bf16 TIES merge are chosen as mergekit does, on numpy alone."""
    repo, shape = base_repo, (64, 96)
    rng = np.random.default_rng(5)
    base = np.sign(rng.standard_normal(shape)) * (1 + rng.integers(0, 128, shape) / 128)
    weights = {"base": base.astype(np.float32)}
    for seed, name in ((1, "a"), (2, "b")):
        step = np.random.default_rng(seed).integers(-3, 4, shape) / 128
        weights[name] = (base + step).astype(np.float32)
    write_model_folder(repo.root / "model", {"w": weights["base"]}, bf16=True)
    repo.commit("bf16 base", all=True)
    for name in ("a", "b"):
        repo.switch(name, create=True, start="main")
        write_model_folder(repo.root / "model", {"w": weights[name]}, bf16=True)
        repo.commit(name, all=True)
    repo.switch("main")
    code = (
        "from mvc.merge import MergeOptions, MergeParams, merge\n"
        "from mvc.repo import Repo\n"
        "params = MergeParams(preset='mergekit', density=0.2)\n"
        "merge(Repo.open('.'), ['a', 'b'], MergeOptions(params=params, device='cpu'))\n"
    )
    assert_no_torch(code, repo.root)
    ours = repo.load_state_dict("HEAD", "model/model.safetensors")["w"]
    bf16 = {k: torch.from_numpy(v).bfloat16() for k, v in weights.items()}
    theirs = mergekit_ties(bf16["base"], [bf16["a"], bf16["b"]], 0.2)
    assert torch.equal(ours.view(torch.int16), theirs.view(torch.int16))
