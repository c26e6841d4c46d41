"""mvc.formats.hf: model-file detection, pickle refusal, safe paths, sharded indexes."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvc.errors import FormatError, NotFoundError
from mvc.formats.hf import (
    INDEX_NAME,
    check_not_pickle,
    convert_pickle_checkpoint,
    is_model_file,
    read_index,
    safe_relpath,
    weight_map,
)


def test_model_files_and_pickles():
    assert is_model_file("m/model-00001-of-00002.safetensors")
    assert is_model_file("M.SAFETENSORS")
    assert not is_model_file("model.safetensors.index.json")
    assert not is_model_file("config.json")
    check_not_pickle("model.safetensors")
    check_not_pickle("config.json")
    for name in ["pytorch_model.bin", "a.pt", "a.pth", "a.ckpt", "a.PKL"]:
        with pytest.raises(
            FormatError, match="is a pickle checkpoint; mvc never loads pickles"
        ) as e:
            check_not_pickle(f"model/{name}")
        assert (
            e.value.hint
            == f"convert it with `mvc import model/{name}` (uses torch.load(weights_only=True))"
        )


@pytest.mark.parametrize(
    ("rel", "problem"),
    [
        ("", "non-empty"),
        ("/etc/passwd", "absolute"),
        ("../x.safetensors", "'..'"),
        ("a/../../x", "'..'"),
        ("a/./b", "'.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a\\..\\b", "backslash"),
        ("a\0b", "NUL"),
        (3, "non-empty string"),
        (None, "non-empty string"),
    ],
)
def test_safe_relpath_refuses_escapes(tmp_path, rel, problem):
    with pytest.raises(FormatError, match=f"unsafe path .*{problem}"):
        safe_relpath(tmp_path, rel)


def test_safe_relpath_accepts_plain_paths_and_refuses_symlink_escapes(tmp_path):
    assert safe_relpath(tmp_path, "model/a.safetensors") == tmp_path / "model" / "a.safetensors"
    assert safe_relpath(tmp_path, "..weird name") == tmp_path / "..weird name"
    outside = tmp_path / "outside"
    outside.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(outside)
    with pytest.raises(FormatError, match="through a symlink"):
        safe_relpath(tree, "link/x.safetensors")


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("ab./\\\0"), max_size=10))
def test_safe_relpath_never_leaves_root(tmp_path_factory, rel):
    root = tmp_path_factory.getbasetemp() / "root"
    try:
        path = safe_relpath(root, rel)
    except FormatError:
        return
    assert os.path.normpath(path).startswith(str(root) + os.sep)


def write_index(folder, obj):
    (folder / INDEX_NAME).write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def test_read_index_and_weight_map(tmp_path):
    shards = {
        "a.weight": "model-00001-of-00002.safetensors",
        "b": "sub/model-00002-of-00002.safetensors",
    }
    write_index(tmp_path, {"metadata": {"total_size": 12}, "weight_map": shards})
    assert weight_map(tmp_path) == shards
    assert weight_map(tmp_path / INDEX_NAME) == shards
    assert read_index(tmp_path / INDEX_NAME)["metadata"] == {"total_size": 12}
    with pytest.raises(NotFoundError, match="does not exist"):
        weight_map(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("{", "index is not JSON"),
        ('{"weight_map": {}, "weight_map": {}}', "duplicate key 'weight_map'"),
        ([], "not a JSON object"),
        ({"metadata": {}}, "no 'weight_map' object"),
        ({"weight_map": {}, "metadata": 3}, "'metadata' is not an object"),
        ({"weight_map": {"a": "../x.safetensors"}}, "unsafe path '../x.safetensors'"),
        ({"weight_map": {"a": "/abs.safetensors"}}, "absolute"),
        ({"weight_map": {"a": "pytorch_model-1.bin"}}, "not a safetensors file"),
        ({"weight_map": {"a": 3}}, "not a safetensors file"),
        ({"weight_map": {"": "m.safetensors"}}, "invalid tensor name ''"),
    ],
)
def test_bad_indexes(tmp_path, index, message):
    write_index(tmp_path, index)
    with pytest.raises(FormatError, match=message) as e:
        weight_map(tmp_path)
    assert str(e.value).startswith(str(tmp_path / INDEX_NAME))


@pytest.mark.parametrize("wrap", [False, True])
def test_convert_pickle_checkpoint(tmp_path, wrap):
    sd = {"w": torch.randn(3, 2).to(torch.bfloat16), "b": torch.arange(4)}
    src = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": sd, "epoch": 3} if wrap else sd, src)
    dst = tmp_path / "model.safetensors"
    header = convert_pickle_checkpoint(src, dst)
    assert [t.name for t in header.tensors] == ["b", "w"]
    assert dst.read_bytes() == safetensors.torch.save(sd, metadata={"format": "pt"})


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_convert_refuses_code_and_non_tensors(tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil(), protocol=2))
    dst = tmp_path / "out.safetensors"
    with pytest.raises(FormatError, match="cannot be loaded with weights_only=True"):
        convert_pickle_checkpoint(evil, dst)
    assert not (tmp_path / "pwned").exists()
    plain = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], plain)
    with pytest.raises(FormatError, match="holds a list, not a dict of tensors"):
        convert_pickle_checkpoint(plain, dst)
    mixed = tmp_path / "mixed.pt"
    torch.save({"w": torch.zeros(1), "step": 3}, mixed)
    with pytest.raises(FormatError, match="'step' is a int, not a tensor"):
        convert_pickle_checkpoint(mixed, dst)
    with pytest.raises(NotFoundError):
        convert_pickle_checkpoint(tmp_path / "missing.pt", dst)
    assert not dst.exists()
