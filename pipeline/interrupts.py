"""Ctrl-C and SIGTERM as KeyboardInterrupt, held back while a few lines that must not be cut in two run.

Blocking the signals with pthread_sigmask is not enough: the mask is per thread, and once numpy has
started its BLAS threads the kernel may hand SIGTERM to one of those, after which Python runs the
handler on the main thread at the next bytecode, mask or not. So the handler itself defers.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_held = 0
_pending = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _held:
        _pending = True  # raised when the held block ends
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """For the life of a command: SIGINT and SIGTERM (a cancelled CI job, `timeout`) both interrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread; an embedded caller keeps its own handling
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Run a block whole: an interrupt that comes during it is raised as soon as it ends."""
    global _held, _pending
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending:
            _pending = False
            raise KeyboardInterrupt
