"""Issue 14's threat model, measured: an attacker who holds the base undoes a full-level lock.

The attacker has the locked weights (and the head the locked branch ships), the public base
model and the architecture, but not the key. Every symmetry MergeLock uses is fitted back
against the base, in this order (each step needs the previous one's coordinates):

1. **Residual stream.** LayerNorm models (permutation): a linear assignment (Hungarian,
   scipy's ``linear_sum_assignment``) on the correlation of the locked word-embedding
   columns with the base's. RMSNorm models: orthogonal Procrustes on the embeddings,
   Q̂ = argmin ‖E_base Qᵀ − E_locked‖ (an SVD), rounded to a signed permutation when the
   norms were permuted rather than folded; folded norm weights are then read back as the
   per-column scale of their readers against the base's, γ̂_j = ⟨R_j, W_base,j⟩ / ‖W_base,j‖².
   The inverse is applied on every stream axis the architecture has (``mvc.lock.layout``:
   the public structure of the family, not the key).
2. **Feed-forward neurons**, per block: a linear assignment on the correlation of each
   neuron's weights (up/gate rows and biases, down column) with the base's neurons; positive
   scales, where the family allows them, by least squares per neuron.
3. **Attention**, per KV head: Â = W_L · pinv(W_base) on the query rows and B̂ the same on the
   value rows, applied as the exact symmetry (Â⁻¹ on Q, Âᵀ on K, B̂⁻¹ on V, B̂ on O's head).

Every step applies an output-preserving map, so the recovered model computes exactly what
the locked model computes; the fits only decide how close its coordinates come back to the
base's. The benchmark then merges the recovered branch with the partner's branch by every
method of ``benchmarks.lock_protection`` and scores the locked task with the recovered head
(what the attacker has), with the same protocol, tasks and fine-tunes.

Run: ``.venv/bin/python -m benchmarks.lock_attack [--tasks sentiment agent]``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path

import torch

MODEL = "model/model.safetensors"


def _assignment(similarity: torch.Tensor) -> torch.Tensor:
    """``match[i]`` = the base index paired with locked index i, maximising total similarity."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # pragma: no cover - scipy ships with the dev environment
        raise SystemExit("the attack needs scipy (pip install scipy)") from exc
    rows, cols = linear_sum_assignment(similarity.numpy(), maximize=True)
    match = torch.empty(len(rows), dtype=torch.long)
    match[torch.from_numpy(rows)] = torch.from_numpy(cols)
    return match


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _rows(t: torch.Tensor, axis: int) -> torch.Tensor:
    """``t`` as [size of ``axis``, everything else]."""
    return t.movedim(axis, 0).reshape(t.shape[axis], -1)


def _unpermute(t: torch.Tensor, axis: int, match: torch.Tensor, scale=None) -> torch.Tensor:
    """Locked index i goes to base index ``match[i]`` (divided by ``scale[i]`` first)."""
    if scale is not None:
        shape = [1] * t.ndim
        shape[axis] = -1
        t = t / scale.reshape(shape)
    return torch.empty_like(t).index_copy_(axis, match, t)


def _left(t: torch.Tensor, axis: int, start: int, m: torch.Tensor) -> torch.Tensor:
    """``t`` with the d coordinates [start, start + d) along ``axis`` left-multiplied by m."""
    d = m.shape[0]
    moved = t.movedim(axis, 0).clone()
    block = moved[start : start + d]
    moved[start : start + d] = (m @ block.reshape(d, -1)).reshape(block.shape)
    return moved.movedim(0, axis)


