"""Output inside a Jupyter kernel: the stage lines and a live progress line in one output area that updates."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from pipeline.console import Console


def in_kernel() -> bool:
    """True inside a Jupyter kernel (not a terminal IPython, not a script); never imports IPython itself."""
    if "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def console() -> Console:
    """The console a Pipeline writes to by default: a notebook's output area in a kernel, else the terminal."""
    return NotebookConsole() if in_kernel() else Console()


class NotebookConsole(Console):
    """The run's lines in one display that updates in place, its last line the progress of the current stage."""

    def __init__(self, *, quiet: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(quiet=quiet)
        self.clock = clock
        self.colour = False
        self.interactive = True
        self.lines: list[str] = []
        self.status = ""
        self.handle: Any = None
        self.shown_at = -1.0

    def _show(self) -> None:
        from IPython.display import Pretty, display

        text = "\n".join(self.lines + ([self.status] if self.status else []))
        if self.handle is None:
            self.handle = display(Pretty(text), display_id=True)
        else:
            self.handle.update(Pretty(text))

    def print(self, text: str = "") -> None:
        if not self.quiet:
            self.always(text)

    def always(self, text: str) -> None:
        self.lines.append(text)
        self._show()

    def progress(self, text: str) -> None:
        """The current stage's progress, at most ten updates a second (a deploy polls far more often)."""
        if text[:120] == self.status:
            return
        self.status = text[:120]
        now = self.clock()
        if now - self.shown_at >= 0.1:
            self.shown_at = now
            self._show()

    def clear_progress(self) -> None:
        if self.status:
            self.status = ""
            self._show()
