"""The lineage DAG of a commit: its ancestors, parent edges, branch names and recipes.

Edges of a merge carry the parent's name as it was merged and whether that parent entered
the arithmetic (a parent equal to the merge base does not). Renderings for JSON, Graphviz
DOT, Mermaid and text lanes (`mvc log --graph`) live here so the Python API and the CLI print the same graph; torch is
never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mvc.lineage.records import (
    find_merge_record,
    find_provenance,
    merge_recipe_text,
    parent_label,
    provenance_text,
    recipe,
)
from mvc.repo.records import is_locked

if TYPE_CHECKING:
    from mvc.repo import Repo


@dataclass
class LineageEdge:
    child: str
    parent: str
    index: int
    label: str | None = None
    contributing: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LineageNode:
    id: str
    parents: tuple[str, ...]
    message: str
    kind: str  # commit | merge | unmerge | extract | bake
    branches: list[str] = field(default_factory=list)
    head: bool = False
    locked: bool = False
    recipe: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    line: str | None = None

    @property
    def summary(self) -> str:
        return self.message.splitlines()[0] if self.message else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parents": list(self.parents),
            "message": self.summary,
            "kind": self.kind,
            "branches": self.branches,
            "head": self.head,
            "locked": self.locked,
            "recipe": self.recipe,
            "provenance": self.provenance,
            "line": self.line,
        }


@dataclass
class LineageGraph:
    rev: str
    nodes: list[LineageNode]  # newest first, topological
    edges: list[LineageEdge]

    def to_json(self) -> dict[str, Any]:
        return {
            "rev": self.rev,
            "nodes": [n.to_json() for n in self.nodes],
            "edges": [e.to_json() for e in self.edges],
        }


def lineage_graph(repo: Repo, rev: str = "HEAD", max_count: int | None = None) -> LineageGraph:
    """Every ancestor of `rev` (newest first) with its merge recipe or provenance."""
    sha = repo.resolve(rev)
    refs: dict[str, list[str]] = {}
    for branch in repo.branches():
        refs.setdefault(branch.commit, []).append(branch.name)
    head = repo.head()
    nodes, edges = [], []
    for info in repo.log(sha, max_count=max_count):
        record = find_merge_record(repo, info.id)
        provenance = find_provenance(repo, info.id)
        node = LineageNode(
            info.id,
            info.parents,
            info.message,
            "merge" if record else (provenance["kind"] if provenance else "commit"),
            branches=sorted(refs.get(info.id, [])),
            head=info.id == head,
            locked=is_locked(repo, info.id),
        )
        lines = []
        if record is not None:
            node.recipe = recipe(record)
            lines.append(merge_recipe_text(record))
        if provenance is not None:
            node.provenance = {k: v for k, v in provenance.items() if k != "record"}
            lines.append(provenance_text(provenance))
        if node.locked:
            lines.append("locked")
        node.line = "; ".join(lines) or None
        nodes.append(node)
        contributing = set(record.get("contributing", [])) if record else None
        for index, parent in enumerate(info.parents):
            edges.append(
                LineageEdge(
                    info.id,
                    parent,
                    index,
                    label=parent_label(record, index) if record else None,
                    contributing=None if contributing is None else index in contributing,
                )
            )
    return LineageGraph(sha, nodes, edges)


def _node_label(node: LineageNode) -> list[str]:
    lines = [f"{node.id[:12]} {node.summary}".rstrip()]
    if node.branches or node.head:
        lines.append("[" + ", ".join((["HEAD"] if node.head else []) + node.branches) + "]")
    if node.line:
        lines.append(node.line)
    return lines


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: LineageGraph) -> str:
    """Graphviz DOT: one node per commit (`c<id>`), edges from child to parent."""
    out = ["digraph lineage {", "  rankdir=BT;", '  node [shape=box, fontname="monospace"];']
    for node in graph.nodes:
        label = "\\n".join(
            line.replace("\\", "\\\\").replace('"', '\\"') for line in _node_label(node)
        )
        style = ', style="rounded,bold"' if node.kind != "commit" else ""
        locked = ', color="red"' if node.locked else ""
        out.append(f'  c{node.id} [label="{label}"{style}{locked}];')
    for edge in graph.edges:
        attrs = []
        if edge.label:
            attrs.append(f"label={_dot_quote(edge.label)}")
        if edge.contributing is False:
            attrs.append("style=dashed")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        out.append(f"  c{edge.child} -> c{edge.parent}{suffix};")
    out.append("}")
    return "\n".join(out) + "\n"


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )


def to_mermaid(graph: LineageGraph) -> str:
    """A Mermaid flowchart: nodes `c<id>`, solid edges for contributing parents, dotted else."""
    out = ["flowchart BT"]
    for node in graph.nodes:
        label = "<br/>".join(_mermaid_text(line) for line in _node_label(node))
        out.append(f'  c{node.id}["{label}"]')
    for edge in graph.edges:
        arrow = "-.->" if edge.contributing is False else "-->"
        label = f"|{_mermaid_text(edge.label)}|" if edge.label else ""
        out.append(f"  c{edge.child} {arrow}{label} c{edge.parent}")
    return "\n".join(out) + "\n"


def render_graph(commits: Sequence[Any], label: Callable[[Any], str]) -> Iterator[str]:
    """git-like lanes: `*` marks the commit, `|` a line of descent that continues.

    Commits must be in topological order, newest first (as `Repo.log` returns them).
    """
    lanes: list[str | None] = []
    for commit in commits:
        if commit.id in lanes:
            column = lanes.index(commit.id)
        else:
            lanes.append(commit.id)
            column = len(lanes) - 1
        cells = ["*" if i == column else ("|" if lane else " ") for i, lane in enumerate(lanes)]
        yield " ".join(cells).rstrip() + "  " + label(commit)
        parents = list(commit.parents)
        lanes[column] = parents[0] if parents else None
        opened = []
        for parent in parents[1:]:
            if parent not in lanes:
                lanes.append(parent)
                opened.append(len(lanes) - 1)
        if len(parents) > 1:
            cells = [
                "\\" if i in opened else ("|" if lane else " ") for i, lane in enumerate(lanes)
            ]
            yield " ".join(cells).rstrip()
        # Collapse lanes that now wait for the same commit, and drop finished lanes at the end.
        seen: set[str] = set()
        for i, lane in enumerate(lanes):
            if lane is not None and lane in seen:
                lanes[i] = None
            elif lane is not None:
                seen.add(lane)
        while lanes and lanes[-1] is None:
            lanes.pop()
