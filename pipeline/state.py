"""Runtime state under .pipeline/<name>/: stage digests, the service record, run history, and the lock."""
from __future__ import annotations

import copy
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import StateError
from pipeline.files import atomic_write

STATE_VERSION = 1
HISTORY_LIMIT = 100


def home() -> Path:
    """The state root: $PIPELINE_HOME, else .pipeline in the working directory (like .terraform, .dvc)."""
    return Path(os.environ.get("PIPELINE_HOME") or ".pipeline").absolute()


def reports_root() -> Path:
    return Path(os.environ.get("PIPELINE_REPORTS") or "reports").absolute()


@dataclass(frozen=True)
class Paths:
    """Where one spec's runtime files live."""

    root: Path

    @classmethod
    def for_name(cls, name: str) -> Paths:
        return cls(home() / name)

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def service(self) -> Path:
        return self.root / "service"

    @property
    def deployed(self) -> Path:
        """A copy of the files the live service runs: plan diffs the next render against it."""
        return self.root / "deployed"


def empty() -> dict[str, Any]:
    return {"version": STATE_VERSION, "stages": {}, "service": None, "history": []}


def load(paths: Paths) -> dict[str, Any]:
    """The recorded state, or an empty one; a damaged file is a clear error naming its path."""
    try:
        text = paths.state_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty()
    except OSError as exc:
        raise StateError(f"cannot read state file {paths.state_file}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateError(f"state file {paths.state_file} is damaged ({exc}); "
                         f"move it away to start afresh (the service, if any, must then be stopped by hand)") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict) or data.get("version") != STATE_VERSION \
            or not isinstance(data.get("history", []), list) or not isinstance(data.get("service"), (dict, type(None))):
        raise StateError(f"state file {paths.state_file} is damaged or from another version of pipeline; "
                         f"move it away to start afresh")
    return data


def save(paths: Paths, data: dict[str, Any]) -> None:
    """Write the whole state atomically: after a crash it is the old state or the new, never half."""
    data = copy.deepcopy(data)
    data["history"] = data.get("history", [])[-HISTORY_LIMIT:]
    atomic_write(paths.state_file, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


@contextmanager
def locked(paths: Paths, command: str) -> Iterator[None]:
    """Hold the spec's lock; a second run fails at once, naming the holder. The kernel frees it on death."""
    paths.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
            raise StateError(f"{paths.root.name} is locked by another run ({holder}); "
                             f"wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, `{command}`, since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
