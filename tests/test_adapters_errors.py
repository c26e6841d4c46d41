"""Adapters in status/log/show, and bad adapter input: one line, nothing changed."""

from __future__ import annotations

import json

import pytest
import torch
from adapter_helpers import adapter_repo, make_adapter
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from mvc.cli.main import cli
from mvc.errors import FormatError
from mvc.formats.peft import LoraConfig, layout

SMALL = {"layers_to_transform": [0]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return adapter_repo(
        tmp_path_factory.mktemp("errors") / "repo", {"a": {"seed": 1, **SMALL}}, init=SMALL
    )


def run(repo, *args):
    return CliRunner().invoke(cli, ["-C", str(repo.root), *args])


def side_branch(repo, name, edit):
    """Branch `name` from main whose adapter is edited by `edit(folder)`."""
    repo.switch(name, create=True, start="main")
    edit(repo.root / "adapter")
    run(repo, "add", "adapter")
    repo.commit(f"edit {name}", all=True)
    repo.switch("main")


def refused(repo, other, *options, match):
    """Merging `other` into a branch of `a` fails with one line and changes nothing."""
    repo.switch(f"into-{other}-{'-'.join(o.strip('-') for o in options)}", create=True,
                start="a")
    head = repo.head()
    before = (repo.root / "adapter" / "adapter_model.safetensors").read_bytes()
    result = run(repo, "merge", other, *options)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("hint:")]
    assert len(lines) == 1 and lines[0].startswith("mvc: error: "), result.output
    assert match in lines[0]
    assert repo.head() == head and repo.status().clean
    assert (repo.root / "adapter" / "adapter_model.safetensors").read_bytes() == before
    repo.switch("main")


def edit_config(**changes):
    def edit(folder):
        path = folder / "adapter_config.json"
        doc = json.loads(path.read_text())
        doc.update(changes)
        path.write_text(json.dumps(doc))
        weights = load_file(str(folder / "adapter_model.safetensors"))
        save_file({k: v + 0.01 for k, v in weights.items()},
                  str(folder / "adapter_model.safetensors"))

    return edit


def test_status_log_and_show_name_the_adapter(repo):
    repo.switch("main")
    make_adapter(repo.root / "adapter", 5, **SMALL)
    status = run(repo, "status")
    assert "Adapter adapter/: LoRA adapter, r=8, alpha=16, targets: dense, query, value" in (
        status.output
    )
    repo.checkout("HEAD", ["adapter"], force=True)
    assert repo.status().clean
    log = run(repo, "log", "a", "-n", "1")
    assert "Adapter: adapter/ (LoRA adapter, r=8" in log.output
    show = json.loads(run(repo, "show", "a", "--json").output)
    assert show["adapters"]["adapter"].startswith("LoRA adapter, r=8")


def test_unsupported_adapter_types_are_refused_by_name(repo, tmp_path):
    side_branch(repo, "dora", lambda f: make_adapter(f, 2, use_dora=True, **SMALL))
    refused(repo, "dora", match="DoRA")
    side_branch(repo, "loha", edit_config(peft_type="LOHA"))
    refused(repo, "loha", match="'LOHA' is not supported")
    side_branch(repo, "ia3", edit_config(peft_type="IA3"))
    refused(repo, "ia3", match="'IA3' is not supported")


def test_mismatched_fan_in_fan_out_and_other_bases_are_refused(repo):
    side_branch(repo, "conv1d", edit_config(fan_in_fan_out=True))
    refused(repo, "conv1d", match="fan_in_fan_out differs")
    side_branch(repo, "otherbase", edit_config(base_model_name_or_path="gpt2"))
    refused(repo, "otherbase", match="adapters of different bases")

    def wider(folder):
        weights = load_file(str(folder / "adapter_model.safetensors"))
        key = next(k for k in weights if k.endswith("query.lora_A.weight"))
        weights[key] = torch.randn(8, 512)
        save_file(weights, str(folder / "adapter_model.safetensors"))

    side_branch(repo, "shapes", wider)
    refused(repo, "shapes", match="different base models")


def test_missing_config_and_too_large_rank_are_refused(repo):
    side_branch(repo, "noconfig", lambda f: (f / "adapter_config.json").unlink())
    refused(repo, "noconfig", match="has no adapter_config.json")
    side_branch(repo, "b", lambda f: make_adapter(f, 2, **SMALL))
    refused(repo, "b", "--adapter-rank", "1000", match="larger than module")
    refused(repo, "b", "--adapter-combine", "cat", match="needs a linear strategy")


def test_config_parser_refuses_what_it_does_not_understand():
    with pytest.raises(FormatError, match="r must be a positive integer"):
        LoraConfig.parse(b'{"peft_type": "LORA", "r": 0}')
    with pytest.raises(FormatError, match="DoRA"):
        LoraConfig.parse(b'{"peft_type": "LORA", "r": 8, "use_dora": true}')
    with pytest.raises(FormatError, match="has no lora_B"):
        layout(["base_model.model.q.lora_A.weight"])
    with pytest.raises(FormatError, match="LoKr"):
        layout(["base_model.model.q.lokr_w1"])
    config = LoraConfig.parse(
        b'{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": true,'
        b' "rank_pattern": {"layer.1.q": 4}, "alpha_pattern": {"v": 2}}'
    )
    assert config.scale_for("encoder.layer.1.q") == 16 / 2
    assert config.scale_for("encoder.layer.11.q") == 16 / 8**0.5
    assert config.scale_for("encoder.layer.0.v") == 2 / 8**0.5


@given(st.binary(max_size=200))
def test_config_parser_never_crashes(blob):
    try:
        LoraConfig.parse(blob)
    except FormatError:
        pass


def test_bake_refuses_unsupported_adapter_types_by_name(repo):
    """`mvc bake` reads the same config as merge: a DoRA or LoHa adapter is one line, and
    nothing is committed."""
    for name, match in (("dora", "DoRA"), ("loha", "'LOHA' is not supported")):
        if name not in {b.name for b in repo.branches()}:
            edit = (lambda f: make_adapter(f, 2, use_dora=True, **SMALL)) if name == "dora" \
                else edit_config(peft_type="LOHA")
            side_branch(repo, name, edit)
        repo.switch(name)
        head = repo.head()
        result = run(repo, "bake", "HEAD")
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if not line.startswith("hint:")]
        assert len(lines) == 1 and match in lines[0], result.output
        assert repo.head() == head and repo.status().clean
    repo.switch("main")