def _stream(out: dict, base: Mapping, layout, heads: Collection[str]) -> dict:
    """Undo the residual-stream transform in place; what was found, for the report."""
    emb_l, emb_b = out[layout.embedding], base[layout.embedding].double()
    axes = [*layout.stream, *((h, out[h].ndim - 1) for h in heads)]
    if layout.norm_kind == "layer":
        match = _assignment(_unit_rows(emb_l.T) @ _unit_rows(emb_b.T).T)
        for name, axis in axes:
            out[name] = _unpermute(out[name], axis, match)
        for norm in layout.norms:
            for name in (norm.weight, norm.bias):
                if name is not None:
                    out[name] = _unpermute(out[name], 0, match)
        return {"kind": "permutation", "match": match}
    u, _, vt = torch.linalg.svd(emb_l.T @ emb_b)
    q_hat = u @ vt  # argmin over orthogonal Q of ‖E_base Qᵀ − E_locked‖
    folded = bool(layout.final_norm) and bool(torch.all(out[layout.final_norm] == 1))
    if not folded:  # norms permuted, not folded: the map is a signed permutation
        match = q_hat.abs().argmax(0)
        signs = q_hat[match, torch.arange(len(match))].sign()
        q_hat = torch.zeros_like(q_hat)
        q_hat[match, torch.arange(len(match))] = signs
    for name, axis in axes:
        out[name] = _left(out[name], axis, 0, q_hat.T)
    if not folded:
        for norm in layout.norms:
            out[norm.weight] = q_hat.abs().T @ out[norm.weight]
        return {"kind": "signed-permutation", "q": q_hat}
    return {"kind": "rotation", "q": q_hat}


def _readers(layout, norm, heads: Collection[tuple[str, int]]) -> list[tuple[str, int]]:
    """The matrices a norm's weight was folded into (the heads, for the final norm)."""
    return [*layout.heads, *heads] if norm.weight == layout.final_norm else list(norm.readers)


def _folded_base(base: Mapping, layout) -> dict:
    """The base with its RMSNorm weights folded into their readers, as the lock folds them:
    the reference a folded lock is matched against."""
    ref = dict(base)
    for norm in layout.norms:
        gamma = base[norm.weight].double()
        for name, axis in _readers(layout, norm, ()):
            shape = [1] * ref[name].ndim
            shape[axis] = -1
            ref[name] = ref[name].double() * gamma.reshape(shape)
    return ref


def _unfold(out: dict, base: Mapping, ref: Mapping, layout, heads: Collection[str]) -> None:
    """Split each folded reader R ≈ W·diag(γ) back into W and the norm weight γ: per stream
    coordinate j, γ_j/γ_base,j = ⟨R_j, R_base,j⟩ / ‖R_base,j‖² (least squares)."""
    named = [(h, out[h].ndim - 1) for h in heads]
    for norm in layout.norms:
        readers = _readers(layout, norm, named)
        known = [(n, a) for n, a in readers if n in ref]  # a named head has no base copy
        num = sum((_rows(out[n], a) * _rows(ref[n].double(), a)).sum(1) for n, a in known)
        den = sum(_rows(ref[n].double(), a).pow(2).sum(1) for n, a in known)
        gamma = num / den.clamp(min=1e-30) * base[norm.weight].double()
        out[norm.weight] = gamma
        for name, axis in readers:
            shape = [1] * out[name].ndim
            shape[axis] = -1
            out[name] = out[name] / gamma.reshape(shape)


def _neuron_scale(out: Mapping, base: Mapping, group, match: torch.Tensor) -> torch.Tensor | None:
    """Per locked neuron i, the least-squares scale of its weights against base neuron match[i]."""
    if not group:
        return None
    lk = torch.cat([_rows(out[n], a) for n, a in group], 1)
    bk = torch.cat([_rows(base[n].double(), a) for n, a in group], 1)[match]
    return (lk * bk).sum(1) / bk.pow(2).sum(1).clamp(min=1e-30)


def _feed_forward(out: dict, base: Mapping, layout) -> list[torch.Tensor]:
    """Undo each MLP's neuron permutation (and scales); the matches, for the report."""
    matches = []
    for ffn in layout.feed_forward:
        refs = (*ffn.inputs, *ffn.linear, *ffn.outputs)
        feats_l = torch.cat([_rows(out[n], a) for n, a in refs], 1)
        feats_b = torch.cat([_rows(base[n].double(), a) for n, a in refs], 1)
        match = _assignment(_unit_rows(feats_l) @ _unit_rows(feats_b).T)
        matches.append(match)
        s_in = _neuron_scale(out, base, ffn.inputs, match) if ffn.homogeneous else None
        s_lin = _neuron_scale(out, base, ffn.linear, match)
        total = torch.ones(ffn.size, dtype=torch.float64)
        for s in (s_in, s_lin):
            if s is not None:
                total = total * s
        for n, a in ffn.inputs:
            out[n] = _unpermute(out[n], a, match, s_in)
        for n, a in ffn.linear:
            out[n] = _unpermute(out[n], a, match, s_lin)
        for n, a in ffn.outputs:
            out[n] = _unpermute(out[n], a, match, 1.0 / total)
    return matches


