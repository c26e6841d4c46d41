"""The docs cannot rot: every `$` line in their console blocks runs, in order, and succeeds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_WITH_SESSIONS = ["docs/user-guide.md", "docs/tutorial.md"]
_BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def commands(doc: Path) -> list[str]:
    """The `$ ...` lines of every console block, in document order."""
    lines = []
    for block in _BLOCK.findall(doc.read_text()):
        lines.extend(line[2:] for line in block.splitlines() if line.startswith("$ "))
    return lines


def test_every_console_block_has_commands():
    for name in DOCS_WITH_SESSIONS:
        path = ROOT / name
        if path.exists():
            assert commands(path), f"{name} has no runnable examples"


@pytest.mark.slow
@pytest.mark.parametrize("name", DOCS_WITH_SESSIONS)
def test_doc_session_runs(name, tmp_path):
    doc = ROOT / name
    if not doc.exists():
        pytest.skip(f"{name} not written")
    sandbox = tmp_path / "session"
    sandbox.mkdir()
    shutil.copytree(ROOT / "examples", sandbox / "examples")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MVC_LOCK_WAIT="5")
    for command in commands(doc):
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=sandbox,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == _expected_exit(command), (
            f"{name}: `{command}` exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
        assert "Traceback" not in proc.stderr, proc.stderr


def _expected_exit(command: str) -> int:
    """A doc line may show a failure on purpose: `...  # expect: exit N`."""
    match = re.search(r"# expect: exit (\d+)", command)
    return int(match.group(1)) if match else 0
