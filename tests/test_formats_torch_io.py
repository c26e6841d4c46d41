"""mvc.formats.torch_io: raw bytes <-> torch tensors, without copies where safe."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import safetensors.torch
import torch

from mvc.errors import FormatError
from mvc.formats.dtypes import DTYPES
from mvc.formats.safetensors import SafetensorsFile
from mvc.formats.torch_io import (
    dtype_name,
    state_dict_specs,
    tensor_bytes,
    to_torch,
    torch_dtype,
    write_state_dict,
)


def random_tensor(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Arbitrary bit patterns of the dtype (NaNs included): exactness is about bits."""
    g = torch.Generator().manual_seed(seed)
    itemsize = DTYPES[name].itemsize
    n = int(np.prod(shape))
    raw = torch.randint(0, 256, (n * itemsize,), dtype=torch.uint8, generator=g)
    if name == "BOOL":
        raw = raw % 2
    return raw.view(torch_dtype(name)).reshape(shape)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_dtype_names_round_trip(name):
    assert dtype_name(torch_dtype(name)) == name
    assert torch_dtype(name).itemsize == DTYPES[name].itemsize


def test_unknown_dtypes():
    with pytest.raises(FormatError, match="unknown dtype 'F33'"):
        torch_dtype("F33")
    with pytest.raises(FormatError, match="complex64 has no safetensors equivalent"):
        dtype_name(torch.complex64)


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(3, 5), (), (0, 4), (7,)])
def test_bytes_round_trip_bit_exact(name, shape):
    t = random_tensor(name, shape, seed=len(shape))
    raw = tensor_bytes(t)
    assert len(raw) == t.numel() * DTYPES[name].itemsize
    back = to_torch(raw, name, shape)
    assert back.dtype == t.dtype and tuple(back.shape) == shape
    assert tensor_bytes(back) == raw


def test_tensor_bytes_of_views_and_grad_tensors():
    t = torch.arange(12, dtype=torch.float32, requires_grad=True).reshape(3, 4)
    assert tensor_bytes(t.T) == t.detach().T.contiguous().numpy().tobytes()
    assert tensor_bytes(t[:, 1]) == np.arange(12, dtype=np.float32).reshape(3, 4)[:, 1].tobytes()


def test_to_torch_shares_writable_buffers():
    buf = bytearray(np.arange(4, dtype=np.float32).tobytes())
    t = to_torch(buf, "F32", (2, 2))
    t[0, 0] = 9.0
    assert np.frombuffer(buf, np.float32)[0] == 9.0


def test_to_torch_copies_read_only_buffers_without_warning(tmp_path):
    raw = np.arange(6, dtype=np.float32).tobytes()
    path = tmp_path / "r.safetensors"
    path.write_bytes(safetensors.torch.save({"a": torch.arange(6, dtype=torch.float32)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = to_torch(raw, "F32", (6,))
        t += 1  # must not touch the immutable bytes object
        with SafetensorsFile(path) as f:
            m = to_torch(f.tensor("a"), "F32", (2, 3))
            m.mul_(2)  # would crash on a read-only mapping if shared
            assert np.frombuffer(f.tensor("a"), np.float32).tolist() == [0, 1, 2, 3, 4, 5]
    assert raw == np.arange(6, dtype=np.float32).tobytes()
    assert m.flatten().tolist() == [0, 2, 4, 6, 8, 10]


def test_to_torch_unaligned_and_wrong_size():
    buf = bytearray(b"\0" + np.arange(3, dtype=np.float64).tobytes())
    t = to_torch(memoryview(buf)[1:], "F64", (3,))
    assert t.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="do not hold"):
        to_torch(b"\0" * 7, "F32", (2,))


def test_state_dict_specs():
    sd = {"w": torch.zeros(2, 3, dtype=torch.bfloat16), "s": torch.tensor(1, dtype=torch.int64)}
    assert state_dict_specs(sd) == [("w", "BF16", (2, 3)), ("s", "I64", ())]
    with pytest.raises(FormatError, match="'step' is a int, not a tensor"):
        state_dict_specs({"step": 3})
    with pytest.raises(FormatError, match="sparse"):
        state_dict_specs({"s": torch.eye(2).to_sparse()})


def test_write_state_dict_matches_library_for_every_dtype(tmp_path):
    sd = {f"t.{name.lower()}": random_tensor(name, (3, 2), i) for i, name in enumerate(DTYPES)}
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3, dtype=torch.float16)
    sd["view"] = torch.arange(20, dtype=torch.int32).reshape(4, 5)[:, 1:3]
    path = tmp_path / "sd.safetensors"
    header = write_state_dict(path, sd, {"format": "pt"})
    expected = {k: v.contiguous() for k, v in sd.items()}
    assert path.read_bytes() == safetensors.torch.save(expected, metadata={"format": "pt"})
    with SafetensorsFile(path) as f:
        assert f.header == header
        for info in f:
            got = to_torch(f.tensor(info.name), info.dtype, info.shape)
            assert tensor_bytes(got) == tensor_bytes(sd[info.name])
