"""mvc.remote: sharing a repository through a path or an S3 bucket (layer 7, never torch).

Transports (`path`, `s3`) store immutable objects by key and move refs by compare-and-swap;
`sync` sends or receives only what the other side lacks, verifies everything it receives,
and moves refs last. See docs/remotes.md for the layout of a remote.
"""

from mvc.remote.config import (
    RemoteConfig,
    add_remote,
    get_remote,
    list_remotes,
    remove_remote,
    set_upstream,
    upstream,
)
from mvc.remote.pull import PullResult, pull
from mvc.remote.sync import CloneResult, TransferReport, clone, fetch, push
from mvc.remote.transport import RefConflict, RemoteNotFoundError, Transport
from mvc.remote.url import open_transport, parse_url

__all__ = [
    "CloneResult",
    "PullResult",
    "RefConflict",
    "RemoteConfig",
    "RemoteNotFoundError",
    "TransferReport",
    "Transport",
    "add_remote",
    "clone",
    "fetch",
    "get_remote",
    "list_remotes",
    "open_transport",
    "parse_url",
    "pull",
    "push",
    "remove_remote",
    "set_upstream",
    "upstream",
]
