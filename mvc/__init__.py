"""mvc: Git for model weights with real merge semantics.

The Python API is ``mvc.Repo``; it is imported lazily so that ``import mvc`` stays cheap
(the CLI's fast paths never import torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mvc.repo import Repo as Repo


def __getattr__(name: str) -> Any:
    if name == "Repo":
        from mvc.repo import Repo as Repo

        return Repo
    raise AttributeError(name)
