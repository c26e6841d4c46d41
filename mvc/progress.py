"""Progress reporting shared by every layer (outside the layer stack, like mvc.errors).

Library calls take a `Progress`; the default reports nothing, so the Python API stays
quiet. The CLI passes a `BarProgress` that draws on stderr only when it is a terminal and
`-q` was not given. Transfers, whose pool workers finish objects concurrently, count
through a `Tally` that also feeds a `Progress`.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Any


class Progress:
    """Receives how much of a long operation is done. This base class ignores it all."""

    def start(self, label: str, total: int) -> None:
        """A new phase of `total` units (bytes, objects, tensors) begins."""

    def advance(self, amount: int = 1, item: str = "") -> None:
        """`amount` more units are done; `item` names what just finished."""

    def finish(self) -> None:
        """The current phase is over."""


class BarProgress(Progress):
    """A click progress bar on stderr, one per phase; silent when stderr is not a TTY."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None

    def start(self, label: str, total: int) -> None:
        self.finish()
        if not self.enabled or total <= 0:
            return
        import click

        self._bar = click.progressbar(
            length=total,
            label=label,
            file=sys.stderr,
            show_pos=False,
            show_percent=True,
            show_eta=True,
            item_show_func=lambda item: item,
        )
        self._bar.__enter__()

    def advance(self, amount: int = 1, item: str = "") -> None:
        if self._bar is not None:
            self._bar.update(amount, item[-40:] if item else None)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


class Tally:
    """Objects and bytes of one transfer phase, counted from many threads.

    The counts feed the transfer report; each object also advances `progress` by one, so
    a bar counts objects whatever their sizes.
    """

    def __init__(self, progress: Progress, label: str, total: int) -> None:
        self.progress = progress
        self.label = label
        self.total = total
        self.objects = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def __enter__(self) -> Tally:
        self.progress.start(self.label, self.total)
        return self

    def add(self, nbytes: int) -> None:
        """One more object of `nbytes` arrived or left."""
        with self._lock:
            self.objects += 1
            self.bytes += nbytes
            self.progress.advance()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.finish()
