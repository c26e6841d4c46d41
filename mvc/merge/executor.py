"""The streaming executor: runs a MergePlan's arithmetic chunk by chunk, straight into the store.

For each tensor the plan resolves, the strategy's statistics passes and then its combine
step read the base's and the branches' row chunks from the store (decoded on a read-ahead
thread, on the backend's device) and compute on windows of at most ``window_bytes``; every
merged chunk is stored at once, as a delta against the same chunk of the merge base (a
merge stays close to its base: measured on MiniLM TIES, 41% smaller than a delta against
the first branch, and one delta level shallower to read).
What is alive at a time is bounded by constants times the chunk size (``cache_bytes`` of
decoded inputs, a dozen window-sized temporaries), so peak memory does not grow with the
model. Tensors the plan takes whole are never read at all.

On the CPU, ``threads`` tensors are computed at once (numpy releases the GIL inside each
large operation, so two tensors keep two cores busy) and as many chunk sets are decoded at
once. A tensor's job sees its chunks in order on one thread, so the bits do not depend on
the thread count; memory grows by the same per-tensor bound for each thread. The window
size, cache size and thread count come from :mod:`mvc.tuning`.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvc.errors import MvcError
from mvc.formats.dtypes import get_dtype
from mvc.formats.safetensors import RowWriter, build_header, plan_layout
from mvc.memory import reuse_large_buffers
from mvc.merge.arrays import Array, ArrayOps
from mvc.merge.growth import rows_of
from mvc.merge.lines import count_layers
from mvc.merge.params import MergeParams
from mvc.merge.planner import FilePlan, MergePlan, TensorDecision
from mvc.merge.strategies import Chunk, TensorSpec, TensorStats, get_strategy
from mvc.merge.writeback import WriteBehind
from mvc.progress import Progress
from mvc.repo.manifest import Chunk as StoredChunk
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.store import ObjectStore
from mvc.store.chunking import DEFAULT_CHUNK_BYTES
from mvc.tuning import cache_bytes, threads, window_bytes

WRITE_BEHIND_BYTES = 4 * DEFAULT_CHUNK_BYTES  # merged data queued (each chunk: a put and a write)
SAMPLE_CHUNKS = 3  # chunk sets a sampling pass reads from a tensor too large to cache

_Key = tuple[str, str]  # (model file path, tensor name)


@dataclass
class TensorResult:
    """A resolved tensor: its stored entry, statistics, and (optionally) its TALL masks' object."""

    entry: TensorEntry
    stats: TensorStats
    mask_id: str | None  # one U8 object, row i = branch i's packed mask
    branches: tuple[int, ...]
    strategy: str
    params: MergeParams


