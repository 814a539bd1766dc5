"""The access log: one line per request, written by every worker to one file beside the service log, rotated by size.

Lines are buffered and written a batch at a time (at most every FLUSH_S, or sooner when many pile up), with
one O_APPEND write each, so workers never interleave within a line. The worker that finds the file past
its size rotates it (access.log -> access.log.1 -> ... -> access.log.3) under an flock; the others notice
that the name points to a new file and reopen it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time

log = logging.getLogger("pipeline.serve")

FLUSH_S = 0.5
FLUSH_LINES = 2000
BACKUPS = 3


class AccessLog:
    """`add()` a request, `close()` at exit; a write that fails is logged once, never raised into a request."""

    def __init__(self, path: str, max_bytes: int, backups: int = BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.lines: list[bytes] = []
        self._fd = self._open()
        self._scheduled = False
        self._second = -1
        self._stamp = b""
        self._failed = False
        self._pid = os.getpid()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def add(
        self,
        client: tuple[str, int] | None,
        method: str,
        path: str,
        status: int,
        size: int,
        seconds: float,
        request_id: bytes | None,
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # the date part changes once a second: formatted once a second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode()
        where = b"%s:%d" % (client[0].encode(), client[1]) if client else b"-"
        self.lines.append(
            b'%s.%03dZ %s "%s %s" %d %d %.3fms %s %d\n'
            % (
                self._stamp,
                int(now * 1000) % 1000,
                where,
                method.encode(),
                path.encode("utf-8", "replace"),
                status,
                size,
                seconds * 1000,
                request_id or b"-",
                self._pid,
            )
        )
        if len(self.lines) >= FLUSH_LINES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self.lines:
            return
        data, self.lines = b"".join(self.lines), []
        try:
            self._rotate_if_due()
            os.write(self._fd, data)
        except OSError as exc:
            if not self._failed:  # a full disk must not fill the service log as well
                self._failed = True
                log.error("worker %d: cannot write the access log %s: %s", os.getpid(), self.path, exc)

    def _rotate_if_due(self) -> None:
        mine = os.fstat(self._fd)
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            named = None
        if named is None or named.st_ino != mine.st_ino:  # another worker rotated it: follow the name
            self._reopen()
            return
        if mine.st_size < self.max_bytes:
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # every worker's fd is the same file: one rotates, the rest wait
        try:
            named = os.stat(self.path)
            if named.st_ino == mine.st_ino:  # nobody rotated it while this worker waited
                for n in range(self.backups - 1, 0, -1):
                    if os.path.exists(f"{self.path}.{n}"):
                        os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
                os.replace(self.path, f"{self.path}.1")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._reopen()

    def _reopen(self) -> None:
        old, self._fd = self._fd, self._open()
        os.close(old)

    def close(self) -> None:
        self.flush()
        os.close(self._fd)
