"""`mvc merge` of PEFT LoRA adapters, in weight space.

An adapter folder changed on several branches is taken out of the ordinary planner (which
would merge ``lora_A`` and ``lora_B`` element by element: the product of merged factors
is not the merge of the products) and merged here, module by module:

1. ΔW_i = s_i·B_i·A_i for each branch and the merge base (zero where an adapter, or the
   module, is absent), with each side's own r, alpha, rsLoRA and rank/alpha patterns;
2. the three-way rules on the module as a whole (unchanged, one-sided and identical
   modules keep their factors byte for byte), and the chosen strategy on the ΔWs of the
   branches that changed it, through the same chunked jobs as every tensor merge;
3. written back as an adapter by truncated SVD at ``rank`` (error recorded per module),
   by exact concatenation of the factors for linear rules (``combine="cat"``), or added
   to the base model stored in the repository (``into="model"``).

Full tensors (``modules_to_save``, trained biases) follow the ordinary rules, with the
base model's tensor as the ancestor when the merge base has no adapter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mvc.errors import ConflictError, MvcError
from mvc.formats.peft import (
    base_tensor_name,
    config_path,
    output_config,
    weights_path,
)
from mvc.formats.safetensors import build_header, plan_layout
from mvc.formats.torch_io import torch_dtype
from mvc.merge.adapter_plan import AdapterOptions
from mvc.merge.adapters import (
    AdapterSide,
    find_base_model,
    oriented,
    read_side,
)
from mvc.merge.device import resolve_device
from mvc.merge.lora import Factors, check_rank, concatenate, factorize
from mvc.merge.params import MergeParams
from mvc.merge.planner import SIDE_STRATEGIES
from mvc.merge.recipe import Recipe
from mvc.merge.strategies import Chunk, TensorSpec, TensorStats, get_strategy
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.state_dicts import load_tensor, store_tensor
from mvc.store import ObjectStore

Sides = list[AdapterSide | None]  # one per contributing branch (None: it has no adapter)


@dataclass
class AdapterMerge:
    """Merges the adapter folders that changed on several branches."""

    store: ObjectStore
    folders: list[str]
    base_files: Mapping[str, bytes]
    branch_files: Sequence[Mapping[str, bytes]]
    base_models: Mapping[str, Manifest]  # the merge base's model files (the base model)
    strategy: str
    params: MergeParams
    options: AdapterOptions = field(default_factory=AdapterOptions)
    # The merge's result outside the adapter folders (what ``into="model"`` bakes into, so a
    # branch's own change of the base model is kept); None: the merge base's files.
    merged: Mapping[str, Manifest | bytes] | None = None
    records: dict[str, Any] = field(default_factory=dict)

    def run(self) -> dict[str, Manifest | bytes | None]:
        """path -> new content (None: the path is removed from the result)."""
        output: dict[str, Manifest | bytes | None] = {}
        for folder in self.folders:
            output.update(self._folder(folder))
        return output

    # ------------------------------------------------------------------ one folder
    def _folder(self, folder: str) -> dict[str, Manifest | bytes | None]:
        base = read_side(self.base_files, folder)
        sides = [read_side(files, folder) for files in self.branch_files]
        where = folder or "."
        if base is not None and any(s is None for s in sides):
            raise ConflictError(
                f"adapter {where}/: deleted on one branch, modified on another",
                hint="restore it on the branch that deleted it, or merge with --strategy ours",
            )
        present: list[AdapterSide] = [s for s in sides if s is not None]
        _check_compatible(present + ([base] if base else []), where)
        if self.strategy in SIDE_STRATEGIES:
            source = 0 if self.strategy == "ours" else len(sides) - 1
            self.records[folder] = {"action": "one-sided", "source": source}
            if sides[source] is None:
                return {config_path(folder): None, weights_path(folder): None}
            return {
                config_path(folder): self.branch_files[source][config_path(folder)],
                weights_path(folder): Manifest.from_bytes(
                    self.branch_files[source][weights_path(folder)], weights_path(folder)
                ),
            }
        if self.params.preset == "paper":
            raise MvcError("--preset paper (model-wide trims) does not apply to adapter merges")
        modules = sorted(set().union(*(s.layout.modules for s in present)))
        record: dict[str, Any] = {"modules": {}}
        self.records[folder] = record
        if self.options.into == "model":
            return self._into_model(folder, base, sides, modules, record)
        return self._into_adapter(folder, base, sides, modules, record)

    def _decide(self, module: str, base: AdapterSide | None, sides: Sides) -> tuple[str, list[int]]:
        """(action, branch indices) for one module under the three-way rules."""
        return _three_way(
            base.identity(module) if base else None,
            [s.identity(module) if s is not None else None for s in sides],
            f"adapter module {module}",
            hint="merge with --strategy ours|theirs",
        )

    def _merged_delta(
        self, module: str, base: AdapterSide | None, sides: Sides, changed: list[int]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The strategy on the changed branches' ΔWs, against the ancestor's ΔW."""
        out, inp = sides[changed[0]].shapes[module]
        if base is not None and module in base.layout.modules:
            ancestor = base.delta(self.store, module)
        else:
            ancestor = torch.zeros(out, inp)
        thetas = [sides[i].delta(self.store, module) for i in changed]
        params = self.params.for_subset(changed, len(sides))
        merged, stats = merge_tensor(self.strategy, params, ancestor, thetas, module)
        return merged, {"branches": changed, "stats": stats.to_record()}

    # ------------------------------------------------------------------ adapter output
    def _into_adapter(
        self,
        folder: str,
        base: AdapterSide | None,
        sides: Sides,
        modules: list[str],
        record: dict[str, Any],
    ) -> dict[str, Manifest | bytes | None]:
        present = [s for s in sides if s is not None]
        rank = self.options.rank or max(
            s.config.rank_for(m) for s in present for m in s.layout.modules
        )
        if self.options.combine == "cat":
            _cat_coefficients(self.strategy, self.params, (1.0,))  # refuse non-linear rules first
        else:
            for side in present:  # refuse an impossible rank before any module is written
                for module, shape in side.shapes.items():
                    check_rank(rank, shape, module)
        entries: dict[str, TensorEntry] = {}
        ranks: dict[str, int] = {}
        alphas: dict[str, float] = {}
        for module in modules:
            action, changed = self._decide(module, base, sides)
            item: dict[str, Any] = {"action": action}
            if action == "deleted":
                record["modules"][module] = item
                continue
            if action in ("base", "one-sided"):
                side = base if action == "base" else sides[changed[0]]
                assert side is not None
                if action == "one-sided":
                    item["source"] = changed[0]
                a, b = side.entries(module)
                names = side.layout.modules[module]
                entries[names[0]], entries[names[1]] = a, b
                ranks[module] = side.rank(module)
                alphas[module] = side.scale(module) * ranks[module]
                record["modules"][module] = item
                continue
            merged, info = self._merged_delta(module, base, sides, changed)
            item.update(info)
            if self.options.combine == "cat":
                factors = self._cat(module, base, sides, changed, merged)
            else:
                factors = factorize(merged, rank, module, self.options.svd)
            del merged
            names = sides[changed[0]].layout.modules[module]
            dtype = torch_dtype(sides[changed[0]].entries(module)[0].dtype)
            entries[names[0]] = store_tensor(self.store, names[0], factors.a.to(dtype))
            entries[names[1]] = store_tensor(self.store, names[1], factors.b.to(dtype))
            ranks[module] = alphas[module] = factors.rank
            item.update(rank=factors.rank, method=factors.method, error=factors.error)
            record["modules"][module] = item
        record["full"] = self._full_tensors(base, sides, entries)
        template = present[0].config.raw
        saved = sorted({m for s in present for m in s.config.modules_to_save})
        common = Counter(ranks.values()).most_common(1)[0][0] if ranks else rank
        config = output_config(
            template, common, ranks, alphas, sorted(ranks), saved, present[0].config.fan_in_fan_out
        )
        wpath = weights_path(folder)
        return {
            config_path(folder): _json_bytes(config),
            wpath: _manifest(entries, metadata={"format": "pt"}),
        }

    def _cat(
        self,
        module: str,
        base: AdapterSide | None,
        sides: Sides,
        changed: list[int],
        merged: torch.Tensor,
    ) -> Factors:
        weights = self.params.for_subset(changed, len(sides)).weights_for(len(changed))
        anc_c, branch_c = _cat_coefficients(self.strategy, self.params, weights)
        parts = []
        if base is not None and module in base.layout.modules and anc_c:
            a, b = (load_tensor(self.store, e) for e in base.entries(module))
            parts.append((anc_c, a, b, base.scale(module)))
        for i, c in zip(changed, branch_c, strict=True):
            a, b = (load_tensor(self.store, e) for e in sides[i].entries(module))
            parts.append((c, a, b, sides[i].scale(module)))
        return concatenate(parts, merged)

    def _full_tensors(
        self,
        base: AdapterSide | None,
        sides: Sides,
        entries: dict[str, TensorEntry],
    ) -> dict[str, Any]:
        """modules_to_save and biases: the ordinary three-way rules, tensor by tensor."""
        names = sorted(set().union(*(s.layout.full for s in sides if s is not None)))
        record = {}
        for name in names:
            anc = _entry(base, name)
            got = [_entry(s, name) for s in sides]
            ids = [None if e is None else (e.dtype, e.shape, e.chunk_ids) for e in got]
            anc_id = None if anc is None else (anc.dtype, anc.shape, anc.chunk_ids)
            action, changed = _three_way(anc_id, ids, f"adapter tensor {name}")
            if action == "base":
                if anc is not None:
                    entries[name] = anc
                record[name] = {"action": "base"}
                continue
            if action in ("one-sided", "deleted"):
                if got[changed[0]] is not None:
                    entries[name] = got[changed[0]]
                record[name] = {"action": "one-sided", "source": changed[0]}
                continue
            ancestor = anc
            if ancestor is None:
                ancestor = self._base_model_tensor(sides[changed[0]].layout.full[name])
            if ancestor is None:
                raise ConflictError(
                    f"adapter tensor {name}: added differently on several branches and the "
                    "base model is not in the merge base",
                    hint="commit the base model, or merge with --strategy ours|theirs",
                )
            params = self.params.for_subset(changed, len(sides))
            merged, stats = merge_tensor(
                self.strategy,
                params,
                load_tensor(self.store, ancestor),
                [load_tensor(self.store, got[i]) for i in changed],
                name,
            )
            entries[name] = store_tensor(self.store, name, merged, ancestor)
            record[name] = {"action": "resolve", "branches": changed, "stats": stats.to_record()}
        return record

    def _base_model_tensor(self, base_name: str) -> TensorEntry | None:
        for path, manifest in sorted(self.base_models.items()):
            names = manifest.by_name()
            if base_name in names and not path.endswith("adapter_model.safetensors"):
                return names[base_name]
        return None

    # ------------------------------------------------------------------ model output
    def _into_model(
        self,
        folder: str,
        base: AdapterSide | None,
        sides: Sides,
        modules: list[str],
        record: dict[str, Any],
    ) -> dict[str, Manifest | bytes | None]:
        first = next(s for s in sides if s is not None)
        if self.merged is None:
            files, models = self.base_files, self.base_models
        else:
            models = {p: v for p, v in self.merged.items() if isinstance(v, Manifest)}
            files = {p: b"" if isinstance(v, Manifest) else v for p, v in self.merged.items()}
        model = find_base_model(files, models, first, "the merge")
        record["model"] = model.label
        decisions = {m: self._decide(m, base, sides) for m in modules}

        def update(module: str) -> torch.Tensor:
            action, changed = decisions[module]
            side = base if action == "base" else sides[changed[0]]
            if action == "resolve":
                merged, info = self._merged_delta(module, base, sides, changed)
                record["modules"][module] = {"action": action, **info}
            else:
                record["modules"][module] = {"action": action}
                assert side is not None
                merged = side.delta(self.store, module)
            return oriented(first.config.fan_in_fan_out, merged)

        deltas = {
            model.targets[m]: (lambda m=m: update(m))
            for m, (action, _) in decisions.items()
            if action != "deleted"
        }
        entries: dict[str, TensorEntry] = {}
        record["full"] = self._full_tensors(base, sides, entries)
        replacements = {base_tensor_name(n): e for n, e in entries.items()}
        output: dict[str, Manifest | bytes | None] = dict(
            model.baked(self.store, deltas, replacements)
        )
        output[config_path(folder)] = output[weights_path(folder)] = None
        return output


