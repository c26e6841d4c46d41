"""The transport contract, run against a path remote and a real SeaweedFS S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvc.errors import NotFoundError, RemoteError
from mvc.remote import s3 as s3_module
from mvc.remote.path import PathTransport
from mvc.remote.transport import RefConflict, RemoteNotFoundError
from mvc.remote.url import RemoteURL, open_transport, parse_url

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(params=["path", pytest.param("s3", marks=pytest.mark.s3)])
def transport_url(request, tmp_path):
    """A URL for an empty remote of each kind (the S3 one in a fresh bucket)."""
    if request.param == "path":
        return str(tmp_path / "remote")
    server = request.getfixturevalue("s3_env")
    return f"s3://{server.new_bucket()}/team/model"


@pytest.fixture
def transport(transport_url):
    return open_transport(transport_url)


def test_put_get_exists(transport):
    assert not transport.exists("objects/ab/cdef")
    transport.put("objects/ab/cdef", b"payload")
    transport.put("objects/ab/cdef", b"payload")  # immutable objects: a second put is harmless
    assert transport.exists("objects/ab/cdef")
    assert transport.get("objects/ab/cdef") == b"payload"
    transport.put("empty", b"")
    assert transport.get("empty") == b""


def test_get_missing_is_not_found(transport):
    transport.put("present", b"x")
    with pytest.raises(RemoteNotFoundError) as info:
        transport.get("objects/00/missing")
    assert isinstance(info.value, RemoteError) and isinstance(info.value, NotFoundError)


def test_list_prefix_paginates(transport, monkeypatch):
    monkeypatch.setattr(s3_module, "LIST_PAGE_SIZE", 3)
    keys = {f"mvc/objects/{i:02x}/{'f' * 30}" for i in range(10)}
    for key in keys:
        transport.put(key, key.encode())
    transport.put("objects/aa/other", b"git")
    transport.put("refs/heads/main", b"ref")
    assert set(transport.list("mvc/objects/")) == keys
    assert set(transport.list("objects/")) == {"objects/aa/other"}
    assert list(transport.list("nothing/")) == []


def test_cas_create_only(transport):
    assert transport.read_ref("refs/heads/main") == (None, None)
    token = transport.cas_ref("refs/heads/main", b"a" * 40 + b"\n", None)
    value, read_token = transport.read_ref("refs/heads/main")
    assert value == b"a" * 40 + b"\n" and read_token == token
    with pytest.raises(RefConflict, match="fetch and merge first"):
        transport.cas_ref("refs/heads/main", b"b" * 40 + b"\n", None)
    assert transport.read_ref("refs/heads/main")[0] == b"a" * 40 + b"\n"


def test_cas_update_if_match(transport):
    first = transport.cas_ref("refs/heads/dev", b"1", None)
    second = transport.cas_ref("refs/heads/dev", b"2", first)
    assert transport.read_ref("refs/heads/dev") == (b"2", second)
    with pytest.raises(RefConflict):
        transport.cas_ref("refs/heads/dev", b"3", first)  # stale token
    assert transport.read_ref("refs/heads/dev")[0] == b"2"
    assert list(transport.list("refs/heads/")) == ["refs/heads/dev"]


def test_concurrent_cas_threads_one_wins(transport):
    _, token = transport.read_ref("refs/heads/race")
    barrier = threading.Barrier(4)
    outcomes: list[str] = []
    lock = threading.Lock()

    def push(value: bytes) -> None:
        barrier.wait()
        try:
            transport.cas_ref("refs/heads/race", value, token)
            result = "won"
        except RefConflict:
            result = "lost"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=push, args=(str(i).encode(),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    value, _ = transport.read_ref("refs/heads/race")
    assert value in {b"0", b"1", b"2", b"3"}


_CAS_SCRIPT = """
import sys
from mvc.remote.transport import RefConflict
from mvc.remote.url import open_transport
url, value = sys.argv[1], sys.argv[2]
t = open_transport(url)
expected = t.read_ref("refs/heads/main")[1]
print("ready", flush=True)
sys.stdin.readline()  # every process holds the same token before any writes
try:
    t.cas_ref("refs/heads/main", value.encode(), expected)
    print("won")
