"""Issues 6 and 8: push and clone throughput, bytes on the wire, and their peak memory.

1. Against Git LFS, on the real MiniLM fine-tune of ``benchmarks.finetune`` (fp32): a
   two-commit history (base, then the fine-tune, both on ``main``) is pushed in two steps to
   a local remote, then cloned, by both tools in the same run:

   - mvc: ``mvc push`` to a path remote (a folder, created by the first push), then
     ``mvc clone`` of that folder;
   - Git LFS: ``git lfs track '*.safetensors'``, ``git push`` to a ``git init --bare``
     repository over a ``file://`` URL (git-lfs then stores the objects under the bare
     repository's ``lfs/objects`` through its built-in standalone file transfer), then
     ``git clone file://...`` with smudging on. The ``file://`` URL makes git copy objects
     through its transport instead of hard-linking them, as a clone from a path would.

   "Bytes on the wire" is what each step adds to the receiving side: the remote folder's
   growth for a push, the size of the clone's ``.git`` for a clone (the work tree is the
   checked-out model, the same for both). The remotes live on another filesystem
   (``/dev/shm``) than the repositories, so that git-lfs copies objects instead of
   hard-linking them (it links within one filesystem). Times are whole fresh processes. A plain
   ``git clone`` and a lazy ``mvc clone`` fetch the large files of the checked-out commit
   only (mvc: with their delta bases); a second clone row is ``mvc clone --full`` against
   ``git clone`` + ``git lfs fetch --all``, so both hold the whole history.

2. Peak RSS and peak anonymous memory of ``mvc push`` and ``mvc clone`` of one commit of
   a synthetic BERT fp32 model at two sizes (``benchmarks.synthetic``), next to the growth
   of the model: both stream objects one at a time, so memory should not follow the model.

3. Throughput at LLM scale: a LLaMA-shaped bf16 model of about 1.1 GB in three shards
   (``benchmarks.synthetic.write_llama``), one commit, ``mvc push`` to a path remote on
   the remotes' filesystem and ``mvc clone`` of it back, in MB/s of model files, next to
   ``cp -r`` of the same files along the same two paths in the same run (the disks'
   limit for a plain copy). ``--llama-dir`` puts the model and the repositories there.

Run: ``.venv/bin/python -m benchmarks.remote [--quick] [--throughput-only] [--llama-only]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.finetune import MODEL_FILE, FineTune, base_model_dir, fine_tuned_dir
from benchmarks.measure import (
    MIB,
    Run,
    print_scaling_table,
    print_table,
    ratio,
    run,
    tool,
    tree_size,
)
from benchmarks.storage import GIT_ENV
from benchmarks.synthetic import LlamaShape, shape_for, write_llama, write_model

FILES = (MODEL_FILE, "config.json")
LFS_ENV = {**GIT_ENV, "GIT_LFS_SKIP_SMUDGE": "0"}


@dataclass(frozen=True)
class Step:
    """One transfer: bytes that arrived on the receiving side and how long it took."""

    nbytes: int
    run: Run

    @property
    def mib_per_s(self) -> float:
        return self.nbytes / MIB / self.run.seconds


@dataclass(frozen=True)
class Flow:
    """A tool's transfers of the same history.

    ``clone`` is what ``clone`` alone fetches: the checked-out version's large files (for
    mvc with the delta bases they are stored against). ``clone_history`` is ``mvc clone
    --full``, and adds ``git lfs fetch --all`` for Git LFS, so both sides hold the whole
    history.
    """

    push_base: Step
    push_ft: Step
    clone: Step
    clone_history: Step


def _copy_model(src: Path, repo: Path) -> None:
    for name in FILES:
        shutil.copyfile(src / name, repo / name)


def _mvc_flow(work: Path, remotes: Path, base: Path, ft: Path) -> Flow:
    """Commit base, push, commit the fine-tune, push again, clone; measure the transfers."""
    mvc = tool("mvc")
    repo, remote, clone = work / "mvc-repo", remotes / "mvc-remote", work / "mvc-clone"
    repo.mkdir()
    run([mvc, "init"], cwd=repo, env=GIT_ENV)
    run([mvc, "remote", "add", "origin", str(remote)], cwd=repo, env=GIT_ENV)
    steps = []
    for src, message in ((base, "base"), (ft, "fine-tune")):
        _copy_model(src, repo)
        run([mvc, "add", *FILES], cwd=repo, env=GIT_ENV)
        run([mvc, "commit", "-m", message], cwd=repo, env=GIT_ENV)
        before = tree_size(remote) if remote.exists() else 0
        pushed = run([mvc, "push", "-q", "origin", "main"], cwd=repo, env=GIT_ENV)
        steps.append(Step(tree_size(remote) - before, pushed))
    cloned = run([mvc, "clone", "-q", str(remote), str(clone)], cwd=work, env=GIT_ENV)
    _check_same(clone, ft)
    full = work / "mvc-clone-full"
    cloned_full = run([mvc, "clone", "-q", "--full", str(remote), str(full)], cwd=work, env=GIT_ENV)
    _check_same(full, ft)
    return Flow(
        steps[0],
        steps[1],
        Step(tree_size(clone / ".git"), cloned),
        Step(tree_size(full / ".git"), cloned_full),
    )


def _lfs_flow(work: Path, remotes: Path, base: Path, ft: Path) -> Flow:
    """The same history with Git LFS and a local bare repository."""
    git = tool("git")
    repo, bare, clone = work / "lfs-repo", remotes / "lfs-remote.git", work / "lfs-clone"
    repo.mkdir()
    run([git, "init", "-q", "--bare", "-b", "main", str(bare)], env=GIT_ENV)
    for cmd in (
        (git, "init", "-q", "-b", "main"),
        (git, "lfs", "install", "--local"),
        (git, "lfs", "track", "*.safetensors"),
        (git, "remote", "add", "origin", bare.as_uri()),
    ):
        run(cmd, cwd=repo, env=GIT_ENV)
    steps = []
    for src, message in ((base, "base"), (ft, "fine-tune")):
        _copy_model(src, repo)
        run([git, "add", ".gitattributes", *FILES], cwd=repo, env=GIT_ENV)
        run([git, "commit", "-q", "-m", message], cwd=repo, env=GIT_ENV)
        before = tree_size(bare)
        pushed = run([git, "push", "-q", "origin", "main"], cwd=repo, env=LFS_ENV)
        steps.append(Step(tree_size(bare) - before, pushed))
    lfs_objects = bare / "lfs" / "objects"
    if tree_size(lfs_objects) < (ft / MODEL_FILE).stat().st_size:
        raise RuntimeError(f"git-lfs did not store the model under {lfs_objects}")
    # ``git lfs install --local`` configured the filter in ``repo`` only; ``-c`` sets it in the
    # clone before its checkout, as a user's ``git lfs install`` would have globally.
    lfs_filter = [
        "-c",
        "filter.lfs.process=git-lfs filter-process",
        "-c",
        "filter.lfs.required=true",
    ]
    clone_cmd = [git, "clone", "-q", *lfs_filter, bare.as_uri(), str(clone)]
    cloned = run(clone_cmd, cwd=work, env=LFS_ENV)
    _check_same(clone, ft)
    head_only = Step(tree_size(clone / ".git"), cloned)
    fetched = run([git, "lfs", "fetch", "--all", "origin"], cwd=clone, env=LFS_ENV)
    history = Run(
        seconds=cloned.seconds + fetched.seconds,
        peak_rss_mib=max(cloned.peak_rss_mib, fetched.peak_rss_mib),
        peak_anon_mib=max(cloned.peak_anon_mib, fetched.peak_anon_mib),
        output=cloned.output + fetched.output,
    )
    return Flow(steps[0], steps[1], head_only, Step(tree_size(clone / ".git"), history))


def _check_same(clone: Path, src: Path) -> None:
    """A clone that did not check out the fine-tune byte for byte would make the figures moot."""
    for name in FILES:
        if (clone / name).read_bytes() != (src / name).read_bytes():
            raise RuntimeError(f"{clone / name} differs from {src / name}")


def _throughput(work: Path, remotes: Path) -> None:
    base, ft = base_model_dir(), fine_tuned_dir(FineTune())
    size = (ft / MODEL_FILE).stat().st_size
    mvc, lfs = _mvc_flow(work, remotes, base, ft), _lfs_flow(work, remotes, base, ft)
    rows = []
    # Last two fields: model versions each side delivered (a plain git clone: one).
    for label, ours, peer, ours_versions, peer_versions in (
        ("push base commit", mvc.push_base, lfs.push_base, 1, 1),
        ("push fine-tune commit", mvc.push_ft, lfs.push_ft, 1, 1),
        ("clone (mvc: lazy, the default)", mvc.clone, lfs.clone, 1, 1),
        (
            "clone, full history (mvc: --full; LFS: + lfs fetch --all)",
            mvc.clone_history,
            lfs.clone_history,
            2,
            2,
        ),
    ):
        rows.append(
            [
                label,
                f"{ours.nbytes / MIB:.1f}",
                f"{peer.nbytes / MIB:.1f}",
                ratio(ours.nbytes, peer.nbytes),
                f"{ours.run.seconds:.2f}",
                f"{peer.run.seconds:.2f}",
                ratio(ours.run.seconds, peer.run.seconds),
                f"{ours.mib_per_s:.1f}",
                f"{peer.mib_per_s:.1f}",
                f"{ours_versions * size / MIB / ours.run.seconds:.1f}",
                f"{peer_versions * size / MIB / peer.run.seconds:.1f}",
            ]
        )
    print(
        f"push/clone: MiniLM fp32 ({size / MIB:.1f} MiB) base + a real fine-tune "
        f"({FineTune().steps} AdamW steps), path remote vs git-lfs to a local bare repository"
    )
    print_table(
        "Bytes on the wire (MiB, growth of the receiving side), seconds, MiB/s "
        "(wire: bytes moved; model: model versions delivered x file size)",
        [
            "step",
            "mvc MiB",
            "LFS MiB",
            "bytes mvc/LFS",
            "mvc s",
            "LFS s",
            "time mvc/LFS",
            "mvc MiB/s (wire)",
            "LFS MiB/s (wire)",
            "mvc MiB/s (model)",
            "LFS MiB/s (model)",
        ],
        rows,
    )


def _peaks(work: Path, target_mib: int) -> tuple[float, Run, Run]:
    """Model size (MiB), ``mvc push`` and ``mvc clone`` of one commit of about ``target_mib``."""
    mvc = tool("mvc")
    shape = shape_for(target_mib * MIB)
    model = write_model(work / "model", shape, seed=3)
    repo, remote = work / "repo", work / "remote"
    repo.mkdir()
    run([mvc, "init"], cwd=repo, env=GIT_ENV)
    _copy_model(model, repo)
    shutil.rmtree(model)  # the repository's work tree holds the only copy the disk needs
    run([mvc, "add", *FILES], cwd=repo, env=GIT_ENV)
    run([mvc, "commit", "-m", "base"], cwd=repo, env=GIT_ENV)
    pushed = run([mvc, "push", "-q", str(remote), "main"], cwd=repo, env=GIT_ENV)
    shutil.rmtree(repo)
    cloned = run([mvc, "clone", "-q", str(remote), str(work / "clone")], cwd=work, env=GIT_ENV)
    return shape.nbytes / MIB, pushed, cloned


def _memory(targets: tuple[int, int]) -> None:
    measured = []
    for target in targets:
        with tempfile.TemporaryDirectory(prefix="mvc-bench-remote-") as tmp:
            measured.append(_peaks(Path(tmp), target))
    (small, s_push, s_clone), (large, l_push, l_clone) = measured
    print(
        f"\npush/clone memory: synthetic BERT fp32 models of {small:.0f} MiB and {large:.0f} MiB "
        f"(model growth x{large / small:.2f}), one commit, path remote"
    )
    print_scaling_table(
        small, large, [("mvc push", s_push, l_push), ("mvc clone", s_clone, l_clone)]
    )


LLAMA_LAYERS = 10  # TinyLlama's widths, 10 of its 22 layers: 1.14 GB of bf16


def _llama_throughput(work: Path, remotes: Path) -> None:
    """MB/s of `mvc push` and `mvc clone` of a 1 GB+ sharded bf16 model against `cp -r`."""
    mvc = tool("mvc")
    repo = write_llama(work / "repo", LlamaShape.tiny_llama(LLAMA_LAYERS), seed=5, shards=3)
    names = sorted(p.name for p in repo.iterdir())
    size = sum((repo / n).stat().st_size for n in names)
    cp_push = run(["cp", "-r", str(repo), str(remotes / "cp-remote")])
    cp_clone = run(["cp", "-r", str(remotes / "cp-remote"), str(work / "cp-clone")])
    shutil.rmtree(remotes / "cp-remote")
    run([mvc, "init"], cwd=repo, env=GIT_ENV)
    run([mvc, "add", *names], cwd=repo, env=GIT_ENV)
    run([mvc, "commit", "-m", "base"], cwd=repo, env=GIT_ENV)
    remote, clone = remotes / "mvc-remote", work / "mvc-clone"
    pushed = run([mvc, "push", "-q", str(remote), "main"], cwd=repo, env=GIT_ENV)
    wire = tree_size(remote)
    cloned = run([mvc, "clone", "-q", str(remote), str(clone)], cwd=work, env=GIT_ENV)
    for name in names:
        if (clone / name).read_bytes() != (work / "cp-clone" / name).read_bytes():
            raise RuntimeError(f"{clone / name} differs from the model")
    mb = size / 1e6
    print(
        f"\nthroughput: LLaMA-shaped bf16 model, {len(names) - 2} shards + index + config, "
        f"{mb:.0f} MB; mvc moved {wire / 1e6:.0f} MB on the wire"
    )
    print_table(
        "MB/s of model files (MB = 10^6 bytes), cp -r of the same files in the same run",
        ["step", "mvc s", "cp s", "mvc MB/s", "cp MB/s", "mvc/cp time"],
        [
            [
                label,
                f"{ours.seconds:.2f}",
                f"{peer.seconds:.2f}",
                f"{mb / ours.seconds:.0f}",
                f"{mb / peer.seconds:.0f}",
                ratio(ours.seconds, peer.seconds),
            ]
            for label, ours, peer in (
                ("push (work tree -> remote)", pushed, cp_push),
                ("clone (remote -> new folder)", cloned, cp_clone),
            )
        ],
    )


def _remote_parent() -> str | None:
    """A folder on another filesystem than the work folder, for the remotes.

    git-lfs's file transfer hard-links objects when remote and repository share a
    filesystem, which would time a link instead of a copy; across filesystems it must copy,
    as any real remote does. ``/dev/shm`` (tmpfs) when present, else the default temp dir.
    """
    shm = Path("/dev/shm")
    default = Path(tempfile.gettempdir())
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != default.stat().st_dev:
        return str(shm)
    print(
        "warning: no second filesystem for the remotes; git-lfs will hard-link objects, "
        "so its push times are too low",
        file=sys.stderr,
    )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.17 GB and 0.5 GB models")
    parser.add_argument(
        "--throughput-only", action="store_true", help="only part 1 (against Git LFS)"
    )
    parser.add_argument("--llama-only", action="store_true", help="only part 3 (1 GB+ vs cp)")
    parser.add_argument("--llama-dir", default=None, help="folder for part 3's model and repos")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="mvc-bench-remote-") as tmp,
        tempfile.TemporaryDirectory(prefix="mvc-bench-remote-", dir=_remote_parent()) as remotes,
    ):
        if not args.llama_only:
            _throughput(Path(tmp), Path(remotes))
        if not args.throughput_only:
            with tempfile.TemporaryDirectory(prefix="llama-", dir=args.llama_dir) as big:
                _llama_throughput(Path(big), Path(remotes))
    if not (args.throughput_only or args.llama_only):
        _memory((128, 512) if args.quick else (512, 2048))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
