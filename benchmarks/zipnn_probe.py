"""ZipNN's compressed size of a fine-tune, full and as an XOR delta against its base.

Run as a script (``python benchmarks/zipnn_probe.py BASE FT DTYPE [--emulate]``) by an
interpreter that has the ``zipnn`` package, which is kept out of the project's .venv; it
prints one JSON line ``{"full": bytes, "delta": bytes, "engine": ...}``.

With ``--emulate`` (or when ``zipnn`` is missing) it does what ZipNN does, with numpy and
zstandard: XOR with the base, split each float into byte planes, zstd level 3 per 256 KiB
chunk, a chunk kept raw when that is smaller. Only numpy and zipnn/zstandard are imported,
so the script runs under either interpreter.
"""

from __future__ import annotations

import json
import struct
import sys

import numpy as np

CHUNK = 256 * 1024
ITEMSIZE = {"float32": 4, "bfloat16": 2}


def _data(path: str) -> tuple[int, bytearray]:
    """(header bytes, data region) of a safetensors file; the header is counted as stored."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    return 8 + n, bytearray(blob[8 + n :])


def _emulated(data: bytearray, itemsize: int) -> int:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    total = 0
    for start in range(0, len(data), CHUNK):
        chunk = np.frombuffer(bytes(data[start : start + CHUNK]), dtype=np.uint8)
        usable = len(chunk) - len(chunk) % itemsize
        planes = chunk[:usable].reshape(-1, itemsize).T.tobytes() + chunk[usable:].tobytes()
        total += min(len(chunk), len(cctx.compress(planes)))
    return total


def _zipnn(data: bytearray, dtype: str) -> int:
    from zipnn import ZipNN

    # ZipNN's compress() works in place on its input, so it gets a copy.
    return len(ZipNN(input_format="byte", bytearray_dtype=dtype).compress(bytearray(data)))


def main(argv: list[str]) -> None:
    base_path, ft_path, dtype = argv[:3]
    emulate = "--emulate" in argv[3:]
    if not emulate:
        try:
            import zipnn  # noqa: F401
        except ImportError:
            emulate = True
    header, ft = _data(ft_path)
    _, base = _data(base_path)
    if len(base) != len(ft):
        raise SystemExit("base and fine-tune differ in size; XOR delta needs the same layout")
    delta = bytearray((np.frombuffer(ft, np.uint8) ^ np.frombuffer(base, np.uint8)).tobytes())
    if emulate:

        def size(buf: bytearray) -> int:
            return _emulated(buf, ITEMSIZE[dtype])

    else:

        def size(buf: bytearray) -> int:
            return _zipnn(buf, dtype)

    result = {
        "engine": "emulated (byte planes + zstd-3 per 256 KiB)" if emulate else "zipnn",
        "full": header + size(ft),
        "delta": header + size(delta),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