def merge_tensor(
    strategy: str,
    params: MergeParams,
    base: torch.Tensor,
    thetas: Sequence[torch.Tensor],
    name: str,
) -> tuple[torch.Tensor, TensorStats]:
    """One in-memory tensor through a strategy's chunked job (passes, then combine) on the
    CPU backend: the same jobs as the streaming executor, over a single whole-tensor chunk
    (a module's ΔW is one matrix; the executor's chunking buys nothing here)."""
    from mvc.formats.torch_io import dtype_name, tensor_bytes, to_torch

    ops = resolve_device("cpu")
    spec = TensorSpec(name, tuple(base.shape), dtype_name(base.dtype), len(thetas))

    def chunk() -> Chunk:
        def load(t: torch.Tensor) -> object:
            return ops.load(tensor_bytes(t), spec.dtype, spec.shape)

        return Chunk(spec, 0, load(base), tuple(load(t) for t in thetas), ops)

    job = get_strategy(strategy).tensor_job(params, spec)
    while (p := job.next_pass()) is not None:
        p.update(chunk())
    out = job.combine(chunk())
    merged = to_torch(bytearray(ops.to_bytes(out)), spec.dtype, spec.shape)
    return merged, job.stats()


def _three_way(
    ancestor: object, ids: Sequence[object], what: str, hint: str | None = None
) -> tuple[str, list[int]]:
    """(action, branch indices) for one item whose identity is ``ancestor`` in the merge base
    and ``ids[i]`` on branch i (None: absent): "base" when no branch changed it, "one-sided"
    or "deleted" when the branches that did agree, else "resolve"; a deletion against a
    modification is a conflict. One rule for adapter modules and for their full tensors."""
    changed = [i for i, v in enumerate(ids) if v != ancestor]
    if not changed:
        return "base", []
    if len({ids[i] for i in changed}) == 1:
        return ("deleted" if ids[changed[0]] is None else "one-sided"), changed[:1]
    if any(ids[i] is None for i in changed):
        raise ConflictError(f"{what}: deleted on one branch, modified on another", hint=hint)
    return "resolve", changed


