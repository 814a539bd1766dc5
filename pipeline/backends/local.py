"""The local backend: <home>/<name>/state.json and an flock on <home>/<name>/lock, freed by the kernel on death."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

from pipeline.backends.base import Holder, LockInfo
from pipeline.errors import StateConflict, StateError, StateLocked
from pipeline.files import atomic_write, sha256_bytes

STATE_FILE = "state.json"
LOCK_FILE = "lock"
WRITE_LOCK_FILE = ".state.write-lock"  # held only for the compare-and-swap of one write


class LocalLock:
    """An flock held on the spec's lock file; closing the descriptor (or dying) releases it."""

    def __init__(self, fd: int, holder: Holder) -> None:
        self.fd: int | None = fd
        self.holder = holder

    def check(self) -> None:
        if self.fd is None:
            raise StateError("the state lock was already released")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # a free lock names nobody
        os.close(self.fd)
        self.fd = None


class LocalBackend:
    scheme = "local"

    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = "local"

    def folder(self, name: str) -> Path:
        return self.home / name

    def where(self, name: str) -> str:
        return str(self.folder(name) / STATE_FILE)

    def read(self, name: str) -> tuple[bytes | None, str | None]:
        path = self.folder(name) / STATE_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from None
        return data, sha256_bytes(data)

    def write(self, name: str, data: bytes, etag: str | None, lock: object = None) -> str:
        """Compare and swap under a short flock: two writers can never both win from the same version."""
        path = self.folder(name) / STATE_FILE
        with self._write_lock(name):
            current = self.read(name)[1]
            if current != etag:
                raise StateConflict(
                    f"state file {path} was changed by another writer since it was read "
                    f"(version {_short(etag)} expected, {_short(current)} found); nothing was saved"
                )
            atomic_write(path, data)
        return sha256_bytes(data)

    @contextlib.contextmanager
    def _write_lock(self, name: str) -> Iterator[None]:
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / WRITE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def try_lock(self, name: str, holder: Holder) -> LocalLock:
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _holder(os.pread(fd, 4096, 0))
            os.close(fd)
            who = other.describe() if other else "unknown process"
            raise StateLocked(
                f"{name} is locked by another run ({who}); wait for it to finish, or wait for it "
                f"with --lock-timeout 5m",
                other,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder.to_dict()) + "\n").encode(), 0)
        return LocalLock(fd, holder)

    def inspect(self, name: str) -> LockInfo:
        """From the holder the lock file names; taking the flock to test it could refuse a starting run."""
        try:
            holder = _holder((self.folder(name) / LOCK_FILE).read_bytes())
        except OSError:
            holder = None
        if holder is None:
            return LockInfo(False, None, "not locked")
        if holder.host != socket.gethostname() or _alive(holder.pid):
            return LockInfo(True, holder, f"locked by {holder.describe()}")
        return LockInfo(
            False,
            holder,
            f"not locked (the last holder, {holder.describe()}, ended without releasing it; the kernel freed the lock)",
        )

    def force_unlock(self, name: str) -> Holder | None:
        info = self.inspect(name)
        if info.locked and info.holder:
            raise StateError(
                f"{name} is locked by a running process ({info.holder.describe()}); a local lock is "
                f"freed by the kernel when its holder exits: stop that process (kill {info.holder.pid})"
            )
        return None


def open_backend(url: str, lease_seconds: int | None, home: Path, environ: Mapping[str, str]) -> LocalBackend:
    return LocalBackend(home)


def _holder(raw: bytes) -> Holder | None:
    try:
        return Holder.from_dict(json.loads(raw.decode("utf-8", "replace") or "null"))
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _short(etag: str | None) -> str:
    return "(none)" if etag is None else etag[:12]
