"""The events file: what the service did (replacements, out-of-memory kills, clients cut off), off the HTTP surface."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pipeline.files import atomic_write

# Enough history to explain a bad minute without the file growing for ever.
KEEP_EVENTS = 50


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never half of one."""
    atomic_write(Path(path), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


class EventLog:
    """Counts by kind plus the last KEEP_EVENTS events; rewritten on every event when it has a path."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.counts: dict[str, int] = {"worker_started": 0, "worker_exited": 0, "out_of_memory": 0}
        self.events: list[dict[str, Any]] = []

    def record(self, kind: str, count: int = 1, **detail: Any) -> None:
        """One event; `count` > 1 for several of a kind reported at once (a worker's guard reports each second)."""
        self.counts[kind] = self.counts.get(kind, 0) + count
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        event = {"time": stamp, "kind": kind, **({"count": count} if count != 1 else {}), **detail}
        self.events = [*self.events[-(KEEP_EVENTS - 1) :], event]
        self.write()

    def write(self) -> None:
        if self.path:
            write_json_atomic(self.path, {"supervisor_pid": os.getpid(), "counts": self.counts, "events": self.events})
