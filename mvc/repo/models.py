"""Models: a folder's safetensors files seen as one set of tensors named by (folder, name).

A Hugging Face folder splits one model over shard files as ``save_pretrained`` sees fit
(``max_shard_size``, the transformers version, the dtype); which file holds a tensor says
nothing about the model. So a *model folder* is a folder that holds
``model.safetensors.index.json`` or ``config.json`` (in any of the revisions at hand), and
every ``*.safetensors`` file directly in it is a shard of that one model. A tensor's
identity is then (folder, tensor name). In any other folder each safetensors file stands
alone and its tensors are named by (file, tensor name), as before.

A model must be unambiguous, so a view is refused, with one line naming the problem, when
two shards hold the same tensor name, or when the index names a shard that is not there, a
path outside the folder, a tensor its shard does not hold, or leaves a shard's tensor out.

A :class:`Layout` is which shard file holds which tensor; :func:`realign` rewrites a
revision's files into another layout without touching a tensor (a manifest lists object
ids, so moving a tensor between shards moves only its entry).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mvc.errors import FormatError
from mvc.formats.hf import INDEX_NAME, index_bytes, parse_index
from mvc.formats.jsonutil import short
from mvc.formats.safetensors import build_header, plan_layout
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.worktree import is_model_path

CONFIG_NAME = "config.json"
SINGLE_FILE = "model.safetensors"


def folder_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def index_path(folder: str) -> str:
    return _join(folder, INDEX_NAME)


def _label(folder: str) -> str:
    return folder or "."


def model_folders(trees: Iterable[Iterable[str]]) -> set[str]:
    """Folders that are one model in at least one of the given trees (lists of paths)."""
    marked: set[str] = set()
    for paths in trees:
        for path in paths:
            name = path.rsplit("/", 1)[-1]
            if name in (INDEX_NAME, CONFIG_NAME):
                marked.add(folder_of(path))
    return marked


@dataclass(frozen=True)
class ModelView:
    """One revision's model folder: its shards, its index, and where each tensor is."""

    folder: str
    shards: dict[str, Manifest]  # shard path -> manifest, in path order
    index_raw: bytes | None
    where: dict[str, str]  # tensor name -> shard path

    def entries(self) -> dict[str, TensorEntry]:
        """Every tensor of the model by name, shard by shard in path order."""
        return {e.name: e for m in self.shards.values() for e in m.tensors}

    def entry(self, name: str) -> TensorEntry | None:
        path = self.where.get(name)
        return None if path is None else self.shards[path].tensor(name)

    def layout(self) -> Layout:
        return Layout(
            self.folder,
            tuple((p, tuple(e.name for e in m.tensors)) for p, m in self.shards.items()),
            self.index_raw is not None,
        )


def model_view(
    files: Mapping[str, bytes],
    folder: str,
    manifests: Mapping[str, Manifest] | None = None,
) -> ModelView | None:
    """The model in ``folder`` of one revision (path -> blob), or None when it has none.

    ``manifests`` are already parsed model files of the revision, when the caller has them.
    """
    shards: dict[str, Manifest] = {}
    for path in sorted(files):
        if folder_of(path) == folder and is_model_path(path):
            known = manifests.get(path) if manifests is not None else None
            shards[path] = known if known is not None else Manifest.from_bytes(files[path], path)
    index_raw = files.get(index_path(folder))
    if not shards and index_raw is None:
        return None
    where = _locate(folder, {p: (e.name for e in m.tensors) for p, m in shards.items()})
    if index_raw is not None:
        _check_index(folder, index_raw, shards, where)
    return ModelView(folder, shards, index_raw, where)


