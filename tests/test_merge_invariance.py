"""A merge's bits do not depend on how it is cut or scheduled.

Two settings each of the stored chunk size (ingestion), the compute window
(``MVC_WINDOW_BYTES``), the decoded-input cache (``MVC_CACHE_BYTES``: below a tensor's size
its passes stream from the store and sample) and the thread count (``MVC_THREADS``) must give
the same merged bytes, statistics and TALL masks, for TIES (default and ``--preset mergekit``),
DARE-TIES and the default mode's exact copies, on bf16 task vectors with massive ties at the
trim threshold (every |τ| a multiple of an ulp, so a few values are shared by thousands).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_factory import write_safetensors_np

from mvc.merge.arrays import NumpyOps
from mvc.merge.params import MergeParams
from mvc.merge.pipeline import MergeOutcome, run
from mvc.merge.recipe import Recipe
from mvc.repo import Manifest
from mvc.repo.ingest import ingest_file
from mvc.store import ObjectStore

SHAPES = {"big.weight": (640, 256), "wide.weight": (96, 1100), "norm.weight": (256,)}
ULP = 2.0**-7  # bf16 ulp of |x| in [1, 2)
RECIPES = [
    ("ties", MergeParams(density=0.2)),
    ("ties", MergeParams(density=0.2, preset="mergekit")),
    ("dare_ties", MergeParams(density=0.3, seed=3)),
    ("task_arithmetic", MergeParams()),  # the default mode's verbatim copies where one side changed
]
SMALL_CHUNKS = 40_000  # bytes: several stored chunks per tensor
SMALL_WINDOW = 9_000  # bytes: several compute windows per chunk


def _weights(variant: int) -> dict[str, np.ndarray]:
    """Base ±[1, 2) exact in bf16; variant k adds -2..2 ulps to about half the elements."""
    out = {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        rng = np.random.default_rng([11, i])
        values = np.sign(rng.standard_normal(shape)) * (1 + rng.integers(0, 128, shape) * ULP)
        if variant:
            tweak = np.random.default_rng([11, i, variant])
            steps = tweak.integers(-2, 3, shape) * (tweak.random(shape) < 0.5)
            values = values + steps * ULP
        out[name] = values.astype(np.float32)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("invariance")
    for variant in range(3):
        write_safetensors_np(root / f"{variant}.safetensors", _weights(variant), bf16=True)
    return root


def _merge(
    root: Path, files: Path, name: str, params: MergeParams, chunk_bytes: int | tuple[int, ...]
):
    """The merge of variants 1 and 2 onto 0, each stored in chunks of ``chunk_bytes``
    (one size, or one per variant)."""
    store = ObjectStore(root / "objects")
    sizes = chunk_bytes if isinstance(chunk_bytes, tuple) else (chunk_bytes,) * 3
    blobs = [
        {"model.safetensors": ingest_file(store, files / f"{v}.safetensors", None, sizes[v])}
        for v in range(3)
    ]
    blobs = [{path: m.to_bytes() for path, m in side.items()} for side in blobs]
    recipe = Recipe(
        base="0" * 40,
        parents=("1" * 40, "2" * 40),
        contributing=(0, 1),
        strategy=name,
        params=params,
        all_tensors=name != "task_arithmetic",
    )
    outcome = run(recipe, store, blobs[0], blobs[1:], NumpyOps(), record=False)
    return store, outcome


def _tensors(store: ObjectStore, outcome: MergeOutcome) -> dict[str, tuple]:
    """Each merged tensor's bytes, chunk ids, statistics and mask bytes."""
    manifest = outcome.files["model.safetensors"]
    assert isinstance(manifest, Manifest)
    out = {}
    for entry in manifest.tensors:
        result = outcome.results.get(("model.safetensors", entry.name))
        stats = result.stats.to_record() if result else None
        masks = store.get(result.mask_id) if result and result.mask_id else None
        data = b"".join(store.get(c.oid) for c in entry.chunks)
        out[entry.name] = (data, entry.chunk_ids, stats, masks)
    return out


SETTINGS = {
    "window": ({"MVC_WINDOW_BYTES": str(SMALL_WINDOW)}, {"MVC_WINDOW_BYTES": str(1 << 22)}),
    "cache": ({"MVC_CACHE_BYTES": "1"}, {"MVC_CACHE_BYTES": str(1 << 28)}),
    "threads": ({"MVC_THREADS": "1"}, {"MVC_THREADS": "2"}),
}


@pytest.mark.parametrize(("name", "params"), RECIPES, ids=lambda x: str(x)[:40])
@pytest.mark.parametrize("knob", [*SETTINGS, "chunk"])
def test_merged_bits_do_not_depend_on_chunks_windows_cache_or_threads(
    tmp_path, monkeypatch, files, name, params, knob
):
    results = []
    for i in range(2):
        chunk_bytes = (SMALL_CHUNKS, 1 << 24)[i] if knob == "chunk" else SMALL_CHUNKS
        for key in ("MVC_WINDOW_BYTES", "MVC_CACHE_BYTES", "MVC_THREADS"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MVC_WINDOW_BYTES", str(SMALL_WINDOW))  # several windows by default
        for key, value in SETTINGS[knob][i].items() if knob in SETTINGS else ():
            monkeypatch.setenv(key, value)
        store, outcome = _merge(tmp_path / f"{knob}{i}", files, name, params, chunk_bytes)
        results.append(_tensors(store, outcome))
        store.close()
    first, second = results
    assert first.keys() == second.keys() == SHAPES.keys()
    resolved = 0
    for tensor, (data, ids, stats, masks) in first.items():
        other = second[tensor]
        assert data == other[0], tensor
        assert stats == other[2] and masks == other[3], tensor
        if knob != "chunk":  # the same chunking: the same objects
            assert ids == other[1], tensor
        resolved += stats is not None
    assert resolved == len(SHAPES)  # every tensor went through the arithmetic


@pytest.mark.parametrize(("name", "params"), RECIPES, ids=lambda x: str(x)[:40])
def test_sides_stored_in_other_chunkings_merge_as_if_chunked_alike(tmp_path, files, name, params):
    """Chunks are paired by the rows they hold, not by index: branches stored in other
    chunk sizes than the base (one chunk per tensor; chunks straddling the base's) give the
    bits, statistics and masks of a merge where every side is chunked alike."""
    results = []
    for i, sizes in enumerate([SMALL_CHUNKS, (SMALL_CHUNKS, 1 << 24, 27_000)]):
        store, outcome = _merge(tmp_path / str(i), files, name, params, sizes)
        results.append(_tensors(store, outcome))
        store.close()
    alike, mixed = results
    assert alike.keys() == mixed.keys() == SHAPES.keys()
    for tensor, (data, ids, stats, masks) in alike.items():
        assert stats is not None, tensor  # resolved by arithmetic, not a conflict
        assert (data, ids, stats, masks) == mixed[tensor], tensor


def test_the_inputs_tie_massively_at_the_trim_threshold():
    """What makes the test above bite: far more |τ| equal the k-th value than are kept of it."""
    import torch

    base, tuned = (torch.from_numpy(_weights(v)["big.weight"]).bfloat16() for v in (0, 1))
    tau = (tuned.float() - base.float()).abs().flatten()
    k = int(0.2 * tau.numel())
    kth = tau.sort(descending=True).values[k - 1]
    ties = int((tau == kth).sum())
    kept_of_ties = k - int((tau > kth).sum())
    assert ties > 2 * kept_of_ties > 0
