"""Strategies declare their parameters once; the CLI, records, export and unmerge derive from it."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from model_factory import committed_base, fine_tuned, random_weights, write_model_folder

from mvc.cli.main import cli
from mvc.errors import MvcError
from mvc.merge.declare import COMMON, PRESETS, Param
from mvc.merge.params import MergeParams, declaration, drop_branch
from mvc.merge.strategies import PARAMETERS, Strategy, TensorJob, get_strategy, register, strategies
from mvc.repo import Repo

# Options of `mvc merge`/`mvc pull` that are not parameters: a declaration must not take them.
RESERVED = {
    "message", "no-commit", "no-ff", "quiet", "json", "strategy", "config", "all-tensors",
    "device", "no-masks", "base", "allow-locked", "list-strategies", "ff-only", "endpoint",
    "help",
}  # fmt: skip


@pytest.mark.parametrize("strategy", strategies(), ids=lambda s: s.name)
def test_every_registered_strategy_declares_everything(strategy):
    assert strategy.summary.strip() and strategy.formula.strip()
    assert set(strategy.presets) <= set(PRESETS) and None in strategy.presets
    assert strategy.min_branches >= 1
    assert strategy.max_branches is None or strategy.max_branches >= strategy.min_branches
    assert strategy.mergekit_base in ("base", "first", "none")
    assert strategy.declared()[: len(COMMON)] == COMMON
    for param in strategy.declared():
        assert PARAMETERS[param.name] is param or PARAMETERS[param.name] == param
        assert param.help.strip(), param.name
        assert param.kind in (float, int, bool, str)
        assert (param.kind is str) == bool(param.choices), param.name
        assert param.option.removeprefix("--") not in RESERVED, param.name
        if param.default is None:
            assert param.optional, param.name
        else:
            assert param.check(param.default) == param.default, param.name
        if param.low is not None and param.high is not None:
            assert param.low <= param.high


def test_registry_refuses_a_conflicting_declaration_and_stays_unchanged():
    class Clash(Strategy):
        name = "clash"
        summary = "x"
        formula = "x"
        parameters = (Param("density", float, 0.5, "another density", mergekit=None),)

        def _job(self, params, spec, model, masks) -> TensorJob:
            raise NotImplementedError

    before = dict(PARAMETERS)
    with pytest.raises(ValueError, match="declares parameter density differently"):
        register(Clash())
    assert PARAMETERS == before
    with pytest.raises(MvcError, match="unknown strategy"):
        get_strategy("clash")


def test_values_are_checked_against_their_declarations():
    for param in PARAMETERS.values():
        if param.kind is float and param.high is not None:
            with pytest.raises(MvcError, match=f"{param.label} must be"):
                MergeParams(**{param.name: param.high + 1})
        if param.kind is float:
            with pytest.raises(MvcError, match=f"{param.label} must be a finite number"):
                MergeParams(**{param.name: math.inf})
    with pytest.raises(MvcError, match="unknown merge parameter"):
        MergeParams(densty=0.5)
    with pytest.raises(MvcError, match="unknown merge parameter 'lamda'"):
        MergeParams().with_overrides({"lamda": 2.0})
    assert MergeParams().with_overrides({"lambda": 2.0, "weight": [1, 2]}) == MergeParams(
        lambda_=2.0, weights=(1, 2)
    )
    assert declaration("tall_lambda").name == "tall_lambdas"


def test_drop_branch_follows_the_per_branch_declarations():
    values = {"weights": [1.0, 2.0, 3.0], "weight": [4.0, 5.0, 6.0], "lambda_": 0.5, "t": [1]}
    dropped = drop_branch(values, 1, 3)
    assert dropped == {"weights": [1.0, 3.0], "weight": [4.0, 6.0], "lambda_": 0.5, "t": [1]}
    assert drop_branch({"density": [0.1, 0.2]}, 0, 3) == {"density": [0.1, 0.2]}


def test_for_subset_restricts_every_per_branch_parameter():
    params = MergeParams(weights=(1.0, 2.0, 3.0), density=(0.1, 0.2, 0.3), tall_lambdas=0.5)
    subset = params.for_subset((0, 2), 3)
    assert subset.weights == (1.0, 3.0) and subset.density == (0.1, 0.3)
    assert subset.tall_lambdas == (0.5, 0.5)


# ---------------------------------------------------------------- the CLI derived from them
@pytest.fixture
def three(tmp_path, monkeypatch):
    """main = base; a, b and c each fine-tune the same tensors."""
    base = random_weights(0, rows=8, cols=4)
    repo = committed_base(tmp_path / "work", base)
    for seed, name in enumerate("abc", start=1):
        repo.switch(name, create=True, start="main")
        write_model_folder(repo.root / "model", fine_tuned(base, seed=seed))
        repo.commit(name, all=True)
    repo.switch("main")
    monkeypatch.chdir(repo.root)
    return repo


def _state(repo: Repo):
    return repo.head(), set(repo.store.ids()), sorted(p.name for p in repo.scratch_dir().iterdir())


def test_help_and_list_show_every_declaration():
    runner = CliRunner()
    text = runner.invoke(cli, ["merge", "--help"], terminal_width=200).output
    for param in PARAMETERS.values():
        assert param.option in text, param.name
    for strategy in strategies():
        assert f"{strategy.name}: {strategy.summary}" in text
    listing = runner.invoke(cli, ["merge", "--list-strategies"])
    assert listing.exit_code == 0, listing.output
    for strategy in strategies():
        assert f"{strategy.name}: {strategy.summary}" in listing.output
        assert strategy.formula in listing.output
        for param in strategy.parameters:
            assert param.option in listing.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--density", "1.5"], "density must be in (0, 1], got 1.5"),
        (["--gamma", "1"], "gamma must be in [0, 1), got 1.0"),
        (["--t", "-0.5"], "t must be in [0, 1], got -0.5"),
        (["--seed", "-3", "-s", "dare_ties"], "seed must be an integer in [0, 2**64), got -3"),
        (["--tall-lambda", "-1"], "tall lambda must be >= 0, got -1.0"),
        (["-s", "slerp"], "strategy slerp needs exactly 2 branches, got 3"),
        (["-s", "theirs"], "strategy theirs needs exactly 2 branches, got 3"),
        (["--density", "0.5", "--density", "0.5"], "density has 2 values for 3 branches"),
        (["-s", "slerp", "--preset", "peft"], "strategy slerp has no preset 'peft'"),
    ],
)
def test_bad_parameters_are_one_line_errors_before_anything_is_written(three, args, message):
    before = _state(three)
    result = CliRunner().invoke(cli, ["merge", "a", "b", "c", "-q", *args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"mvc: error: {message}"
    assert len([line for line in lines if not line.startswith("hint:")]) == 1
    assert _state(three) == before


def test_too_few_branches_for_a_method_is_refused_before_anything_is_written(three):
    before = _state(three)
    result = CliRunner().invoke(cli, ["merge", "a", "--no-ff", "-q", "-s", "model_stock"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        "mvc: error: strategy model_stock needs at least 2 branches, got 1"
    )
    result = CliRunner().invoke(cli, ["merge", "a", "b", "c", "-q", "-s", "nuslerp"])
    assert result.output.splitlines()[0] == (
        "mvc: error: strategy nuslerp needs exactly 2 branches, got 3"
    )
    assert _state(three) == before


def test_a_rule_out_of_range_is_refused_before_anything_is_written(three, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {match: 'layer.*', strategy: ties, density: 2.0}\n")
    before = _state(three)
    result = CliRunner().invoke(cli, ["merge", "a", "b", "-q", "--config", str(rules)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "mvc: error: density must be in (0, 1], got 2.0"
    assert _state(three) == before
    rules.write_text("- {match: 'layer.*', strategy: slerp}\n")
    result = CliRunner().invoke(cli, ["merge", "a", "b", "c", "-q", "--config", str(rules)])
    assert result.exit_code == 1
    assert "strategy slerp needs exactly 2 branches, got 3" in result.output
    assert _state(three) == before


def test_parameters_reach_the_record_and_its_recipe_line(three):
    result = CliRunner().invoke(
        cli, ["merge", "a", "b", "-q", "-s", "breadcrumbs", "--density", "0.5", "--gamma", "0.1"]
    )
    assert result.exit_code == 0, result.output
    log = CliRunner().invoke(cli, ["log", "-n", "1"]).output
    assert "breadcrumbs, density 0.5, gamma 0.1, of a, b" in log
    from mvc.lineage.records import merge_record

    _, record = merge_record(three, "HEAD")
    assert record["params"]["gamma"] == 0.1 and record["params"]["density"] == 0.5
    assert MergeParams.from_record(record["params"]).gamma == 0.1


def test_the_parameter_table_in_the_docs_names_every_declaration():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "merge-semantics.md").read_text()
    for param in PARAMETERS.values():
        assert f"| `{param.name}` | `{param.option}` |" in doc, param.name


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5) | st.booleans())
def test_a_range_check_accepts_exactly_its_declared_range(value):
    from mvc.merge.strategies.breadcrumbs import GAMMA

    for param, inside in (
        (PARAMETERS["density"], lambda v: 0 < v <= 1),
        (GAMMA, lambda v: 0 <= v < 1),
    ):
        number = not isinstance(value, bool) and math.isfinite(value)
        if number and inside(value):
            assert param.check(value) == value
        else:
            with pytest.raises(MvcError, match=f"^{param.label} must be"):
                param.check(value)
