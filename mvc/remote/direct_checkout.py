"""A clone's checkout, written while its objects arrive.

A clone verifies every tensor object by decoding it as it stores it (`receive_tensors`);
a checkout afterwards would decode every one again to write the model files. Instead, the
clone opens the checked-out commit's model files in the repository's scratch folder first
and each verified chunk goes straight to its offset there (`RowWriter`, as a merge writes
its output), so each object is decoded once in all. Chunks that were not decoded in this
pass (already stored by an interrupted clone) are decoded from the store at the end, on
every core, by the checkout's own primitive (`mvc.repo.materialize.fill`). The files are
then renamed into the work tree as a checkout's prewritten files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from dulwich.objects import Commit, ShaFile

from mvc.formats.safetensors import RowWriter
from mvc.remote.negotiate import tree_entries
from mvc.repo import Manifest, Repo
from mvc.repo.materialize import Placement, fill, placements
from mvc.repo.worktree import is_model_path


class CheckoutWriter:
    """The model files of one commit, filled chunk by chunk from any thread."""

    def __init__(self, repo: Repo, commit: str, get: Callable[[str], ShaFile | None]) -> None:
        self.repo = repo
        self.files: dict[str, Path] = {}
        self._writers: list[RowWriter] = []
        self._slots: dict[str, list[Placement]] = {}  # oid -> where it goes
        self._lock = threading.Lock()
        try:
            for path, blob in _model_blobs(commit, get):
                manifest = Manifest.from_bytes(repo.read_blob(blob), path)
                target = repo.scratch_dir() / f"clone-{len(self._writers)}.safetensors"
                target.unlink(missing_ok=True)  # left by an interrupted clone
                writer = RowWriter(target, manifest.header_raw)
                self._writers.append(writer)
                self.files[path] = target
                for oid, places in placements(writer, manifest).items():
                    self._slots.setdefault(oid, []).extend(places)
        except BaseException:
            self.discard()
            raise

    def stored(self, oid: str, decoded: memoryview) -> None:
        """Object `oid` was just verified and stored: write its bytes wherever they go."""
        with self._lock:
            slots = self._slots.pop(oid, [])
            for writer, name, first_row in slots:
                writer.write(name, first_row, decoded)

    def finish(self) -> dict[str, Path]:
        """Fill what was not written on arrival, fsync; path -> the finished file."""
        try:
            with self._lock:
                rest, self._slots = self._slots, {}
            fill(self.repo.store, rest)
            for writer in self._writers:
                writer.close()
        except BaseException:
            self.discard()
            raise
        return dict(self.files)

    def discard(self) -> None:
        for writer in self._writers:
            writer.discard()


def _model_blobs(commit: str, get: Callable[[str], ShaFile | None]) -> list[tuple[str, bytes]]:
    """(path, blob id) of every model file in `commit`'s tree."""
    top = get(commit)
    if not isinstance(top, Commit):
        return []
    return [
        (path, entry.sha)
        for path, entry in tree_entries([top.tree.decode()], get)
        if is_model_path(path) and entry.mode != 0o120000
    ]