class Executor:
    """Computes the resolved tensors of a plan and assembles the output manifests."""

    def __init__(
        self,
        store: ObjectStore,
        base_files: Mapping[str, Manifest],
        branch_files: Sequence[Mapping[str, Manifest]],
        params: MergeParams,
        ops: ArrayOps,
        masks: bool = True,
        progress: Progress | None = None,
        scratch: Path | None = None,
        watch: Callable[[str, TensorEntry], None] | None = None,
    ) -> None:
        self.store = store
        self.base = base_files
        self.branches = branch_files
        self.params = params
        self.ops = ops
        self.masks = masks
        self.progress = progress or Progress()
        self.results: dict[tuple[str, str], TensorResult] = {}
        # With a scratch folder, each merged model file is also written there as it is
        # computed (``written``: path -> file), ready to be moved into the work tree.
        self.scratch = scratch
        self.written: dict[str, Path] = {}
        # Told (model file path, entry) as each resolved tensor's chunk ids become known, in
        # file order; what it raises stops the merge (verify --fail-fast).
        self.watch = watch
        # Compute windows (temporaries scale with them, not with the stored chunk), the
        # decoded-input cache per tensor, and tensors computed at once (mvc.tuning).
        self.window_bytes = window_bytes()
        self.cache_bytes = cache_bytes()
        self.threads = threads() if ops.concurrent else 1
        self._progress_lock = threading.Lock()

    def run(self, plan: MergePlan) -> dict[str, Manifest | bytes]:
        """The merged file set: manifests for model files, bytes for everything else."""
        self.check(plan)
        models = [self.base, *self.branches]  # a lazy clone fetches their objects in one batch
        self.store.prefetch(oid for m in models for f in m.values() for oid in f.object_ids())
        output: dict[str, Manifest | bytes] = {}
        total = sum(
            self.base[path].tensor(t.name).nbytes
            for path, f in plan.files.items()
            for t in f.tensors
            if t.action == "resolve"
        )
        reuse_large_buffers(2 * DEFAULT_CHUNK_BYTES)
        with (
            ThreadPoolExecutor(self.threads, thread_name_prefix="mvc-read") as reader,
            ThreadPoolExecutor(self.threads, thread_name_prefix="mvc-merge") as compute,
            WriteBehind(self.store, WRITE_BEHIND_BYTES) as writer,
        ):
            self._reader = reader
            self._compute = compute
            self._writer = writer
            self._prefetched: dict[_Key, Future[_Loaded]] = {}
            self._context = self._model_context(plan)
            self.progress.start("merging", total)
            for path, file_plan in plan.files.items():
                if file_plan.action == "deleted":
                    continue
                if file_plan.kind == "blob":
                    assert file_plan.blob is not None
                    output[path] = file_plan.blob
                elif file_plan.manifest is not None:
                    output[path] = file_plan.manifest
                else:
                    output[path] = self._merge_file(file_plan)
        self.progress.finish()
        return output

    def check(self, plan: MergePlan) -> None:
        """Every resolved tensor's strategy, parameters (with its rule's overrides), branch
        count and dtype, checked before the first tensor is read, so bad input stops the
        merge with nothing written."""
        # LiNeS places a tensor by depth among the model's numbered blocks.
        self._n_layers = count_layers(t.name for f in plan.files.values() for t in f.tensors)
        seen: set[tuple[str, int, tuple[int, ...]]] = set()
        for path, file_plan in plan.files.items():
            for decision in file_plan.tensors:
                if decision.action != "resolve":
                    continue
                strategy = get_strategy(decision.strategy or "ties")
                key = (strategy.name, id(decision.params), decision.branches)
                if key not in seen:
                    seen.add(key)
                    params = self.params.with_overrides(decision.params)
                    strategy.check(
                        params.for_subset(decision.branches, len(self.branches)),
                        len(decision.branches),
                    )
                strategy.check_tensor(self._spec(path, decision))

    # ------------------------------------------------------------------ files
    def _merge_file(self, file_plan: FilePlan) -> Manifest:
        template = self.branches[file_plan.header_source][file_plan.path]
        header_raw, order = self._output_layout(template, file_plan)
        sink = None
        if self.scratch is not None:
            sink = RowWriter(self.scratch / f"{secrets.token_hex(8)}.safetensors", header_raw)
        try:
            entries = self._merge_tensors(file_plan, sink)
            if sink is not None:
                self._writer.drain()
                self.written[file_plan.path] = sink.close()
        except BaseException:
            if sink is not None:
                self._writer.drain(raise_errors=False)
                sink.discard()
            raise
        return Manifest(header_raw, tuple(entries[name] for name in order))

    def _merge_tensors(self, file_plan: FilePlan, sink: RowWriter | None) -> dict[str, TensorEntry]:
        """Every tensor's entry; resolved ones computed ``threads`` at a time, each finished
        (its chunk ids known, ``watch`` told) in file order as soon as it is done."""
        entries: dict[str, TensorEntry] = {}
        resolving = [d for d in file_plan.tensors if d.action == "resolve"]
        if resolving:
            self._prefetch(file_plan.path, resolving[0])
        following = {d.name: n for d, n in zip(resolving, resolving[1:], strict=False)}
        running: deque[tuple[str, Future[Callable[[], TensorEntry]]]] = deque()

        def settle(wait: bool) -> None:
            """Finish tensors from the oldest on: those computed (with ``wait``, all)."""
            while running and (wait or running[0][1].done()):
                name, task = running.popleft()
                entries[name] = task.result()()
                if self.watch is not None:
                    self.watch(file_plan.path, entries[name])

        try:
            for decision in file_plan.tensors:
                if decision.action == "resolve":
                    while len(running) >= self.threads:  # at most `threads` tensors at once
                        running[0][1].exception()
                        settle(wait=False)
                    settle(wait=False)
                    if decision.name in following:
                        self._prefetch(file_plan.path, following[decision.name])
                    task = self._compute.submit(self._resolve, file_plan.path, decision, sink)
                    running.append((decision.name, task))
                elif decision.entry is not None and decision.action != "deleted":
                    if sink is not None:
                        self._writer.submit(self._copy_entry, sink, decision.entry)
                    entries[decision.name] = decision.entry
            settle(wait=True)
        finally:  # nothing may still be computing when the caller cleans up
            for _, task in running:
                task.exception()
        order = [d.name for d in file_plan.tensors if d.name in entries]
        return {name: entries[name] for name in order}

    def _output_layout(self, template: Manifest, file_plan: FilePlan) -> tuple[bytes, list[str]]:
        """The output header and its tensor order, known before anything is computed.

        The template's header when the tensor layout is unchanged (so an unchanged layout
        stays byte-identical), otherwise one laid out as the safetensors library would.
        """
        specs = {
            d.name: (d.name, entry.dtype, entry.shape)
            for d in file_plan.tensors
            if d.action != "deleted"
            and (
                entry := self.base[file_plan.path].tensor(d.name)
                if d.action == "resolve" and d.entry is None
                else d.entry
            )
            is not None
        }
        template_entries = template.by_name()
        same = set(specs) == set(template_entries) and all(
            (template_entries[n].dtype, template_entries[n].shape) == specs[n][1:] for n in specs
        )
        if same:
            return template.header_raw, [t.name for t in template.tensors]
        header_raw = build_header(list(specs.values()), template.header.metadata)
        return header_raw, [info.name for info in plan_layout(list(specs.values()))]

    def _copy_entry(self, sink: RowWriter, entry: TensorEntry) -> None:
        """Write a tensor taken as it is into the output file (decoded from the store)."""
        self._copy_chunks(sink, entry.name, entry.chunks)

    def _copy_chunks(self, sink: RowWriter, name: str, chunks: Sequence[StoredChunk]) -> None:
        for chunk in chunks:
            sink.write(name, chunk.start, self.store.get_view(chunk.oid))

    # ------------------------------------------------------------------ tensors
    def _model_context(self, plan: MergePlan) -> Any:
        """Model-wide statistics (e.g. the paper preset's global trim), when the strategy has any.

        They span every tensor resolved with the default recipe, so those tensors must all
        have been changed by the same branches.
        """
        decisions = [
            (path, t)
            for path, f in plan.files.items()
            for t in f.tensors
            if t.action == "resolve" and not t.params
        ]
        if not decisions:
            return None
        strategy = get_strategy(decisions[0][1].strategy or "ties")
        branch_sets = {t.branches for _, t in decisions}
        specs = [self._spec(path, t) for path, t in decisions]
        params = self.params
        if len(branch_sets) == 1:
            params = params.for_subset(next(iter(branch_sets)), len(self.branches))
        model_job = strategy.model_job(params, specs)
        if model_job is None:
            return None
        if len(branch_sets) != 1:
            raise MvcError(
                "a model-wide trim needs every merged tensor changed on the same branches",
                hint="use --all-tensors, or a per-tensor preset",
            )
        while (current_pass := model_job.next_pass()) is not None:
            for (path, decision), spec in zip(decisions, specs, strict=True):
                base_entry = self.base[path].tensor(decision.name)
                inputs = [self.branches[i][path].tensor(decision.name) for i in decision.branches]
                for chunk in self._chunks(spec, base_entry, inputs):
                    current_pass.update(spec, chunk)
        return model_job.context()

    def _spec(self, path: str, decision: TensorDecision) -> TensorSpec:
        entry = self.base[path].tensor(decision.name)
        return TensorSpec(
            decision.name, entry.shape, entry.dtype, len(decision.branches), self._n_layers
        )

    def _resolve(
        self, path: str, decision: TensorDecision, sink: RowWriter | None = None
    ) -> Callable[[], TensorEntry]:
        """Compute a tensor and queue its writes; the returned call waits for them."""
        strategy = get_strategy(decision.strategy or "ties")
        n_total = len(self.branches)
        params = self.params.with_overrides(decision.params).for_subset(decision.branches, n_total)
        base_entry = self.base[path].tensor(decision.name)
        inputs = [self.branches[i][path].tensor(decision.name) for i in decision.branches]
        spec = self._spec(path, decision)
        context = self._context if not decision.params else None
        job = strategy.tensor_job(params, spec, context, masks=self.masks)
        source = self._source(spec, base_entry, inputs, (path, decision.name))
        while (current_pass := job.next_pass()) is not None:
            for _, slices in source(current_pass.sample):
                for chunk in slices:
                    current_pass.update(chunk)
        writes = []
        grown = decision.entry  # set when a branch appended rows: the output's shape
        for loaded, slices in source(False):
            parts = [self.ops.to_bytes(job.combine(chunk)) for chunk in slices]
            merged = parts[0] if len(parts) == 1 else b"".join(parts)
            layout = base_entry.chunks[loaded.index]
            if grown is not None and loaded.index == len(base_entry.chunks) - 1:
                layout = grown.chunks[loaded.index]  # the shared rows, then appended ones
                tail = self.store.get_view(layout.oid)[memoryview(merged).nbytes :]
                merged = b"".join((merged, tail))
            shape = (layout.stop - layout.start, *base_entry.shape[1:]) if base_entry.shape else ()
            oid = self._writer.put(
                merged,
                base_entry.dtype,
                shape,
                base=base_entry.chunks[loaded.index].oid,
                base_data=loaded.base_raw,
            )
            writes.append((layout, oid))
            if sink is not None:
                size = memoryview(merged).nbytes
                self._writer.submit(sink.write, decision.name, layout.start, merged, nbytes=size)
        appended = grown.chunks[len(base_entry.chunks) :] if grown is not None else ()
        if sink is not None and appended:
            self._writer.submit(self._copy_chunks, sink, decision.name, appended)
        out = grown or base_entry
        stats = job.stats()
        mask_write = None
        if stats.masks is not None:
            # One object per tensor, not per branch: a merge of small tensors would
            # otherwise spend a third of its writes on tiny mask files.
            rows = (len(stats.masks), len(stats.masks[0]))
            mask_write = self._writer.put(b"".join(stats.masks), "U8", rows)
            stats.masks = None
        with self._progress_lock:
            self.progress.advance(base_entry.nbytes, decision.name)

        def finish() -> TensorEntry:
            stored = tuple(StoredChunk(lay.start, lay.stop, oid.result()) for lay, oid in writes)
            entry = TensorEntry(
                decision.name, out.dtype, out.shape, out.nbytes, stored + tuple(appended)
            )
            mask_id = None if mask_write is None else mask_write.result()
            self.results[(path, decision.name)] = TensorResult(
                entry, stats, mask_id, decision.branches, strategy.name, params
            )
            return entry

        return finish

    def _source(
        self, spec: TensorSpec, base: TensorEntry, inputs: Sequence[TensorEntry], key: _Key
    ) -> Callable[[bool], Iterable[tuple[_Loaded, list[Chunk]]]]:
        """How to iterate the tensor once per pass and once more for combine.

        A tensor whose decoded inputs fit in ``cache_bytes`` (a fixed multiple of the chunk
        size, so the bound does not grow with the model) is decoded once and every pass
        reuses it; when it is also a single compute slice (most tensors) the same
        :class:`Chunk` is reused, with its task vectors. Larger tensors are streamed from
        the store again on each pass, except that a sampling pass (the argument) reads only
        ``SAMPLE_CHUNKS`` chunks spread over the tensor.
        """
        if base.nbytes * (1 + len(inputs)) > self.cache_bytes:
            count = len(base.chunks)
            spread = sorted(
                {i * (count - 1) // max(1, SAMPLE_CHUNKS - 1) for i in range(SAMPLE_CHUNKS)}
            )

            def stream(sample: bool) -> Iterator[tuple[_Loaded, list[Chunk]]]:
                indices = spread if sample else range(count)
                for item in self._loaded(base, inputs, key, indices):
                    yield item, self._slices(spec, item)

            return stream
        loaded = list(self._loaded(base, inputs, key))
        if len(loaded) == 1 and len(first := self._slices(spec, loaded[0])) == 1:
            return lambda sample: [(loaded[0], first)]
        return lambda sample: ((item, self._slices(spec, item)) for item in loaded)

    def _chunks(
        self, spec: TensorSpec, base: TensorEntry, inputs: Sequence[TensorEntry]
    ) -> Iterator[Chunk]:
        """Every compute slice of the tensor, streamed from the store."""
        for item in self._loaded(base, inputs):
            yield from self._slices(spec, item)

    def _slices(self, spec: TensorSpec, item: _Loaded) -> list[Chunk]:
        """Row windows of one stored chunk of at most ``window_bytes`` each.

        Strategies give the same bits for any chunking, so computing on small windows only
        bounds the temporaries (a dozen or so per window), not the result.
        """
        rows = item.base.shape[0] if spec.shape else 1
        row_bytes = spec.row_numel * get_dtype(spec.dtype).itemsize
        step = max(1, self.window_bytes // max(1, row_bytes))
        if rows <= step:
            return [Chunk(spec, item.start, item.base, item.thetas, self.ops)]
        return [
            Chunk(
                spec,
                item.start + r,
                item.base[r : r + step],
                tuple(t[r : r + step] for t in item.thetas),
                self.ops,
            )
            for r in range(0, rows, step)
        ]

    def _loaded(
        self,
        base: TensorEntry,
        inputs: Sequence[TensorEntry],
        key: _Key | None = None,
        indices: Sequence[int] | None = None,
    ) -> Iterator[_Loaded]:
        """Stored chunk sets of base and inputs (all, or ``indices``), decoded; the next set
        while this one is used.

        ``key`` names the tensor whose first set :meth:`_prefetch` may have started.
        """
        order = list(range(len(base.chunks)) if indices is None else indices)
        if not order:
            return
        upcoming = self._prefetched.pop(key, None) if key is not None else None
        if upcoming is None or order[0] != 0:  # not prefetched, or a later pass
            upcoming = self._reader.submit(self._load, base, inputs, order[0])
        for following in [*order[1:], None]:
            item = upcoming.result()
            if following is not None:
                upcoming = self._reader.submit(self._load, base, inputs, following)
            yield item

    def _prefetch(self, path: str, decision: TensorDecision) -> None:
        """Start decoding a tensor's first chunks while the one before it is computed."""
        base = self.base[path].tensor(decision.name)
        inputs = [self.branches[i][path].tensor(decision.name) for i in decision.branches]
        if base.chunks:
            key = (path, decision.name)
            self._prefetched[key] = self._reader.submit(self._load, base, inputs, 0)

    def _load(self, base: TensorEntry, inputs: Sequence[TensorEntry], index: int) -> _Loaded:
        """Decode one chunk set. Branch chunks are usually deltas on the base chunk, so the
        base's bytes are handed to the store to decode them on, instead of decoding it again."""
        layout = base.chunks[index]
        shape = (layout.stop - layout.start, *base.shape[1:]) if base.shape else ()
        known = {layout.oid: self.store.get_view(layout.oid)}
        rows = layout.stop - layout.start
        row_nbytes = known[layout.oid].nbytes // max(1, rows)
        # The base chunk's rows of each input (a grown input's last chunk is longer).
        raws = [
            rows_of(self.store, e, index, layout.start, layout.stop, row_nbytes, known)
            for e in inputs
        ]
        return _Loaded(
            index,
            layout.start,
            self.ops.load(known[layout.oid], base.dtype, shape),
            tuple(self.ops.load(raw, base.dtype, shape) for raw in raws),
            known[layout.oid],
        )


@dataclass(frozen=True)
class _Loaded:
    """One stored chunk of the base and of each input, decoded on the backend's device."""

    index: int
    start: int  # first row
    base: Array
    thetas: tuple[Array, ...]
    base_raw: memoryview  # the base's bytes: the merged chunk's delta base
