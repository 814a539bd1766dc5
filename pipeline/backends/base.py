"""The one small protocol every state backend satisfies, the lock holder it records, and waiting for a lock."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from pipeline.errors import StateLocked


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: what `force-unlock` and a refused second run name."""

    host: str
    pid: int
    command: str
    since: float  # seconds since the epoch

    @classmethod
    def me(cls, command: str, clock: Callable[[], float] = time.time) -> Holder:
        return cls(socket.gethostname(), os.getpid(), command, clock())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Holder | None:
        """A holder read back from a lock; None for anything that is not one (empty, damaged, older format)."""
        try:
            return cls(str(data["host"]), int(data["pid"]), str(data["command"]), float(data["since"]))
        except (TypeError, KeyError, ValueError):
            return None

    def describe(self) -> str:
        # "pid N, `command`" first: the words a user greps the message for
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.since))
        return f"pid {self.pid}, `{self.command}`, on host {self.host} since {since}"


@dataclass(frozen=True)
class LockInfo:
    """What `state show` says about a lock."""

    locked: bool
    holder: Holder | None  # the holder; when not locked, the last one if it never released (it died)
    detail: str  # one line for the user

    def to_dict(self) -> dict[str, Any]:
        return {"locked": self.locked, "holder": self.holder.to_dict() if self.holder else None, "detail": self.detail}


class Lock(Protocol):
    holder: Holder

    def check(self) -> None:
        """Raise StateError when the lock is no longer ours (broken by force-unlock, or expired and taken)."""

    def release(self) -> None:
        """Give the lock up; never raises for a lock that is already gone."""


class Backend(Protocol):
    """Stores one state document per spec name with a version token, and one lock per spec name."""

    scheme: str
    url: str  # the backend's address, as --state takes it

    def where(self, name: str) -> str:
        """Where the state document of `name` lives, for messages."""

    def read(self, name: str) -> tuple[bytes | None, str | None]:
        """The document's bytes and version token (ETag), or (None, None) when there is none yet."""

    def write(self, name: str, data: bytes, etag: str | None, lock: Lock | None) -> str:
        """Replace the document only if it is still at version `etag` (None: only if there is none);
        raise StateConflict otherwise. Returns the new version token."""

    def try_lock(self, name: str, holder: Holder) -> Lock:
        """Take the lock at once, or raise StateLocked naming its holder."""

    def inspect(self, name: str) -> LockInfo:
        """Who holds the lock, without taking it."""

    def force_unlock(self, name: str) -> Holder | None:
        """Break the lock whoever holds it; return the holder it broke, None when it was free."""


def lock(
    backend: Backend,
    name: str,
    holder: Holder,
    *,
    timeout: float = 0.0,
    notify: Callable[[str], None] | None = None,
    poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Lock:
    """Take the lock; with a timeout, wait for it (polling), saying once whom we wait for."""
    deadline = clock() + timeout
    told = False
    while True:
        try:
            return backend.try_lock(name, holder)
        except StateLocked as exc:
            if clock() >= deadline:
                if timeout > 0:
                    raise StateLocked(
                        f"{exc} (still locked after waiting {format_duration(timeout)})", exc.holder
                    ) from None
                raise
            if notify and not told:
                notify(
                    f"waiting up to {format_duration(timeout)} for the lock held by "
                    f"{exc.holder.describe() if exc.holder else 'another run'}"
                )
                told = True
            sleep(min(poll, max(0.0, deadline - clock())))


def parse_duration(text: str) -> float:
    """`90`, `90s`, `5m`, `1h`, `1h30m` as seconds; ValueError for anything else."""
    text = text.strip().lower()
    if not text:
        raise ValueError("empty duration")
    if text.replace(".", "", 1).isdigit():
        return float(text)
    total, number = 0.0, ""
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        elif char in "smh" and number:
            total += float(number) * {"s": 1, "m": 60, "h": 3600}[char]
            number = ""
        else:
            raise ValueError(f"not a duration: {text!r}")
    if number:
        raise ValueError(f"not a duration: {text!r} (a unit s, m or h must follow {number})")
    return total


def format_duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
