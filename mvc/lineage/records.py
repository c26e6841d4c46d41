"""Reading the records a commit carries, and turning a merge record into a one-line recipe.

Three kinds of record can sit under `.mvc/` in a commit's tree: the merge record
(`.mvc/merge.json`, written by `mvc merge`), the provenance record (`.mvc/provenance.json`,
written by `mvc unmerge` and `mvc extract --commit`) and the lock record (`.mvc/lock.json`,
written by `mvc lock`). A later ordinary commit inherits the files of its parent, so a merge
or provenance record only describes the commit whose parents it names.

Everything here reads single blobs by path and never imports torch: `mvc log` calls
:func:`recipe_line` for every commit it prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from mvc.errors import MvcError, NotFoundError
from mvc.merge.declare import TALL_LAMBDA, Param
from mvc.merge.record import MERGE_RECORD
from mvc.merge.record import commit_parents as recorded_commit_parents
from mvc.merge.strategies import get_strategy
from mvc.repo.records import RecordType, is_locked

if TYPE_CHECKING:
    from mvc.repo import Repo

PROVENANCE_RECORD = RecordType("provenance", 1, ".mvc/provenance.json", "provenance record")
PROVENANCE_PATH = PROVENANCE_RECORD.path
V = TypeVar("V")


def with_provenance(
    files: Mapping[str, V], kind: str, of: str, **fields: Any
) -> dict[str, V | bytes]:
    """``files`` and the provenance record of a commit that ``kind`` (unmerge, extract, bake)
    makes from commit ``of``, its only parent: one layout for every kind, ``<kind>_of``
    naming that commit."""
    record = {**PROVENANCE_RECORD.header(), "kind": kind, f"{kind}_of": of, **fields}
    return {**files, PROVENANCE_PATH: PROVENANCE_RECORD.encode({**record, "commit_parents": [of]})}


def commit_parents(repo: Repo, sha: str) -> list[str]:
    return [p.decode() for p in repo.git[sha.encode()].parents]


def find_merge_record(repo: Repo, sha: str) -> dict[str, Any] | None:
    """The merge record describing commit `sha`, or None when `sha` is not an mvc merge."""
    record = MERGE_RECORD.read(repo, sha)
    if record is None or recorded_commit_parents(record) != commit_parents(repo, sha):
        return None  # none, or inherited from a parent by a later ordinary commit
    return record


def merge_record(repo: Repo, rev: str) -> tuple[str, dict[str, Any]]:
    """(commit id, merge record) of `rev`; a commit without one is an error naming it."""
    sha = repo.resolve(rev)
    record = find_merge_record(repo, sha)
    if record is None:
        raise MvcError(
            f"{rev} ({sha[:12]}) is not an mvc merge commit (it carries no merge record)",
            hint="name a commit made by `mvc merge`",
        )
    return sha, record


def merge_parent(repo: Repo, rev: str, parent: str) -> tuple[str, dict[str, Any], int]:
    """(commit id, merge record, parent index) of merge ``rev`` and the parent ``parent``
    names (a name, a commit or an index): what unmerge and extract start from."""
    sha, record = merge_record(repo, rev)
    return sha, record, parent_index(record, parent, repo)


def find_provenance(repo: Repo, sha: str) -> dict[str, Any] | None:
    """The unmerge/extract provenance record written by commit `sha`, or None."""
    doc = PROVENANCE_RECORD.read(repo, sha)
    if doc is None or doc.get("commit_parents") != commit_parents(repo, sha):
        return None
    return doc


def parent_index(record: Mapping[str, Any], spec: str, repo: Repo | None = None) -> int:
    """The index in `record["parents"]` that `spec` names: a name, a commit (prefix), an index."""
    parents: list[str] = record["parents"]
    names: list[str] = record.get("parent_names") or []
    if spec in names:
        return names.index(spec)
    if spec.isdigit() and int(spec) < len(parents) and len(spec) < 4:
        return int(spec)
    lowered = spec.lower()
    if len(lowered) >= 4:
        hits = [i for i, p in enumerate(parents) if p.startswith(lowered)]
        if len(hits) == 1:
            return hits[0]
    if repo is not None:
        try:
            sha = repo.resolve(spec)
        except MvcError:
            sha = None
        if sha in parents:
            return parents.index(sha)
    shown = ", ".join(
        f"{i}={names[i] if i < len(names) else p[:12]}" for i, p in enumerate(parents)
    )
    raise NotFoundError(f"'{spec}' is not a parent of this merge", hint=f"its parents are {shown}")


def parent_entry(record: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Parent ``index`` of a merge as provenance records name it: index, label and commit."""
    return {"index": index, "name": parent_label(record, index), "commit": record["parents"][index]}


