"""Which folders of a commit or work tree are PEFT LoRA adapters, described in one line.

`mvc status`, `log` and `show` use these to say that changed paths are an adapter, with
its rank and targets; only the small ``adapter_config.json`` is read, never the weights.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mvc.errors import MvcError
from mvc.formats.peft import LoraConfig, adapter_folders, config_path

if TYPE_CHECKING:
    from mvc.repo.repository import Repo


def _describe(blob: bytes, path: str) -> str:
    try:
        return LoraConfig.parse(blob, path).describe()
    except MvcError as err:
        return f"adapter not understood: {err.message}"


def _folder_of(path: str, folders: Iterable[str]) -> str | None:
    """The deepest adapter folder containing ``path``."""
    best = None
    for folder in folders:
        if (not folder or path == folder or path.startswith(folder + "/")) and (
            best is None or len(folder) > len(best)
        ):
            best = folder
    return best


def adapters_for_paths(repo: Repo, rev: str | None, paths: Iterable[str]) -> dict[str, str]:
    """folder -> description for each adapter that one of ``paths`` belongs to.

    ``rev`` None reads the work tree (for `status`), else the commit's tree.
    """
    paths = list(paths)
    if rev is None:
        candidates = {posixpath.dirname(p) for p in paths}
        for folder in list(candidates):
            while folder:
                folder = posixpath.dirname(folder)
                candidates.add(folder)
        folders = [f for f in candidates if (repo.root / config_path(f)).is_file()]
    else:
        files = repo.tree_files(rev)
        folders = adapter_folders(files)
    result = {}
    for path in paths:
        folder = _folder_of(path, folders)
        if folder is None or folder in result:
            continue
        config = config_path(folder)
        if rev is None:
            blob = (repo.root / config).read_bytes()
        else:
            blob = repo.read_blob(files[config][0])
        result[folder] = _describe(blob, config)
    return result
