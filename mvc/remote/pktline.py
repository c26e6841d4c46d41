"""git's pkt-line framing, as its long-running filter protocol speaks it.

Each packet is four hex digits giving the length (including those four bytes) followed by
the payload; `0000` is a flush packet that ends a list or a stream. Payloads are at most
65516 bytes, so file content travels as a stream of packets ended by a flush.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from mvc.errors import MvcError

MAX_PAYLOAD = 65516
FLUSH = b"0000"


class ProtocolError(MvcError):
    """The other end broke the pkt-line framing or the filter handshake."""


def read_packet(stream: BinaryIO) -> bytes | None:
    """The next payload, or None for a flush packet. EOF before a packet is an error."""
    head = stream.read(4)
    if len(head) != 4:
        raise EOFError("pkt-line stream ended")
    try:
        length = int(head, 16)
    except ValueError:
        raise ProtocolError(f"bad pkt-line length {head!r}") from None
    if length == 0:
        return None
    if length < 4 or length > MAX_PAYLOAD + 4:
        raise ProtocolError(f"bad pkt-line length {length}")
    payload = stream.read(length - 4)
    if len(payload) != length - 4:
        raise ProtocolError("pkt-line stream ended inside a packet")
    return payload


def read_text_list(stream: BinaryIO) -> list[str]:
    """Text packets up to the next flush, each without its trailing newline."""
    lines = []
    while (payload := read_packet(stream)) is not None:
        lines.append(payload.decode("utf-8").removesuffix("\n"))
    return lines


def read_keys(stream: BinaryIO) -> dict[str, str]:
    """A flush-terminated list of `key=value` lines, as git sends per-file requests."""
    return dict(line.partition("=")[::2] for line in read_text_list(stream))


def iter_content(stream: BinaryIO) -> Iterator[bytes]:
    """Binary payloads up to the next flush (a file's content)."""
    while (payload := read_packet(stream)) is not None:
        yield payload


def write_packet(stream: BinaryIO, payload: bytes) -> None:
    if not payload or len(payload) > MAX_PAYLOAD:
        raise ValueError("pkt-line payloads hold 1..65516 bytes")
    stream.write(b"%04x" % (len(payload) + 4) + payload)


def write_text_list(stream: BinaryIO, lines: Iterable[str]) -> None:
    """Text lines (newline-terminated) followed by a flush."""
    for line in lines:
        write_packet(stream, f"{line}\n".encode())
    stream.write(FLUSH)
    stream.flush()


def write_content(stream: BinaryIO, pieces: Iterable[bytes | memoryview]) -> None:
    """Split `pieces` into packets; the caller ends the stream with a flush."""
    for piece in pieces:
        view = memoryview(piece).cast("B")
        for start in range(0, len(view), MAX_PAYLOAD):
            write_packet(stream, bytes(view[start : start + MAX_PAYLOAD]))