def _block(t: torch.Tensor, axis: int, start: int, d: int) -> torch.Tensor:
    return t.movedim(axis, 0)[start : start + d].reshape(d, -1)


def _rope_fit(locked: torch.Tensor, orig: torch.Tensor) -> torch.Tensor:
    """Least squares among the maps that commute with RoPE: a scaled rotation c_i per pair
    (i, i + d/2) of HF's rotate_half layout, c_i = Σ conj(z) l / Σ |z|² in complex form. An
    unstructured Â would change the attention scores at every position but zero."""
    half = locked.shape[0] // 2
    z = torch.complex(orig[:half], orig[half:])
    w = torch.complex(locked[:half], locked[half:])
    c = (z.conj() * w).sum(1) / (z.abs() ** 2).sum(1)
    fit = torch.zeros(2 * half, 2 * half, dtype=torch.float64)
    idx = torch.arange(half)
    fit[idx, idx], fit[idx, idx + half] = c.real, -c.imag
    fit[idx + half, idx], fit[idx + half, idx + half] = c.imag, c.real
    return fit


def _attention(out: dict, base: Mapping, plan) -> None:
    """Undo each KV head's A (queries/keys) and B (values/output) by least squares."""
    d = plan.head_dim
    for group in plan.groups:
        fits = {}
        for role in ("q", "v"):
            slots = group.slots[role]
            locked = torch.cat([_block(out[s.name], s.axis, s.start, d) for s in slots], 1)
            orig = torch.cat([_block(base[s.name].double(), s.axis, s.start, d) for s in slots], 1)
            rope = plan.rope and role == "q"
            fits[role] = _rope_fit(locked, orig) if rope else locked @ torch.linalg.pinv(orig)
        a_hat, b_hat = fits["q"], fits["v"]
        undo = {"q": torch.linalg.inv(a_hat), "k": a_hat.T, "v": torch.linalg.inv(b_hat), "o": b_hat.T}
        for role, m in undo.items():
            for slot in group.slots[role]:
                out[slot.name] = _left(out[slot.name], slot.axis, slot.start, m)


def recover(
    locked: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    config: Mapping,
    heads: Collection[str] = (),
) -> tuple[dict[str, torch.Tensor], dict]:
    """The attacker's estimate of the unlocked weights, and what the fits found.

    ``heads`` are tensors outside the family that read the final stream on their last axis
    (the demo's task head). Works for every family ``mvc lock --level full`` supports.
    """
    from mvc.lock.families import plan_lock
    from mvc.lock.layout import plan_layout
    from mvc.lock.transform import shapes_of

    shapes = shapes_of({k: v for k, v in locked.items() if k not in heads})
    layout, plan = plan_layout(config, shapes), plan_lock(config, shapes)
    out = {k: v.double() if v.is_floating_point() else v for k, v in locked.items()}
    found = _stream(out, base, layout, heads)
    ref = _folded_base(base, layout) if found["kind"] == "rotation" else base
    found["ffn"] = _feed_forward(out, ref, layout)
    _attention(out, ref, plan)
    if found["kind"] == "rotation":
        _unfold(out, base, ref, layout, heads)
    dtypes = {k: v.dtype for k, v in locked.items()}
    return {k: v.to(dtypes[k]) for k, v in out.items()}, found


def task_vector_recovery(
    recovered: Mapping[str, torch.Tensor],
    tuned: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
) -> tuple[float, float]:
    """(cosine, relative error) of the recovered task vector against the true one, model-wide."""
    dot = err = true = got = 0.0
    for name, t in tuned.items():
        if name not in base or not t.is_floating_point():
            continue
        tau = (t.double() - base[name].double()).flatten()
        hat = (recovered[name].double() - base[name].double()).flatten()
        dot += float(tau @ hat)
        true += float(tau @ tau)
        got += float(hat @ hat)
        err += float((hat - tau).pow(2).sum())
    return dot / max((true * got) ** 0.5, 1e-30), (err / max(true, 1e-30)) ** 0.5


