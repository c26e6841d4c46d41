"""A progress bar on stderr for transfers, silent when stderr is not a terminal or -q."""

from __future__ import annotations

import sys
import threading
from types import TracebackType

import click


class Progress:
    """Counts objects and bytes; thread-safe, so pool workers can report directly."""

    def __init__(self, label: str, total: int, quiet: bool = False) -> None:
        self.label = label
        self.total = total
        self._lock = threading.Lock()
        self.objects = 0
        self.bytes = 0
        show = not quiet and total > 0 and sys.stderr.isatty()
        self._bar = (
            click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
            if show
            else None
        )

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.objects += 1
            self.bytes += nbytes
            if self._bar is not None:
                self._bar.update(1)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
