"""Issue 13: merging two LoRA adapters of a LLaMA-shaped model, mvc against PEFT.

Two PEFT LoRA adapters (r = 16, every linear module: q/k/v/o and gate/up/down) of a
synthetic LLaMA with LLaMA-7B's proportions are merged with TIES (density 0.5) back into a
rank-16 adapter, by ``mvc merge --strategy ties --adapter-rank 16`` (three-way, against a
commit holding the adapter at PEFT's init) and by PEFT's
``add_weighted_adapter(combination_type="ties_svd", svd_rank=16, density=0.5)`` on the same
two adapters, each in a fresh process. Times are the merge alone for PEFT (loading the
model and adapters excluded) and the whole ``mvc merge`` process for mvc (start-up
included). Peak RSS is the whole process. Two layer counts show whether memory grows with
the number of modules.

Full size (``--full``): hidden 4096, intermediate 11008, 32 layers (LLaMA-7B; PEFT needs the
base model in memory: 27 GB in fp32 and hours on a CPU). The default is a scaled-down model
(hidden 512, intermediate 1376, 2 and 4 layers) that runs in minutes.

Run: ``.venv/bin/python -m benchmarks.adapters [--full]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmarks.measure import Run, print_table, run

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK = 16
DENSITY = 0.5
ENV = {
    "PYTHONPATH": str(ROOT),
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}

# Run in a child: builds the model, saves an adapter (seed None: PEFT's init, zero B).
_MAKE = textwrap.dedent(
    """
    import json, sys, torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    shape, out, seed = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**shape))
    model = model.to_empty(device="cpu")
    torch.manual_seed(1)
    config = LoraConfig(r={rank}, lora_alpha=2 * {rank}, target_modules={targets})
    peft_model = get_peft_model(model, config)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.01)
                elif "lora_A" in name:
                    p.add_(torch.randn(p.shape, generator=g) * 0.001)
    peft_model.save_pretrained(out)
    """
).format(rank=RANK, targets=TARGETS)

# Run in a child: PEFT's ties_svd on the two adapters; prints the merge's own seconds.
_PEFT = textwrap.dedent(
    """
    import json, sys, time, torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM
    shape, a, b = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**shape))
    model = model.to_empty(device="cpu")
    peft_model = PeftModel.from_pretrained(model, a, adapter_name="a")
    peft_model.load_adapter(b, adapter_name="b")
    start = time.perf_counter()
    peft_model.add_weighted_adapter(
        ["a", "b"], [1.0, 1.0], "m", combination_type="ties_svd", svd_rank={rank},
        density={density},
    )
    print("merge_seconds", time.perf_counter() - start)
    """
).format(rank=RANK, density=DENSITY)


def shape(hidden: int, intermediate: int, layers: int) -> dict:
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 128),
        "num_key_value_heads": max(1, hidden // 128),
        "vocab_size": 256,  # the embeddings are not adapted; keep them out of the way
    }


def _python(script: str, *args: str, cwd: Path | None = None) -> Run:
    return run([sys.executable, "-c", script, *args], cwd=cwd, env=ENV)


def measure(work: Path, model: dict) -> tuple[Run, Run, float]:
    """(mvc merge, PEFT ties_svd, PEFT's merge seconds) for one model shape."""
    spec = json.dumps(model)
    mvc = [sys.executable, "-m", "mvc.cli.main"]
    repo = work / "repo"
    repo.mkdir()
    run([*mvc, "init"], cwd=repo, env=ENV)
    (repo / "README.md").write_text("bench\n")
    _python(_MAKE, spec, str(repo / "adapter"), "null")
    run([*mvc, "add", "README.md", "adapter"], cwd=repo, env=ENV)
    run([*mvc, "commit", "-m", "init adapter"], cwd=repo, env=ENV)
    for branch, seed in (("a", 1), ("b", 2)):
        run([*mvc, "switch", "-c", branch, "main"], cwd=repo, env=ENV)
        _python(_MAKE, spec, str(repo / "adapter"), str(seed))
        _python(_MAKE, spec, str(work / branch), str(seed))
        run([*mvc, "add", "adapter"], cwd=repo, env=ENV)
        run([*mvc, "commit", "-m", f"adapter {branch}"], cwd=repo, env=ENV)
    run([*mvc, "switch", "-c", "merged", "a"], cwd=repo, env=ENV)
    ours = run(
        [*mvc, "merge", "b", "--strategy", "ties", "--density", str(DENSITY),
         "--adapter-rank", str(RANK), "-m", "merge"],
        cwd=repo, env=ENV,
    )
    theirs = _python(_PEFT, spec, str(work / "a"), str(work / "b"))
    seconds = float(theirs.output.split("merge_seconds")[-1].split()[0])
    return ours, theirs, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="LLaMA-7B size (hours, 30+ GB)")
    args = parser.parse_args(argv)
    hidden, intermediate, layer_counts = (4096, 11008, (16, 32)) if args.full else (
        512, 1376, (2, 4)
    )
    rows = []
    for layers in layer_counts:
        with tempfile.TemporaryDirectory(prefix="mvc-bench-lora-") as tmp:
            ours, theirs, peft_seconds = measure(Path(tmp), shape(hidden, intermediate, layers))
        modules = 7 * layers
        rows.append([f"mvc merge --strategy ties --adapter-rank {RANK}", layers, modules,
                     f"{ours.seconds:.1f}", f"{ours.peak_rss_mib:.0f}"])
        rows.append([f"PEFT add_weighted_adapter ties_svd (merge only; process {theirs.seconds:.1f} s)",
                     layers, modules, f"{peft_seconds:.1f}", f"{theirs.peak_rss_mib:.0f}"])
    print_table(
        f"LoRA merge, LLaMA-shaped (hidden {hidden}, intermediate {intermediate}), r={RANK}",
        ["operation", "layers", "modules", "s", "peak RSS MiB"],
        rows,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    raise SystemExit(main())