def _entry(side: AdapterSide | None, name: str) -> TensorEntry | None:
    if side is None or name not in side.layout.full:
        return None
    return side.manifest.tensor(name)


def _check_compatible(sides: Sides, where: str) -> None:
    """Refuse adapters that cannot share a weight space: other bases, shapes, layouts."""
    first = sides[0]
    for side in sides[1:]:
        if side.config.fan_in_fan_out != first.config.fan_in_fan_out:
            raise MvcError(
                f"adapter {where}/: fan_in_fan_out differs between branches",
                hint="both adapters must be trained on the same base layers",
            )
        if (
            side.config.base_model
            and first.config.base_model
            and (side.config.base_model != first.config.base_model)
        ):
            raise MvcError(
                f"adapter {where}/: adapters of different bases "
                f"({first.config.base_model} vs {side.config.base_model})"
            )
        for module, shape in side.shapes.items():
            other = next((s.shapes[module] for s in sides if module in s.shapes), shape)
            if other != shape:
                raise MvcError(
                    f"adapter {where}/: {module} updates {list(other)} on one branch and "
                    f"{list(shape)} on another (different base models)"
                )


def _cat_coefficients(
    strategy: str, params: MergeParams, weights: tuple[float, ...]
) -> tuple[float, list[float]]:
    """(ancestor coefficient, branch coefficients) of a linear rule, so that the merged ΔW is
    exactly c_anc·ΔW_anc + Σ c_i·ΔW_i, a sum of the inputs' factor products."""
    if strategy == "task_arithmetic":
        # ΔW_anc + λ·Σ w_i·(ΔW_i − ΔW_anc) / (Σ w with normalize)
        den = sum(weights) if params.normalize and abs(sum(weights)) >= 1e-8 else 1.0
        branch = [params.lambda_ * w / den for w in weights]
        return 1.0 - sum(branch), branch
    if strategy == "linear":
        den = sum(weights) if params.normalize is None or params.normalize else 1.0
        return 0.0, [w / den for w in weights]
    raise MvcError(
        f"--adapter-combine cat needs a linear strategy, not {strategy}",
        hint="use --strategy task_arithmetic or linear, or --adapter-combine svd",
    )


