"""Start-up: what push and clone import (most of a small push is start-up), and the
`python -m mvc` entry point."""

from __future__ import annotations

from model_factory import committed_base, fine_tuned, random_weights, write_model_folder


def _cli(*args: str) -> str:
    """Code running the CLI in-process, failing on a non-zero exit."""
    return (
        "from mvc.cli.main import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
    )


def test_push_imports_neither_numpy_nor_torch_and_clone_no_torch(tmp_path, assert_no_torch):
    """A push sends stored files as they are: no decoding, so no numpy. A clone decodes
    every object it receives to verify it (numpy), but never needs torch."""
    repo = committed_base(tmp_path / "work")
    write_model_folder(repo.root / "model", fine_tuned(random_weights(0), seed=1))
    repo.commit("tuned", all=True)  # delta objects, which a push must not decode
    remote = tmp_path / "remote"
    assert_no_torch(_cli("push", "-q", str(remote), "main"), repo.root, ("torch", "numpy"))
    assert (remote / "refs" / "heads" / "main").read_text().strip() == repo.head()
    assert_no_torch(_cli("clone", "-q", "--full", str(remote), "copy"), tmp_path)
    assert (tmp_path / "copy" / "model").is_dir()


def test_python_dash_m_mvc_runs_the_cli(tmp_path):
    """`python -m mvc` is the CLI: same commands, same exit codes."""
    import subprocess
    import sys

    def mvc(*args: str, cwd=tmp_path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "mvc", *args]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True)

    assert mvc("init").returncode == 0 and (tmp_path / ".git" / "mvc").is_dir()
    assert "Usage" in mvc("--help").stdout
    outside = mvc("status", cwd="/")
    assert outside.returncode == 1 and "not an mvc repository" in outside.stderr
