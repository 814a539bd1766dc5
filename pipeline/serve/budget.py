"""Request bodies within the memory limit: the largest body a worker's share of memory_gb can parse, one at a time.

Parsing a JSON body costs several times its size (measured with benchmarks/body_memory.py, peak RSS over
the body received, the body itself and its joined copy included):

    rows of MNIST floats (0.0-1.0, as json.dumps writes them)    6x (simdjson's path; 9x through orjson)
    rows of 0 / 0.0 / 1e1 (the fewest bytes per number)        9-18x
    [[], [], ...] or [{}, {}, ...] or [[1], [1], ...]          30-35x (refused, but only after it is parsed)

so a worker admits one large body at a time (others wait their turn, unread, in the kernel's buffers), and
the largest it accepts is its share of the memory left after the service's own footprint, divided by the
worst factor: whatever the body holds, parsing it cannot push the service over memory_limit_mb.
"""

from __future__ import annotations

import asyncio
import os

# The worst peak/body ratio measured above, rounded up.
PARSE_FACTOR = 36
# Bodies up to this size skip the queue: their parse costs at most PARSE_FACTOR MiB and takes milliseconds.
SMALL_BODY = 1024 * 1024
# What a worker grows by under load beyond its size after init() (buffers, the first predicts' workspace).
WORKER_GROWTH_MB = 32
# The smallest body limit worth serving with: below it the memory limit leaves no room to score anything.
MIN_BODY = 64 * 1024


def rss_mb(pid: int | None = None) -> float:
    """A process's resident memory (MiB), 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status", "rb") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith(b"VmRSS:")), 0.0)
    except (OSError, ValueError):
        return 0.0


def body_limit(
    configured: int, memory_limit_mb: int | None, workers: int, worker_mb: float, supervisor_mb: float
) -> int:
    """The largest body (bytes) a worker accepts: `configured`, lowered to what its share of the memory limit parses."""
    if memory_limit_mb is None:
        return configured
    left_mb = memory_limit_mb - supervisor_mb - workers * (worker_mb + WORKER_GROWTH_MB)
    share = int(left_mb * 2**20 / workers / PARSE_FACTOR)
    return max(MIN_BODY, min(configured, share))


class LargeBodies:
    """A worker reads and parses one large body at a time, in arrival order; small ones never wait."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    def needed(self, length: bytes | None) -> bool:
        """A body of unknown length (chunked) or over SMALL_BODY takes its turn."""
        return length is None or not length.isdigit() or int(length) > SMALL_BODY

    async def acquire(self, timeout_s: float) -> bool:
        """Wait for the turn, at most `timeout_s`; False when it did not come."""
        if not self._lock.locked():
            await self._lock.acquire()
            return True
        try:
            async with asyncio.timeout(timeout_s):  # Lock.acquire hands the turn on when it is cancelled
                await self._lock.acquire()
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        self._lock.release()
