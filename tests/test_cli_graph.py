"""`mvc log --graph` lanes for linear and merged histories."""

from __future__ import annotations

from dataclasses import dataclass

from mvc.lineage.graph import render_graph


@dataclass
class C:
    id: str
    parents: tuple[str, ...]


def draw(commits):
    return list(render_graph(commits, lambda c: c.id))


def test_linear_history_is_one_lane():
    assert draw([C("b", ("a",)), C("a", ())]) == ["*  b", "*  a"]


def test_merge_opens_and_closes_a_lane():
    commits = [C("m", ("x", "y")), C("y", ("base",)), C("x", ("base",)), C("base", ())]
    assert draw(commits) == ["*  m", "| \\", "| *  y", "* |  x", "*  base"]