except RefConflict:
    print("lost")
"""


def test_concurrent_cas_processes_one_wins(transport, transport_url):
    transport.cas_ref("refs/heads/main", b"base", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CAS_SCRIPT, transport_url, f"p{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for i in range(2)
    ]
    # Let them race only once both have read the ref (start-up is slow on a loaded machine).
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    outputs = [p.communicate("go\n", timeout=60)[0].strip() for p in procs]
    assert sorted(outputs) == ["lost", "won"]
    assert transport.read_ref("refs/heads/main")[0] in {b"p0", b"p1"}


def test_path_stale_lock_of_dead_process_is_cleared(tmp_path, capfd):
    transport = PathTransport(tmp_path / "remote")
    token = transport.cas_ref("refs/heads/main", b"one", None)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    lock = tmp_path / "remote" / "refs" / "heads" / "main.lock"
    lock.write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")
    transport.cas_ref("refs/heads/main", b"two", token)
    assert transport.read_ref("refs/heads/main")[0] == b"two"
    assert not lock.exists()
    assert "stale lock" in capfd.readouterr().err


def test_path_keys_cannot_escape(tmp_path):
    transport = PathTransport(tmp_path / "remote")
    for key in ("../x", "a/../../x", "/etc/passwd", "a//b", ""):
        with pytest.raises(RemoteError):
            transport.put(key, b"x")


def test_path_missing_remote_says_so(tmp_path):
    transport = PathTransport(tmp_path / "nowhere")
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        transport.get("HEAD")


@pytest.mark.s3
def test_s3_wrong_credentials_refused(s3_env, monkeypatch):
    bucket = s3_env.new_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    transport = open_transport(f"s3://{bucket}/x")
    with pytest.raises(RemoteError, match="refused our credentials") as info:
        transport.put("objects/aa/bb", b"x")
    assert "AWS_SECRET_ACCESS_KEY" in info.value.hint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(RemoteError, match="refused our credentials"):
        list(open_transport(f"s3://{bucket}/x").list("refs/"))


@pytest.mark.s3
def test_s3_missing_bucket(s3_env):
    transport = open_transport("s3://no-such-bucket-mvc/x")
    with pytest.raises(RemoteError, match="bucket 'no-such-bucket-mvc' does not exist"):
        list(transport.list("refs/"))
    with pytest.raises(RemoteError, match="does not exist"):
        transport.put("objects/aa/bb", b"x")


def test_s3_dead_endpoint_fails_fast(monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    transport = open_transport("s3://bucket/x", endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteError, match="cannot reach") as info:
        transport.get("HEAD")
    assert "--endpoint" in info.value.hint


_BUCKETS = st.from_regex(r"[a-z0-9][a-z0-9\-]{1,20}[a-z0-9]", fullmatch=True)
_SEGMENTS = st.lists(st.from_regex(r"[A-Za-z0-9_\-]{1,8}", fullmatch=True), max_size=4)


@given(_BUCKETS, _SEGMENTS)
def test_parse_s3_url(bucket, segments):
    prefix = "/".join(segments)
    assert parse_url(f"s3://{bucket}/{prefix}") == RemoteURL("s3", bucket=bucket, prefix=prefix)
    assert parse_url(f"s3://{bucket}/{prefix}/") == RemoteURL("s3", bucket=bucket, prefix=prefix)


def test_parse_paths_and_bad_urls(tmp_path):
    assert parse_url(str(tmp_path)) == RemoteURL("file", path=str(tmp_path))
    assert parse_url(f"file://{tmp_path}/a%20b") == RemoteURL("file", path=f"{tmp_path}/a b")
    for bad in ("s3://UPPER/x", "s3://a/x", "s3://bucket/../x", "http://host/x", ""):
        with pytest.raises(RemoteError):
            parse_url(bad)