def _json_bytes(doc: Mapping[str, Any]) -> bytes:
    import json

    return (json.dumps(dict(doc), indent=2, sort_keys=True) + "\n").encode()


def _manifest(entries: Mapping[str, TensorEntry], metadata: dict[str, str]) -> Manifest:
    specs = [(n, e.dtype, e.shape) for n, e in sorted(entries.items())]
    header = build_header(specs, metadata)
    ordered = tuple(entries[info.name] for info in plan_layout(specs))
    return Manifest(header_raw=header, tensors=ordered)


def merge_adapters(
    store: ObjectStore,
    base_models: Mapping[str, Manifest],
    folders: list[str],
    base_files: Mapping[str, bytes],
    branch_files: Sequence[Mapping[str, bytes]],
    recipe: Recipe,
    merged: Mapping[str, Manifest | bytes] | None = None,
) -> tuple[dict[str, Manifest | bytes], dict[str, Any]]:
    """The merged adapter files (and, with ``into="model"``, the model's shards, baked into
    ``merged``, the rest of the merge's result) and the merge record's ``adapters`` entry:
    the options and how each module was merged."""
    options = recipe.adapter or AdapterOptions()
    job = AdapterMerge(
        store,
        folders,
        base_files,
        branch_files,
        base_models,
        recipe.strategy,
        recipe.params,
        options,
        merged,
    )
    files = {path: content for path, content in job.run().items() if content is not None}
    return files, {"options": options.to_record(), "folders": job.records}
