"""The repository commands as a user runs them: output, --json, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest
from model_factory import fine_tuned, random_weights, snapshot, write_model_folder


@pytest.fixture
def work(tmp_path, run_mvc):
    work = tmp_path / "work"
    work.mkdir()
    run_mvc(work, "init")
    write_model_folder(work / "model", random_weights(0))
    return work


def test_user_day_commit_branch_switch(work, run_mvc):
    run_mvc(work, "add", "model/")
    out = run_mvc(work, "commit", "-m", "base").stdout
    assert out.startswith("[main ") and "base" in out
    base = snapshot(work)
    run_mvc(work, "switch", "-c", "math")
    write_model_folder(work / "model", fine_tuned(random_weights(0)))
    st = json.loads(run_mvc(work, "status", "--json").stdout)
    assert st["unstaged"] == {"model/model.safetensors": "modified"}
    run_mvc(work, "commit", "-am", "math SFT")
    math_files = snapshot(work)
    run_mvc(work, "switch", "main")
    assert snapshot(work) == base
    run_mvc(work, "checkout", "math")
    assert snapshot(work) == math_files

    log = json.loads(run_mvc(work, "log", "--json").stdout)
    assert [c["message"] for c in log] == ["math SFT", "base"]
    assert set(log[0]) >= {"id", "parents", "message", "date"}
    assert log[0]["parents"] == [log[1]["id"]]
    assert "math SFT" in run_mvc(work, "log", "--oneline").stdout
    assert "*" in run_mvc(work, "log", "--graph").stdout

    branches = json.loads(run_mvc(work, "branch", "--json").stdout)
    assert {b["name"] for b in branches} == {"main", "math"}
    shown = json.loads(run_mvc(work, "show", "--json").stdout)
    assert shown["changes"] == {"model/model.safetensors": "modified"}
    assert "fsck: everything verified" in run_mvc(work, "fsck").stdout


def test_diff_reports_per_tensor_statistics(work, run_mvc):
    run_mvc(work, "add", "model")
    run_mvc(work, "commit", "-m", "base")
    run_mvc(work, "switch", "-c", "a")
    write_model_folder(
        work / "model", fine_tuned(random_weights(0), seed=1, only=("layer.0.weight",))
    )
    run_mvc(work, "commit", "-am", "a")
    run_mvc(work, "switch", "-c", "b", "main")
    write_model_folder(
        work / "model", fine_tuned(random_weights(0), seed=2, only=("layer.0.weight",))
    )
    run_mvc(work, "commit", "-am", "b")
    report = json.loads(run_mvc(work, "diff", "a", "b", "--json").stdout)
    rows = {t["name"]: t for t in report["tensors"]}
    changed = rows["layer.0.weight"]
    assert changed["status"] == "changed"
    assert changed["changed_fraction"] > 0.99
    assert 0 < changed["relative_l2"] < 0.01
    assert changed["cosine"] is not None and abs(changed["cosine"]) < 0.3
    assert 0.3 < changed["sign_conflicts"] < 0.7
    assert rows["layer.1.weight"]["status"] == "unchanged"
    text = run_mvc(work, "diff", "a", "b").stdout
    assert "layer.0.weight" in text and "layer.1.weight" not in text


def test_errors_are_one_line_with_exit_1(work, run_mvc):
    proc = run_mvc(work, "switch", "nope", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("mvc: error: no branch named 'nope'")
    assert "Traceback" not in proc.stderr

    (work / "model" / "bad.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    proc = run_mvc(work, "add", "model", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("mvc: error: model/bad.safetensors")
    assert "Traceback" not in proc.stderr


def test_failed_switch_create_leaves_no_branch(work, run_mvc):
    run_mvc(work, "add", "model")
    run_mvc(work, "commit", "-m", "base")
    run_mvc(work, "switch", "-c", "a")
    write_model_folder(work / "model", fine_tuned(random_weights(0)))
    run_mvc(work, "commit", "-am", "a")
    run_mvc(work, "switch", "main")
    write_model_folder(work / "model", fine_tuned(random_weights(0), seed=5))  # dirty
    before = (snapshot(work), (work / ".git" / "index").read_bytes())
    proc = run_mvc(work, "switch", "-c", "b", "a", check=False)
    assert proc.returncode == 1 and "uncommitted changes" in proc.stderr
    branches = json.loads(run_mvc(work, "branch", "--json").stdout)
    assert {b["name"] for b in branches} == {"main", "a"}
    assert [b["name"] for b in branches if b["current"]] == ["main"]
    assert (snapshot(work), (work / ".git" / "index").read_bytes()) == before


def test_usage_error_exits_2(work, run_mvc):
    assert run_mvc(work, "commit", check=False).returncode == 2


def test_outside_repository(tmp_path, run_mvc):
    proc = run_mvc(tmp_path, "status", check=False)
    assert proc.returncode == 1 and "not an mvc repository" in proc.stderr


def test_fast_commands_do_not_import_torch(work, assert_no_torch):
    code = (
        "from mvc.cli.main import main\n"
        "try:\n"
        "    main(['add', 'model'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "try:\n"
        "    main(['commit', '-m', 'x'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "try:\n"
        "    main(['status'])\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    assert_no_torch(code, work)


def test_command_table_names_every_command_of_its_module():
    """The CLI imports a command's module only when it runs: its table must be complete."""
    import importlib

    from mvc.cli.main import COMMANDS

    registered: dict[str, str] = {}
    for module in set(COMMANDS.values()):
        for command in importlib.import_module(module).CLICK_COMMANDS:
            registered[command.name] = module
    assert registered == COMMANDS


def test_push_loads_no_merge_layer(work, run_mvc, tmp_path):
    """`mvc push` starts without the merge strategies (start-up is most of a small push)."""
    import subprocess
    import sys

    run_mvc(work, "add", "model")
    run_mvc(work, "commit", "-m", "base")
    code = (
        "import sys\n"
        "from mvc.cli.main import main\n"
        "try:\n"
        f"    main(['push', '-q', {str(tmp_path / 'remote')!r}, 'main'])\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "assert not any(m.startswith('mvc.merge') for m in sys.modules), 'merge imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "remote" / "refs" / "heads" / "main").is_file()