def permutations_found(found: Mapping, tuned: Mapping, config: Mapping, key: bytes) -> dict:
    """Share of the stream's and the FFN neurons' permutation entries the attack got right,
    against the truth the key gives (a permutation-stream lock)."""
    from mvc.lock.layout import plan_layout
    from mvc.lock.transform import plan_for, shapes_of

    plan = plan_for(tuned, config, key)
    stream = float((found["match"] == torch.from_numpy(plan.stream_op.perm)).double().mean())
    hits = total = 0
    for ffn, match in zip(plan_layout(config, shapes_of(tuned)).feed_forward, found["ffn"], strict=True):
        name, axis = ffn.inputs[0]
        truth = next(op.perm for op in plan.ops[name] if op.axis == axis and hasattr(op, "perm"))
        hits += int((match == torch.from_numpy(truth)).sum())
        total += len(truth)
    return {"stream": stream, "ffn": hits / total}


def main(argv: list[str] | None = None) -> int:
    from benchmarks import lock_protection as lp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(lp.TASKS), choices=lp.TASKS)
    parser.add_argument("--methods", nargs="+", default=list(lp.METHODS), choices=list(lp.METHODS))
    args = parser.parse_args(argv)
    import json

    from safetensors.torch import save_file

    from mvc.demo.evaluate import accuracy, gain_retention
    from mvc.demo.train import Head, head_path, save_head
    from mvc.lock import load_key, lock_commit

    with tempfile.TemporaryDirectory(prefix="mvc-bench-attack-") as tmp:
        bench = lp.setup(Path(tmp), args.tasks)
        repo, root = bench.repo, bench.repo.root
        config = json.loads((root / "model" / "config.json").read_text())
        base_state = repo.load_state_dict("main", MODEL)
        rows = []
        for task, partner in bench.pairs():
            name = task.name
            repo.switch(f"{name}-locked", create=True, start=name)
            lock_commit(repo, "HEAD", bench.key, reads_hidden=["heads/*"])
            head_file = f"model/heads/{name}.safetensors"
            locked = repo.load_state_dict("HEAD", MODEL)
            shipped = repo.load_state_dict("HEAD", head_file)
            locked.update({f"head:{k}": v for k, v in shipped.items()})
            heads = [f"head:{k}" for k, v in shipped.items() if v.ndim == 2]
            recovered, found = recover(locked, base_state, config, heads)
            tuned = repo.load_state_dict(name, MODEL)
            exact = permutations_found(found, tuned, config, load_key(bench.key))
            cosine, rel = task_vector_recovery(recovered, tuned, base_state)
            scrambled, _ = task_vector_recovery(locked, tuned, base_state)
            truth = repo.load_state_dict(name, head_file)["weight"]
            head = Head(name, task.labels, recovered["head:weight"], recovered["head:bias"])
            encoder = {k: v for k, v in recovered.items() if not k.startswith("head:")}
            print(
                f"{name}: stream permutation {exact['stream']:.1%} and FFN neurons "
                f"{exact['ffn']:.1%} found exactly; recovered task vector cosine {cosine:.3f} "
                f"(locked as is: {scrambled:.3f}), relative error {rel:.3f}; head error "
                f"{float((head.weight - truth).norm() / truth.norm()):.2e}; recovered model "
                f"alone scores {accuracy(encoder, head, task):.3f} "
                f"(branch {bench.branch[name]:.3f})",
                flush=True,
            )
            repo.switch(f"{name}-recovered", create=True, start="main")
            save_file({k: v.contiguous() for k, v in encoder.items()}, str(root / MODEL))
            save_head(head, head_path(root / "model", name))
            repo.add([root / "model"])
            repo.commit(f"{name}: weights recovered from the lock without the key")
            for method in args.methods:
                merged = bench.merged(f"{name}-recovered", partner.name, method)
                kept = gain_retention(
                    bench.base[name], bench.branch[name], accuracy(merged, head, task)
                )
                partner_kept = bench.partner_kept(merged, partner)
                rows.append((name, partner.name, method, cosine, kept, partner_kept))
                print(f"  + {partner.name}, {method}: locked task kept {kept:.0%}, partner "
                      f"{partner_kept:.0%}", flush=True)
    print("\n| locked task | merged with | method | task vector cosine | locked task's gain "
          "kept after the attack | partner's gain kept |")
    print("|---|---|---|---|---|---|")
    for name, partner, method, cosine, kept, partner_kept in rows:
        print(f"| {name} | {partner} | {method} | {cosine:.3f} | {kept:.0%} | {partner_kept:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