def _locate(folder: str, names: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Tensor name -> the shard holding it; a name in two shards is refused."""
    where: dict[str, str] = {}
    for path, shard_names in names.items():
        for name in shard_names:
            if name in where:
                raise FormatError(
                    f"model {_label(folder)}: tensor {short(name)} is in both "
                    f"{where[name]} and {path}",
                    hint="a model folder's shards must hold each tensor once; move a file "
                    "that is another model into a folder of its own",
                )
            where[name] = path
    return where


def _check_index(
    folder: str, raw: bytes, shards: Collection[str], where: Mapping[str, str]
) -> None:
    """The index must describe the folder's shards exactly."""
    where_index = index_path(folder)
    weight_map = parse_index(raw, where_index)["weight_map"]
    for name, shard in weight_map.items():
        if "/" in shard:
            raise FormatError(
                f"{where_index}: maps {short(name)} to {short(shard)}, outside the model folder"
            )
        path = _join(folder, shard)
        if path not in shards:
            raise FormatError(f"{where_index}: names shard {short(shard)}, which is not there")
        if where.get(name) != path:
            raise FormatError(
                f"{where_index}: maps {short(name)} to {short(shard)}, which does not hold it"
            )
    for name, path in where.items():
        if name not in weight_map:
            raise FormatError(f"{where_index}: does not list tensor {short(name)} of {path}")


def check_folders_on_disk(root: Path, rels: Iterable[str]) -> None:
    """Refuse to stage files of a model folder that is not one unambiguous model.

    For every folder of ``rels`` (repository paths) that is a model folder on disk, reads
    its shards' headers (not their data) and its index, and applies the same checks as
    :func:`model_view`, so a hostile index or two shards holding one tensor never enter a
    commit.
    """
    from mvc.formats.safetensors import read_header

    for folder in sorted({folder_of(r) for r in rels}):
        base = root / folder if folder else root
        names = {n for n in (INDEX_NAME, CONFIG_NAME) if (base / n).is_file()}
        if not names:
            continue
        shard_paths = sorted(
            _join(folder, p.name) for p in base.iterdir() if p.is_file() and is_model_path(p.name)
        )
        headers = {p: read_header(root / p) for p in shard_paths}
        where = _locate(folder, {p: (t.name for t in h.tensors) for p, h in headers.items()})
        if INDEX_NAME in names:
            _check_index(folder, (base / INDEX_NAME).read_bytes(), shard_paths, where)


def model_views(
    files: Mapping[str, bytes],
    folders: Iterable[str],
    manifests: Mapping[str, Manifest] | None = None,
) -> dict[str, ModelView]:
    views = {}
    for folder in sorted(folders):
        view = model_view(files, folder, manifests)
        if view is not None:
            views[folder] = view
    return views


def model_of(files: Iterable[str], path: str) -> str | None:
    """The model folder ``path`` (a file or a folder) belongs to in a tree, if any."""
    paths = list(files)
    folders = model_folders([paths])
    if path in folders:
        return path
    folder = folder_of(path)
    return folder if folder in folders and is_model_path(path) else None


@dataclass(frozen=True)
class Layout:
    """Which shard file of ``folder`` holds which tensors, and whether an index ties them."""

    folder: str
    shards: tuple[tuple[str, tuple[str, ...]], ...]
    index: bool

    def placement(self) -> dict[str, str]:
        return {name: path for path, names in self.shards for name in names}

    def extended(self, names: Iterable[str]) -> Layout:
        """This layout with tensors it lacks put in its last shard (or a single file)."""
        placed = self.placement()
        extra = tuple(n for n in dict.fromkeys(names) if n not in placed)
        if not extra:
            return self
        if not self.shards:
            return Layout(self.folder, ((_join(self.folder, SINGLE_FILE), extra),), False)
        *head, (path, last) = self.shards
        return Layout(self.folder, (*head, (path, last + extra)), self.index)


def sharded_layout(
    folder: str, sizes: Sequence[tuple[str, int]], max_shard_size: int
) -> Layout:
    """The layout ``save_pretrained(max_shard_size=...)`` gives tensors of these byte sizes,
    in this order: a shard is closed before a tensor that would take it over the limit (a
    tensor larger than the limit gets a shard of its own); one shard is a plain
    ``model.safetensors`` without an index."""
    groups: list[list[str]] = []
    current = 0
    for name, size in sizes:
        if not groups or (current + size > max_shard_size and groups[-1]):
            groups.append([])
            current = 0
        groups[-1].append(name)
        current += size
    if len(groups) <= 1:
        return Layout(folder, ((_join(folder, SINGLE_FILE), tuple(groups[0] if groups else ())),), False)
    n = len(groups)
    return Layout(
        folder,
        tuple(
            (_join(folder, f"model-{i + 1:05d}-of-{n:05d}.safetensors"), tuple(names))
            for i, names in enumerate(groups)
        ),
        True,
    )


def shard_manifest(
    entries: Sequence[TensorEntry],
    template: Manifest | None,
    metadata: Mapping[str, str] | None = None,
) -> Manifest:
    """A shard holding ``entries``: the template's header when it describes exactly these
    tensors (so a file whose tensors did not move keeps its bytes), otherwise the header the
    safetensors library would write, with the template's metadata."""
    by_name = {e.name: e for e in entries}
    if template is not None:
        ours = template.by_name()
        if set(ours) == set(by_name) and all(
            (ours[n].dtype, ours[n].shape) == (e.dtype, e.shape) for n, e in by_name.items()
        ):
            return Manifest(template.header_raw, tuple(by_name[t.name] for t in template.tensors))
    specs = [(e.name, e.dtype, e.shape) for e in entries]
    if template is not None:
        metadata = template.header.metadata
    header_raw = build_header(specs, metadata)
    return Manifest(header_raw, tuple(by_name[info.name] for info in plan_layout(specs)))


def realign(
    files: Mapping[str, bytes],
    view: ModelView,
    layout: Layout,
    templates: Mapping[str, Manifest],
    metadata: Mapping[str, str] | None = None,
) -> dict[str, bytes]:
    """``files`` with ``view``'s shards (and index) replaced by ``layout``'s.

    Tensors keep their entries; a tensor the layout does not place goes to its last shard.
    ``templates`` are the layout's own shard manifests (for their headers; ``metadata`` for
    shards without one). The index is
    left out: :func:`layout_index` writes the one that fits the final shards.
    """
    layout = layout.extended(view.where)
    out = {p: b for p, b in files.items() if p not in view.shards and p != index_path(view.folder)}
    entries = view.entries()
    for path, names in layout.shards:
        present = [entries[n] for n in names if n in entries]
        if present:
            out[path] = shard_manifest(present, templates.get(path), metadata).to_bytes()
    return out


def layout_index(
    folder: str, shards: Mapping[str, Manifest], source_raw: bytes | None
) -> bytes:
    """The index of ``folder``'s final shards: the source's own bytes when it already maps
    every tensor to its shard, else a fresh one (``total_size`` recomputed)."""
    weight_map = {
        e.name: path.rsplit("/", 1)[-1] for path, m in sorted(shards.items()) for e in m.tensors
    }
    metadata: dict = {}
    if source_raw is not None:
        source = parse_index(source_raw, _join(folder, INDEX_NAME))
        if source["weight_map"] == weight_map:
            return source_raw
        metadata = dict(source.get("metadata", {}))
    metadata["total_size"] = sum(m.data_size for m in shards.values())
    return index_bytes(weight_map, metadata)


def tensor_sizes(views: Iterable[ModelView]) -> list[tuple[str, int]]:
    """(name, bytes) of every tensor of the views, first view first, each name once."""
    sizes: dict[str, int] = {}
    for view in views:
        for name, entry in view.entries().items():
            sizes.setdefault(name, entry.nbytes)
    return list(sizes.items())

