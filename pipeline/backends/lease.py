"""A blob lease held for the whole of a run: renewed by a background thread, checked before every write."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any

from pipeline.backends.azure_client import code_of, errors
from pipeline.backends.base import Holder
from pipeline.errors import StateError


class BlobLock:
    """A lease on the spec's lock blob. Losing it (broken by force-unlock, or expired and taken by another
    run) is noticed by the next renewal or write, which then refuses: a run never writes without the lock."""

    def __init__(
        self, lease: Any, holder: Holder, *, seconds: int, where: str, on_release: Callable[[Any], None] | None = None
    ) -> None:
        self.lease = lease
        self.holder = holder
        self.where = where
        self.every = max(1.0, seconds / 3)  # two renewals may fail in a row before the lease can expire
        self._on_release = on_release
        self._mutex = threading.Lock()  # one lease operation at a time, from either thread
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pipeline-state-lease", daemon=True)
        # Ctrl-C and SIGTERM must reach the main thread only: a thread inherits the signal mask it starts
        # with, and deploy holds both signals on the main thread while it records a started service
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._renew()
            except StateError:
                if self._lost:
                    return
                # a network blip: the next renewal tries again, and a write checks first anyway
            except Exception:  # noqa: BLE001  never let the renewal thread die with a traceback on stderr
                continue

    def _renew(self) -> None:
        from azure.core.exceptions import HttpResponseError

        with self._mutex:
            if self._lost:
                raise StateError(self._lost)
            with errors("renew the lease on", self.where):
                try:
                    self.lease.renew()
                except HttpResponseError as exc:
                    if exc.status_code not in (409, 412):
                        raise
                    self._lost = (
                        f"the lock on {self.where} was lost ({code_of(exc) or exc.status_code}: broken "
                        f"by force-unlock, or expired and taken by another run); nothing more is written"
                    )
            if self._lost:
                raise StateError(self._lost)

    def check(self) -> None:
        """Renew now: a write follows only while the lease is provably ours."""
        self._renew()

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._mutex:
            if self._lost:
                return
            self._lost = "the lock was released"
            with contextlib.suppress(Exception):  # an expired or broken lease is already free
                if self._on_release:
                    self._on_release(self.lease)
                self.lease.release()
