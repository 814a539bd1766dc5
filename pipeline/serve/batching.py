"""Sharing one event-loop thread: fair CPU slices, and adaptive micro-batching of predict_rows()."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy

from pipeline.serve.script import RunTimeout, call_with_timeout

log = logging.getLogger("pipeline.serve")

MAX_ROWS = 64
# The longest a batch waits for company, and only for requests the worker is already reading or parsing
# (never for a client that has not sent yet); a lone request does not wait at all.
LINGER_S = 0.002
# CPU work (run(), parse_rows()) done per pass of the event loop before it polls sockets again.
SLICE_S = 0.002


class FairSlices:
    """Cap the CPU work per event-loop pass, so every connection's bytes keep being read.

    Without it, all requests whose bodies came in one poll run back to back, and a body that
    needed one more read waits for all of them, again and again: 30-image bodies at 64
    connections saw p99 latency of 1 s against a p50 of 70 ms.  Requests that find this pass's
    budget spent yield, and queue behind it in arrival order.
    """

    def __init__(self) -> None:
        self.used = 0.0
        self._reset_pending = False

    async def turn(self) -> None:
        while self.used >= SLICE_S:
            self._renew_soon()
            await asyncio.sleep(0)

    def later(self, callback: Callable[..., None], *args: Any) -> None:
        """What turn() is to a coroutine, for a callback: run it in the next pass, after the next socket poll."""
        self._renew_soon()
        asyncio.get_running_loop().call_soon(callback, *args)

    def _renew_soon(self) -> None:
        if not self._reset_pending:
            self._reset_pending = True
            asyncio.get_running_loop().call_soon(self._reset)  # runs after the next socket poll

    def _reset(self) -> None:
        self.used = 0.0
        self._reset_pending = False


class BatchTimeout(Exception):
    """The request's deadline passed before or while its batch was predicted."""


class BatchFailed(Exception):
    """predict_rows raised (or answered with the wrong length) for this request alone."""


class Waiter(Protocol):
    """What a queued request is answered through: an asyncio.Future, or the direct path's reply (no loop hop)."""

    def done(self) -> bool: ...
    def set_result(self, result: list[Any]) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...


