"""A compact text rendering of the commit DAG for `mvc log --graph`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any


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
