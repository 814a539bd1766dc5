"""The local target's processes: start a scoring host detached, wait for it, find it by its folder, stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import TargetError

DEPLOY_MARKER = "--- deploy"


def start(config_file: Path, log_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """`python -m pipeline.serve CONFIG` in a session of its own (it outlives `run`), its output in the log.

    Call it inside interrupts.held(), with the result assigned there: Ctrl-C or SIGTERM during the start
    must find the process known to the caller, who stops it.
    """
    with open(log_file, "ab") as log:
        log.write(f"{DEPLOY_MARKER} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ---\n".encode())
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve", str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            env=_child_env(),
        )


def wait_for(
    process: subprocess.Popen[bytes],
    ready_file: Path,
    log_file: Path,
    timeout_s: float,
    done: Callable[[dict[str, Any]], bool],
    progress: Callable[[str], None],
    what: str,
) -> dict[str, Any]:
    """The host's ready file once `done(ready)` holds; the log's tail if the host dies or the time runs out."""
    deadline = time.monotonic() + timeout_s
    start_at = time.monotonic()
    while True:
        try:
            ready = json.loads(ready_file.read_text())
            if done(ready):
                return ready
        except (OSError, ValueError):
            pass  # not written yet, or being written; the next poll sees it whole
        code = process.poll()
        if code is not None:
            raise TargetError(
                f"the service exited with code {code} before it was {what}; "
                f"last lines of {log_file}:\n{indent(this_deploy(log_file, 20))}"
            )
        if time.monotonic() > deadline:
            raise TargetError(
                f"the service was not {what} after {timeout_s:g} s (deploy.ready_timeout_s); "
                f"last lines of {log_file}:\n{indent(this_deploy(log_file, 20))}"
            )
        progress(f"deploy: waiting for the service to be {what} ({time.monotonic() - start_at:.1f} s)")
        time.sleep(0.05)


def stop_group(pid: int, *, grace_s: float = 10.0) -> str:
    """SIGTERM the host's process group, wait, then SIGKILL what is left; one line saying how it went."""
    signal_group(pid, signal.SIGTERM)
    if wait_gone(pid, grace_s):
        return f"stopped service process {pid}"
    signal_group(pid, signal.SIGKILL)
    wait_gone(pid, 5.0)
    return f"stopped service process {pid} (forcefully, after {grace_s:g} s)"


def hosts_under(folder: Path) -> list[int]:
    """Every scoring host running from a config inside `folder`: found by its command line, whatever the state says.

    A `run` killed at any instant (even by SIGKILL) leaves its host findable here, so `run` and `delete`
    can always stop it.
    """
    prefix = (str(folder.resolve()) + os.sep).encode()
    found = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:  # no /proc: nothing to find beyond the record
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pipeline.serve" in argv and any(arg.startswith(prefix) for arg in argv) and alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def is_our_process(pid: int, config: str) -> bool:
    """True when `pid` runs and is our host for this config (a reused pid is not our service)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid
    if not alive(pid):
        return False  # a zombie has exited; only its parent has not reaped it yet
    return b"pipeline.serve" in cmdline and config.encode() in cmdline


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            if done:
                return True
        except ChildProcessError:
            pass
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def this_deploy(path: Path, lines: int) -> str:
    """The tail of the log written since the last deploy marker: earlier deploys' lines only mislead."""
    text = tail_file(path, 2000)
    marker = text.rfind(DEPLOY_MARKER)
    if marker >= 0:
        text = text[text.index("\n", marker) + 1 :] if "\n" in text[marker:] else ""
    return "\n".join(text.splitlines()[-lines:])


def tail_file(path: Path, lines: int) -> str:
    """The last `lines` lines of a log file, read from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:]) if lines > 0 else ""


def indent(text: str) -> str:
    return "\n".join("  | " + line for line in text.splitlines()) or "  | (the log is empty)"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # the host must import this very pipeline package, even from a source checkout that is not installed
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
