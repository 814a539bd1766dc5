"""Slow and abusive clients: header and body deadlines, bounded headers, and a cap on open connections per worker.

uvicorn's httptools protocol times out only an idle keep-alive connection, and only once it has answered a
request on it: a connection that never sends a byte, sends its headers a byte at a time, or stops half-way
through its body is held for ever, and enough of them take every file descriptor the worker has. This
subclass adds what is missing with one deadline per connection, checked by one sweep per worker a few
times a second (no timer per request), and, at the cap, closes the connection that has been idle longest
(a new client's request is then served), else the one that has been sending its body longest, and only
when every connection has a request in the app answers the newcomer 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pipeline.serve.app import Direct

if TYPE_CHECKING:
    from pipeline.serve.app import ScoringApp

log = logging.getLogger("pipeline.serve")

# The request line and headers together; Azure's front ends refuse far less (16-32 KiB) with 431 too.
MAX_HEADER_BYTES = 64 * 1024
# What is done to clients is counted, logged and reported to the supervisor at most this often.
REPORT_S = 1.0
# The sweep that checks deadlines runs at least this often (more often for shorter timeouts).
SWEEP_S = 0.25
# What each counted kind means, for the log line (the events file keeps the kinds as they are).
DESCRIBE = {
    "header_timeouts": "connection(s) closed: no complete request headers within {header}",
    "body_timeouts": "connection(s) closed: the body did not arrive within {body}",
    "headers_too_large": f"request(s) refused with 431: headers over {MAX_HEADER_BYTES} bytes",
    "idle_closed": "idle connection(s) closed to admit new ones at the cap of {cap} open",
    "slow_bodies_closed": "connection(s) still sending a body closed to admit new ones at the cap of {cap} open",
    "connections_refused": "connection(s) refused with 503: {cap} open, none of them idle or receiving",
}


def _raw(status: bytes, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    ) + body


class Guard:
    """One per worker: the limits, the open and idle connections, and the counts of what was done."""

    def __init__(
        self,
        *,
        header_timeout_s: float,
        body_timeout_s: float,
        max_connections: int,
        report: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.report = report
        # The app that serves POST /score in the protocol's callbacks (pipeline.serve.app.Direct), if any.
        self.direct: ScoringApp | None = None
        self.open: set[GuardedProtocol] = set()
        # Connections with no request in the app (new, sending headers, or idle between requests), in the
        # order they became so: at the cap, the first is the one to close.
        self.idle: dict[GuardedProtocol, None] = {}
        # Connections sending a request's body, in the order they started: when none is idle at the cap,
        # the first is closed (the app has nothing of theirs yet).
        self.receiving: dict[GuardedProtocol, None] = {}
        self.counts: Counter[str] = Counter()
        self.sweep_s = min(SWEEP_S, header_timeout_s / 4, body_timeout_s / 4)
        self._sweeping = False
        self._reporting = False
        self.header_timeout = _raw(
            b"408 Request Timeout", f"request headers not received within {header_timeout_s:g} s"
        )
        self.body_timeout = _raw(b"408 Request Timeout", f"request body not received within {body_timeout_s:g} s")
        self.too_large = _raw(
            b"431 Request Header Fields Too Large", f"request line and headers must not exceed {MAX_HEADER_BYTES} bytes"
        )
        self.refused = _raw(
            b"503 Service Unavailable", f"this worker holds {max_connections} open connections, all busy; retry"
        )
        self.evicted = _raw(
            b"503 Service Unavailable",
            f"this worker holds {max_connections} open connections; "
            "this one had been sending its body the longest and was closed for a new one; retry",
        )

    def protocol(self) -> type[GuardedProtocol]:
        """The protocol class for uvicorn.Config(http=...), bound to this guard."""
        return type("GuardedProtocol", (GuardedProtocol,), {"guard": self})

    def admit(self, newcomer: GuardedProtocol) -> bool:
        """Make room for one more connection: close the longest-idle one; False when every one is busy."""
        if len(self.open) < self.max_connections:
            return True
        victim = next(iter(self.idle), None)
        if victim is not None:
            del self.idle[victim]
            self.count("idle_closed")
        else:  # none idle: the one that has been sending its body longest (a slow upload, or an attack)
            victim = next(iter(self.receiving), None)
            if victim is None:
                return False
            del self.receiving[victim]
            victim.transport.write(self.evicted)
            self.count("slow_bodies_closed")
        self.open.discard(victim)  # its fd closes on the loop's next pass; it no longer counts
        victim.deadline = None
        victim.transport.close()
        return True

    def count(self, kind: str) -> None:
        self.counts[kind] += 1
        if not self._reporting:
            self._reporting = True
            asyncio.get_running_loop().call_later(REPORT_S, self._flush)

    def _flush(self) -> None:
        counts, self.counts, self._reporting = dict(self.counts), Counter(), False
        words = {
            "header": f"{self.header_timeout_s:g} s",
            "body": f"{self.body_timeout_s:g} s",
            "cap": self.max_connections,
        }
        log.warning(
            "worker %d: %s",
            os.getpid(),
            "; ".join(f"{n} {DESCRIBE.get(kind, kind).format(**words)}" for kind, n in sorted(counts.items())),
        )
        if self.report is not None:
            self.report(counts)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(self.sweep_s, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for protocol in [p for p in self.open if p.deadline is not None and p.deadline <= now]:
            protocol.deadline_passed(now)
        if self.open:
            loop.call_later(self.sweep_s, self._sweep, loop)
        else:
            self._sweeping = False


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for the headers and the body, bounded headers and the cap.

    phase: "head" from the connection's start (or a keep-alive request's first byte) to the end of its
    headers; "body" until the body is in; "app" while the app answers; "idle" between requests, where
    uvicorn's own keep-alive timeout applies.
    """

    guard: ClassVar[Guard]
    deadline: float | None = None
    phase = "head"
    head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        if not guard.admit(self):
            guard.count("connections_refused")
            self.transport.write(guard.refused)
            self.transport.close()
            return
        guard.open.add(self)
        guard.idle[self] = None
        self.deadline = self.loop.time() + guard.header_timeout_s
        guard.watch(self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self.guard
        guard.open.discard(self)
        guard.idle.pop(self, None)
        guard.receiving.pop(self, None)
        self.deadline = None
        super().connection_lost(exc)
        if type(self.cycle) is Direct and guard.direct is not None:
            guard.direct.abandon(self.cycle)  # its body was being read: the batcher waits for it no longer

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.phase == "head":  # still no complete headers after this chunk: count it against the bound
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self.guard.count("headers_too_large")
                self._close_with(self.guard.too_large)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.phase != "head":  # a keep-alive request: its headers' deadline runs from its first byte
            self.phase, self.head_bytes = "head", 0
            self.deadline = self.loop.time() + self.guard.header_timeout_s

    def on_headers_complete(self) -> None:
        guard = self.guard
        guard.idle.pop(self, None)
        guard.receiving[self] = None
        self.phase = "body"
        self.deadline = self.loop.time() + guard.body_timeout_s
        direct = guard.direct
        if direct is not None and (self.cycle is None or self.cycle.response_complete) and not self.pipeline:
            cycle = direct.begin(self)  # None: the ASGI path serves it (and any request behind it waits its turn)
            if cycle is not None:
                self.cycle = cycle  # type: ignore[assignment]  # what the protocol reads of a request's cycle
                return
        super().on_headers_complete()
        if self.cycle is not None and self.scope["method"] != "HEAD":  # uvicorn writes no body for HEAD
            self.cycle.transport = OneWrite(self.transport)  # type: ignore[assignment]  # what the cycle uses of one

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is Direct:
            cycle.chunks.append(body)  # within the length begin() allowed: the parser counts it out
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not Direct:
            super().on_message_complete()
        self.guard.receiving.pop(self, None)
        self.phase, self.deadline = "app", None
        if type(cycle) is Direct and self.guard.direct is not None:
            self.guard.direct.finish(self, cycle)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn armed its keep-alive timer: nothing pipelined is waiting, the connection is idle
        if self.phase == "app" and self.timeout_keep_alive_task is not None and self in self.guard.open:
            self.phase = "idle"
            self.guard.idle[self] = None  # last in line to be closed at the cap

    def deadline_passed(self, now: float) -> None:
        if self.transport.is_closing():
            self.deadline = None
            return
        if self.phase == "body" and self.flow.read_paused:
            # Not the client's delay: this worker stopped reading (a pipelined request, or the body waits
            # for its turn to be parsed). The client's time starts again when reading does.
            self.deadline = now + self.guard.body_timeout_s
            return
        if self.phase == "head":
            self.guard.count("header_timeouts")
            # a connection that never sent a byte is closed without a word, like an idle keep-alive one
            self._close_with(self.guard.header_timeout if self.head_bytes else b"")
        else:
            self.guard.count("body_timeouts")
            self._close_with(self.guard.body_timeout)

    def _close_with(self, answer: bytes) -> None:
        self.deadline = None
        self.guard.idle.pop(self, None)
        self.guard.receiving.pop(self, None)
        if answer and (self.cycle is None or self.cycle.response_complete or not self.cycle.response_started):
            self.transport.write(answer)
        self.transport.close()


class OneWrite:
    """The transport as a request's cycle sees it: the status line and headers go out with the body, in one write.

    uvicorn writes them separately: two send() calls per answer, each waking the client, where one does.
    The first write of a response is held until the next (its body, or a close); order is never changed.
    Not used for HEAD requests, the one answer uvicorn sends without a body write.
    """

    __slots__ = ("first", "held", "transport")  # one per request: a new cycle each

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.first = True
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.first:
            self.first, self.held = False, data
            return
        if self.held is not None:
            data, self.held = self.held + data, None
        self.transport.write(data)

    def close(self) -> None:
        if self.held is not None:
            self.transport.write(self.held)
            self.held = None
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


def nofile_limit() -> int:
    """Raise this process's open-file limit to its hard limit; the soft limit it then has."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(wanted: int, nofile: int, reserve: int = 128) -> int:
    """The cap a worker can keep: below its open-file limit, with room for the files a worker needs besides."""
    return max(1, min(wanted, nofile - reserve))
