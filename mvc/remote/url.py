"""Remote URLs: `s3://bucket/prefix`, `file:///path`, or a plain filesystem path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mvc.errors import RemoteError
from mvc.remote.transport import Transport

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class RemoteURL:
    """A parsed remote address: `scheme` is "s3" (bucket, prefix) or "file" (path)."""

    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: str = ""


def parse_url(url: str) -> RemoteURL:
    """Parse a remote URL; anything that is not `s3://` or `file://` is a local path."""
    if not url:
        raise RemoteError("empty remote URL")
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not _BUCKET.match(bucket):
            raise RemoteError(
                f"'{bucket}' is not a valid S3 bucket name in {url}",
                hint="bucket names are 3-63 characters of a-z, 0-9, '.' and '-'",
            )
        prefix = prefix.strip("/")
        if any(part in (".", "..") for part in prefix.split("/")) or "//" in prefix:
            raise RemoteError(f"invalid S3 prefix in {url}")
        return RemoteURL("s3", bucket=bucket, prefix=prefix)
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise RemoteError(f"file:// URLs must name a local path: {url}")
        return RemoteURL("file", path=unquote(parsed.path))
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise RemoteError(
            f"unsupported remote URL scheme '{scheme}://'",
            hint="use a filesystem path, file:///path or s3://bucket/prefix",
        )
    return RemoteURL("file", path=str(Path(url).expanduser().absolute()))


def open_transport(url: str, endpoint: str | None = None) -> Transport:
    """The transport for `url` (`endpoint` only matters for S3: else AWS_ENDPOINT_URL/AWS)."""
    parsed = parse_url(url)
    if parsed.scheme == "s3":
        from mvc.remote.s3 import S3Transport

        return S3Transport(parsed.bucket, parsed.prefix, endpoint)
    from mvc.remote.path import PathTransport

    return PathTransport(parsed.path)
