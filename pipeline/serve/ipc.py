"""How the supervisor and its workers meet: environment names, the ready pipe's lines, the shared port."""

from __future__ import annotations

import os
import socket

# The supervisor hands each worker the config (as JSON), the port and a pipe to report on.
CONFIG_ENV = "PIPELINE_SERVE_CONFIG"
PORT_ENV = "PIPELINE_SERVE_PORT"
STAGING_PORT_ENV = "PIPELINE_SERVE_STAGING_PORT"  # set while the version is staged: serve there, not on PORT
READY_FD_ENV = "PIPELINE_SERVE_READY_FD"
SUPERVISOR_ENV = "PIPELINE_SERVE_SUPERVISOR"


def bind(host: str, port: int) -> socket.socket:
    """A socket in the port's SO_REUSEPORT group: each worker listens on its own, so the kernel
    spreads connections over them evenly instead of one worker taking nearly all (as with one shared socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def join_port(host: str, port: int) -> socket.socket:
    """A reservation in the SO_REUSEPORT group of a port our previous version holds, for a rolling update."""
    return bind(host, port)


def claim_port(host: str, port: int) -> socket.socket:
    """The service's port, held (bound, never listening) until the service stops.

    A plain bind comes first: SO_REUSEPORT alone would let a second service on a fixed port
    quietly share the first one's connections instead of failing with "address in use".
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # old TIME_WAIT connections are no owner
        probe.bind((host, port))
        port = probe.getsockname()[1]
    return bind(host, port)


def report(fd: int, kind: str, detail: str = "") -> None:
    """`ready PID`, `live PID` or `failed PID reason`: one short write, atomic on a pipe: workers never interleave."""
    line = f"{kind} {os.getpid()} {detail}".replace("\n", " ").strip()
    os.write(fd, (line[:500] + "\n").encode())


def die_with_parent(supervisor_pid: int) -> bool:
    """Ask Linux for SIGTERM when the supervisor dies (even by SIGKILL), so no worker is orphaned
    holding the port; False if it is already gone.  Done here, not in a preexec_fn (unsafe with threads)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops workers
        pass
    return os.getppid() == supervisor_pid  # checked after prctl: a parent that died before it is caught here
