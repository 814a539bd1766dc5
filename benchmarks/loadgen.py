"""A small HTTP/1.1 load generator for rollouts: N keep-alive connections scoring continuously.

It counts every failed request (a non-200 answer, or a connection that broke with a request on it),
never retries one, honours `Connection: close` by reconnecting, and records when each answer came and
what it said, so a test or benchmark can tell which version answered and how long the longest gap
between two answers was. Runs its own event loop in a thread: start(), then stop() for the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Figures:
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    answers: list[tuple[float, bytes]] = field(default_factory=list)  # (monotonic time, body) of every 200
    reconnects: int = 0  # connections the server closed politely (Connection: close), then opened again

    def longest_gap(self, start: float | None = None, stop: float | None = None) -> float:
        """The longest time between two successive answers, over all connections (seconds)."""
        times = sorted(t for t, _ in self.answers if (start is None or t >= start) and (stop is None or t <= stop))
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def bodies(self) -> Counter[bytes]:
        return Counter(body for _, body in self.answers)


class Load:
    """`connections` clients POSTing `body` to `uri` until stop()."""

    def __init__(
        self,
        uri: str | None,
        body: bytes,
        connections: int = 8,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.uri = uri
        self.body = body
        self.connections = connections
        self.headers = headers or {}
        self.timeout = timeout
        self.figures = Figures()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Figures:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self.figures

    def wait_for(self, answers: int, timeout: float = 30.0) -> None:
        """Block until at least `answers` requests were answered (the load is flowing)."""
        deadline = time.monotonic() + timeout
        while self.figures.ok < answers:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {self.figures.ok} answers in {timeout} s; errors: {dict(self.figures.errors)}"
                )
            time.sleep(0.01)

    async def _main(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.connections)))

    def _request(self, host: str, path: str) -> bytes:
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {host}",
            "Content-Type: application/json",
            f"Content-Length: {len(self.body)}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    async def _client(self) -> None:
        assert self.uri is not None
        parts = urlsplit(self.uri)
        host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        request = self._request(f"{host}:{port}", path)
        reader = writer = None
        while not self._stop.is_set():
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
                assert reader is not None
                writer.write(request)
                status, close, body = await asyncio.wait_for(_response(reader), self.timeout)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                self._count_failure(type(exc).__name__)
                writer = await _close(writer)
                await asyncio.sleep(0.01)  # a refused connect must not spin
                continue
            if status == 200:
                with self._lock:
                    self.figures.ok += 1
                    self.figures.answers.append((time.monotonic(), body))
            else:
                self._count_failure(f"HTTP {status}")
            if close:
                self.figures.reconnects += 1
                writer = await _close(writer)
        await _close(writer)

    def _count_failure(self, what: str) -> None:
        with self._lock:
            self.figures.failed += 1
            self.figures.errors[what] += 1


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() == "close", body


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return None
