"""Terminal output: colour only on a terminal (and never with NO_COLOR), quiet mode, progress lines."""

from __future__ import annotations

import os
import sys
from typing import TextIO

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "dim": "2", "bold": "1"}


class Console:
    """Where a command writes: `out` for results, `err` for diagnostics and progress."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *, quiet: bool = False) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.quiet = quiet
        self.colour = _wants_colour(self.out)
        self.interactive = _isatty(self.err) and not quiet

    def paint(self, text: str, colour: str) -> str:
        return f"\033[{_COLOURS[colour]}m{text}\033[0m" if self.colour else text

    def print(self, text: str = "") -> None:
        """A result line; suppressed by --quiet."""
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def always(self, text: str) -> None:
        """A line printed even with --quiet (failures, machine output)."""
        print(text, file=self.out, flush=True)

    def error(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def progress(self, text: str) -> None:
        """A transient status line on a terminal, overwritten by the next one; nothing elsewhere."""
        if self.interactive:
            self.err.write("\r\033[K" + text[:120])
            self.err.flush()

    def clear_progress(self) -> None:
        if self.interactive:
            self.err.write("\r\033[K")
            self.err.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _wants_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(os.environ.get("FORCE_COLOR")) or _isatty(stream)