class MicroBatcher:
    """Queue parsed requests; a consumer task predicts them together and answers each future.

    Batching is invisible in the answers: each request's rows are parsed separately before
    they are queued (one bad body never reaches a batch), when a batched predict raises, its
    requests are retried one by one so only the culprit fails, and a script that declares
    BATCH_ROWS = False (the rendered one, for probabilities) is called once per request.
    """

    def __init__(
        self, predict_rows: Callable[[Any], list[Any]], timeout_s: float, slices: FairSlices, join: bool = True
    ) -> None:
        self._predict_rows = predict_rows
        # False: one predict_rows() call per request, still in one pass, for scripts whose answers for a row
        # depend on the rows predicted with it (BLAS rounds the last bits of a probability differently by batch)
        self._join = join
        self._timeout_s = timeout_s
        self._slices = slices
        self._pending: deque[tuple[Any, Waiter, float]] = deque()
        self._rows = 0
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        # Requests the worker holds that are not queued yet (their bodies are being read or parsed): the
        # host keeps it; only these are worth waiting for. And recent rows per request, smoothed, so no
        # one waits for company that could not fit the batch.
        self.incoming = 0
        self._rows_each = 1.0

    def submit(self, rows: Any, alone: bool = False) -> asyncio.Future[list[Any]]:
        """Queue a request's rows; `alone`: no other request is in this worker, so none can join it."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.queue(rows, future, alone)
        return future

    def queue(self, rows: Any, waiter: Waiter, alone: bool = False) -> None:
        """submit(), answered through `waiter`: a future, or whatever answers the request when called."""
        loop = asyncio.get_running_loop()
        if alone and not self._pending:
            # One client at a time: predict now, without the hop through the consumer task (two passes of
            # the loop), which is all that batching would add to a lone request's latency.
            started = time.perf_counter()
            try:
                self._predict(loop, [(rows, waiter, loop.time() + self._timeout_s)])
            except Exception:
                log.exception("predict_rows() failed")
                if not waiter.done():
                    waiter.set_exception(BatchFailed())
            self._slices.used += time.perf_counter() - started
            return
        if self._task is None:
            self._task = loop.create_task(self._consume())
        self._pending.append((rows, waiter, loop.time() + self._timeout_s))
        self._rows += len(rows)
        self._wake()

    def left(self) -> None:
        """A request the consumer may be waiting for went away unqueued (a 400, say): wait no longer for it."""
        if self.incoming == 0:
            self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _wait(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self._wakeup = wakeup = loop.create_future()
        handle = loop.call_later(timeout, self._wake) if timeout is not None else None
        try:
            await wakeup
        finally:
            self._wakeup = None
            if handle is not None:
                handle.cancel()

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:  # a request that left unqueued may wake it with nothing to do
                await self._wait(loop, None)
            if self.incoming > 0 and self._rows + self._rows_each <= MAX_ROWS:
                # Requests this worker is still reading or parsing join within a pass or two: wait for them,
                # never past LINGER_S. Clients that have sent nothing yet are never waited for.
                until = loop.time() + LINGER_S
                while self.incoming > 0 and self._rows + self._rows_each <= MAX_ROWS:
                    left = until - loop.time()
                    if left <= 0:
                        break
                    await self._wait(loop, left)
            else:
                # Requests parsed in this same loop pass still join, at no cost in latency.
                await asyncio.sleep(0)
            batch = self._take()
            started = time.perf_counter()  # not loop.time(): uvloop's has millisecond resolution
            self._rows_each = 0.8 * self._rows_each + 0.2 * sum(len(item[0]) for item in batch) / len(batch)
            try:
                self._predict(loop, batch)
            except Exception:  # never let one batch kill the consumer
                log.exception("micro-batch consumer failed")
                for _rows, future, _deadline in batch:
                    if not future.done():
                        future.set_exception(BatchFailed())
            self._slices.used += time.perf_counter() - started

    def _take(self) -> list[tuple[Any, Waiter, float]]:
        batch = [self._pending.popleft()]
        rows = len(batch[0][0])
        while self._pending and rows + len(self._pending[0][0]) <= MAX_ROWS:
            item = self._pending.popleft()
            batch.append(item)
            rows += len(item[0])
        self._rows -= rows
        return batch

    def _predict(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Any, Waiter, float]]) -> None:
        now = loop.time()
        live = []
        for item in batch:
            if item[1].done():  # the client went away
                continue
            if item[2] <= now:
                item[1].set_exception(BatchTimeout())
            else:
                live.append(item)
        if not live:
            return
        if not self._join and len(live) > 1:
            for item in live:
                self._predict(loop, [item])
            return
        # The alarm fires only when every request in the batch is past its deadline.
        budget = max(item[2] for item in live) - now
        try:
            # inside the try: rows that cannot be joined (another width) fall back to one request at a time
            matrix = live[0][0] if len(live) == 1 else numpy.concatenate([item[0] for item in live])
            labels = call_with_timeout(self._predict_rows, budget, matrix)
            if len(labels) != len(matrix):
                raise ValueError(f"predict_rows returned {len(labels)} items for {len(matrix)} rows")
        except RunTimeout:
            log.error("predict_rows() did not finish within %.0f ms; %d requests timed out", budget * 1000, len(live))
            for item in live:
                item[1].set_exception(BatchTimeout())
            return
        except Exception:
            if len(live) == 1:
                log.exception("predict_rows() raised")
                live[0][1].set_exception(BatchFailed())
                return
            # Find the culprit: one request's odd rows must not fail its neighbours.
            for item in live:
                self._predict(loop, [item])
            return
        start = 0
        for rows, future, _deadline in live:
            end = start + len(rows)
            future.set_result(labels[start:end])
            start = end