def parent_label(record: Mapping[str, Any], index: int) -> str:
    """A parent's branch name as merged (or its short id when unnamed)."""
    names = record.get("parent_names") or []
    if index < len(names) and names[index] and names[index] != "HEAD":
        return names[index]
    return record["parents"][index][:12]


def per_branch(value: Any, n: int) -> list[float] | None:
    """A per-branch parameter as a list of `n` values (None when it does not fit)."""
    if isinstance(value, list):
        return [float(v) for v in value] if len(value) == n else None
    return [float(value)] * n


def _declared(strategy: str) -> tuple[Param, ...]:
    """The parameters `strategy` declares besides the common ones; none for a strategy this
    mvc does not know (a record written by a newer one still shows its recipe line)."""
    try:
        return get_strategy(strategy).parameters
    except MvcError:
        return ()


def recipe(record: Mapping[str, Any]) -> dict[str, Any]:
    """The merge's recipe: what a reader needs to redo it, without per-tensor detail.

    Besides who merged what, it holds the value of every parameter the strategy declares
    (and the TALL mask λ), keyed as the record keys them; per-branch values as lists.
    """
    params: dict[str, Any] = dict(record["params"])
    contributing: list[int] = record.get("contributing", [])
    n = len(contributing)
    out: dict[str, Any] = {
        "strategy": record["strategy"],
        "preset": record.get("preset"),
        "contributing": [parent_label(record, i) for i in contributing],
        "contributing_indices": list(contributing),
        "all_tensors": bool(record.get("all_tensors")),
        "rules": len(record.get("rules") or []),
    }
    for param in dict.fromkeys((TALL_LAMBDA, *_declared(record["strategy"]))):
        value = params.get(param.name, param.default)
        if param.per_branch:
            values = per_branch(value, n)
            value = values if values is not None else value
        out[param.name] = value
    return out


def _number(value: float) -> str:
    return f"{value:g}"


def _param_text(param: Param, value: Any, labels: Sequence[str]) -> str | None:
    """How the recipe line shows a parameter; None for its default (saying it would only
    lengthen the line)."""
    if isinstance(value, list):
        if len(set(value)) > 1:
            pairs = " ".join(f"{n}={_number(v)}" for n, v in zip(labels, value, strict=False))
            return f"{param.title} {pairs}"
        value = value[0]
    if value is None or value == param.default:
        return None
    return f"{param.title} {_number(value) if isinstance(value, float) else value}"


def merge_recipe_text(record: Mapping[str, Any]) -> str:
    """One line: strategy, preset, the parameters that differ from their defaults, and the
    contributing parents."""
    info = recipe(record)
    head = info["strategy"] + (f" ({info['preset']})" if info["preset"] else "")
    parts = [head]
    for param in _declared(info["strategy"]):
        text = _param_text(param, info.get(param.name), info["contributing"])
        if text:
            parts.append(text)
    if info["all_tensors"]:
        parts.append("all tensors")
    if info["rules"]:
        parts.append(f"{info['rules']} rule(s)")
    parts.append("of " + ", ".join(info["contributing"]))
    operation = record.get("operation")  # a revert or cherry-pick (mvc.merge.replay)
    prefix = f"{operation['kind']} of {operation['commit'][:12]}: " if operation else ""
    return prefix + ", ".join(parts)


def provenance_text(doc: Mapping[str, Any]) -> str:
    if doc.get("kind") == "unmerge":
        return f"unmerge of {doc['unmerge_of'][:12]} dropping {doc['dropped']['name']}"
    if doc.get("kind") == "bake":
        return f"bake of {doc['adapter'] or '.'}/ into {doc['model']} from {doc['bake_of'][:12]}"
    return f"extract of {doc['parent']['name']} from {doc['extract_of'][:12]}"


def recipe_line(repo: Repo, commit_id: str) -> str | None:
    """The one-line provenance of a commit for `mvc log`/`show`, or None for plain commits."""
    parts = []
    merge = find_merge_record(repo, commit_id)
    if merge is not None:
        parts.append(merge_recipe_text(merge))
    provenance = find_provenance(repo, commit_id)
    if provenance is not None:
        parts.append(provenance_text(provenance))
    if is_locked(repo, commit_id):
        parts.append("locked")
    return "; ".join(parts) or None
