"""The lineage DAG of a history with several merges, in text, JSON, DOT and Mermaid."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from model_factory import committed_base, fine_tuned, random_weights, write_model_folder

from mvc.cli.main import cli
from mvc.lineage.graph import lineage_graph
from mvc.lineage.unmerge import unmerge
from mvc.merge import MergeOptions, MergeParams, merge


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """base; a, b, c; m1 = ties(a, b) on main; m2 = consensus(m1, c); u = unmerge m2 drop c."""
    base = random_weights(0, rows=16, cols=8)
    repo = committed_base(tmp_path_factory.mktemp("lineage") / "work", base)
    ids = {"base": repo.head()}
    for seed, name in enumerate("abc", start=1):
        repo.switch(name, create=True, start="main")
        only = ("layer.0.weight", f"layer.{seed % 2}.bias" if seed != 2 else "layer.1.weight")
        write_model_folder(repo.root / "model", fine_tuned(base, seed=seed, scale=1e-2, only=only))
        ids[name] = repo.commit(f"train {name}", all=True)
    repo.switch("main")
    ids["m1"] = merge(
        repo,
        ["a", "b"],
        MergeOptions(params=MergeParams(density=0.3, preset="mergekit"), weights={"a": 0.7}),
    ).commit
    ids["m2"] = merge(repo, ["c"], MergeOptions(strategy="consensus", fast_forward=False)).commit
    ids["u"] = unmerge(repo, "HEAD", "c").commit
    return repo, ids


@pytest.fixture
def history(built, monkeypatch):
    monkeypatch.chdir(built[0].root)
    return built


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_graph_structure(history):
    repo, ids = history
    graph = lineage_graph(repo, "HEAD")
    nodes = {n.id: n for n in graph.nodes}
    assert set(nodes) == set(ids.values())
    assert nodes[ids["m1"]].kind == "merge" and nodes[ids["u"]].kind == "unmerge"
    assert nodes[ids["u"]].branches == ["main"] and nodes[ids["u"]].head
    recipe = nodes[ids["m1"]].recipe
    assert recipe["strategy"] == "ties" and recipe["preset"] == "mergekit"
    assert recipe["density"] == [0.3, 0.3] and recipe["weights"] == [0.7, 1.0]
    assert recipe["contributing"] == ["a", "b"]
    assert nodes[ids["m2"]].recipe["contributing"] == [ids["m1"][:12], "c"]
    assert nodes[ids["u"]].provenance["unmerge_of"] == ids["m2"]
    assert nodes[ids["u"]].provenance["dropped"]["name"] == "c"
    edges = {(e.child, e.parent): e for e in graph.edges}
    assert set(edges) == {
        (ids["a"], ids["base"]),
        (ids["b"], ids["base"]),
        (ids["c"], ids["base"]),
        (ids["m1"], ids["base"]),
        (ids["m1"], ids["a"]),
        (ids["m1"], ids["b"]),
        (ids["m2"], ids["m1"]),
        (ids["m2"], ids["c"]),
        (ids["u"], ids["m2"]),
    }
    assert edges[(ids["m1"], ids["base"])].contributing is False
    assert edges[(ids["m1"], ids["a"])].contributing is True
    assert edges[(ids["m1"], ids["b"])].label == "b"


def test_json_output(history):
    _, ids = history
    doc = json.loads(run("lineage", "HEAD", "--json"))
    assert doc["rev"] == ids["u"]
    edges = {(e["child"], e["parent"], e["contributing"]) for e in doc["edges"]}
    assert (ids["m1"], ids["base"], False) in edges and (ids["m2"], ids["c"], True) in edges
    by_id = {n["id"]: n for n in doc["nodes"]}
    assert by_id[ids["m2"]]["recipe"]["strategy"] == "consensus"
    assert by_id[ids["m1"]]["line"].startswith("ties (mergekit), density 0.3, weights a=0.7 b=1")


def test_dot_output(history):
    _, ids = history
    text = run("lineage", "HEAD", "--dot")
    assert text.startswith("digraph lineage {") and text.rstrip().endswith("}")
    nodes = set(re.findall(r"^  c([0-9a-f]{40}) \[label=", text, re.M))
    assert nodes == set(ids.values())
    edges = re.findall(r"^  c([0-9a-f]{40}) -> c([0-9a-f]{40})(?: \[(.*)\])?;$", text, re.M)
    found = {(a, b): attrs for a, b, attrs in edges}
    assert len(edges) == 9 and len(found) == 9
    assert 'label="a"' in found[(ids["m1"], ids["a"])]
    assert "style=dashed" in found[(ids["m1"], ids["base"])]
    assert found[(ids["u"], ids["m2"])] == ""
    label = re.search(rf'c{ids["m1"]} \[label="([^"]*)"', text).group(1)
    assert "ties (mergekit)" in label


def test_mermaid_output(history):
    _, ids = history
    text = run("lineage", "HEAD", "--mermaid")
    lines = text.splitlines()
    assert lines[0] == "flowchart BT"
    nodes = {m.group(1) for line in lines if (m := re.match(r'  c([0-9a-f]{40})\["', line))}
    assert nodes == set(ids.values())
    edges = [
        re.match(r"  c([0-9a-f]{40}) (-->|-\.->)(?:\|([^|]*)\|)? c([0-9a-f]{40})$", line)
        for line in lines
        if "->" in line
    ]
    assert all(edges) and len(edges) == 9
    found = {(m.group(1), m.group(4)): (m.group(2), m.group(3)) for m in edges}
    assert found[(ids["m1"], ids["base"])][0] == "-.->"
    assert found[(ids["m2"], ids["c"])] == ("-->", "c")


def test_text_output_and_log_recipes(history):
    _, ids = history
    text = run("lineage", "HEAD")
    lines = text.splitlines()
    starred = [line for line in lines if line.lstrip("| \\").startswith("*")]
    assert len(starred) == 7
    assert any(ids["m1"][:12] in line and "[ties (mergekit)" in line for line in lines)
    assert any(ids["u"][:12] in line and "unmerge of" in line for line in lines)
    log = run("log", "--oneline")
    assert f"{ids['m2'][:12]} Merge c (consensus)  (consensus" in log
    assert "dropping c" in log
