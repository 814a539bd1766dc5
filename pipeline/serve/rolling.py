"""A worker's part in a rolling update: join the service's port when told, or drain and leave it.

SIGUSR1: a staged worker (serving only on its version's staging port, where it was tested alone) starts
listening on the service's port, in the SO_REUSEPORT group beside the version it replaces, and stops
listening on the staging port. SIGUSR2: a newer version took over; stop listening, answer what is in
flight and what arrives on open connections with `Connection: close` (so clients reconnect, to the new
version), and exit once no connection is left. Idle keep-alive connections close at their usual timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Any

import uvicorn

from pipeline.serve import app as app_module
from pipeline.serve.ipc import report

log = logging.getLogger("pipeline.serve")

# The longest a draining worker waits for idle keep-alive connections to close by themselves.
DRAIN_IDLE_S = 5.0
# Signals that come before the event loop runs (right after the ready report) wait here.
_early: set[int] = set()


def hold_early_signals() -> None:
    """Until the loop installs its handlers, SIGUSR1/SIGUSR2 are remembered instead of killing the worker."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda signum, frame: _early.add(signum))


def _trim() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass


class RollingServer(uvicorn.Server):
    """uvicorn's server with the two moves of a rolling update, handing freed memory back when it goes quiet."""

    def __init__(
        self, service_socket: socket.socket, ready_fd: int, request_timeout_s: float, config: uvicorn.Config
    ) -> None:
        super().__init__(config)
        self.service_socket = service_socket
        self.ready_fd = ready_fd
        self.request_timeout_s = request_timeout_s
        self.on_service_port = False
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()  # held, so the loop does not lose them half-way
        self._served_at_tick = self._served_at_trim = 0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.on_service_port = sockets is not None and self.service_socket in sockets
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._spawn, self.go_live)
        loop.add_signal_handler(signal.SIGUSR2, self._spawn, self.drain)
        if signal.SIGUSR1 in _early:
            self._spawn(self.go_live)
        if signal.SIGUSR2 in _early:
            self._spawn(self.drain)

    async def on_tick(self, counter: int) -> bool:
        # Once a second: after a second with no request that followed busy ones, hand the memory that
        # parsing freed back to the system (glibc keeps it otherwise, and the memory limit counts it).
        if counter % 10 == 0:
            served = self.server_state.total_requests
            if served == self._served_at_tick and served != self._served_at_trim:
                self._served_at_trim = served
                _trim()
            self._served_at_tick = served
        return bool(await super().on_tick(counter))

    def _spawn(self, step: Any) -> None:
        task = asyncio.get_running_loop().create_task(step())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _protocol(self) -> asyncio.Protocol:
        # what uvicorn's own startup() builds for each connection
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol

    async def go_live(self) -> None:
        if self.on_service_port or self.draining:
            return
        loop = asyncio.get_running_loop()
        staging = list(self.servers)
        self.servers.append(
            await loop.create_server(self._protocol, sock=self.service_socket, backlog=self.config.backlog)
        )
        self.on_service_port = True
        for server in staging:
            server.close()  # the staging port was for testing this version alone
        log.info("worker %d: serving on the service's port", os.getpid())
        report(self.ready_fd, "live")

    async def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        for server in self.servers:
            server.close()  # stop accepting: new connections go to the version that took over
        app_module.closing = True  # every answer from now on says Connection: close
        loop = asyncio.get_running_loop()
        # Idle keep-alive connections close at their timeout, but a version is retired within DRAIN_IDLE_S of
        # it (pipeline.targets.local waits that long): whatever is still open then is closed on exit.
        idle_s = min(self.config.timeout_keep_alive, DRAIN_IDLE_S)
        deadline = loop.time() + idle_s + self.request_timeout_s + 1
        while self.server_state.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        left = len(self.server_state.connections)
        log.info("worker %d: drained%s", os.getpid(), f"; closing {left} idle connection(s)" if left else "")
        self.should_exit = True
