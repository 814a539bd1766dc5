"""The worker's raw ASGI app: Azure ML's routes and headers, with 4xx answers where Azure's says 500.

Most POST /score requests never reach it as ASGI: the connection's protocol serves them through `Direct`
(begin/finish below), with the same steps and answers.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from pipeline.serve.access import AccessLog
from pipeline.serve.batching import SLICE_S, BatchFailed, BatchTimeout, FairSlices, MicroBatcher
from pipeline.serve.budget import LargeBodies
from pipeline.serve.script import (
    JSON_TYPE,
    RunTimeout,
    ScoringScript,
    call_with_timeout,
    describe_bad_input,
    dumps,
    encode_output,
)

log = logging.getLogger("pipeline.serve")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# Azure's server refuses request ids longer than this with 431; so do we.
REQUEST_ID_LIMIT = 100
ROUTES = "GET /, POST /score, GET /swagger.json"
_JSON = ((b"content-type", JSON_TYPE),)
# Set when this worker drains (a newer version took the port): clients then reconnect, to the new one.
closing = False
_CLOSE = (b"connection", b"close")
_OK_RUN = (b"x-ms-run-function-failed", b"False")


_random = bytearray()


def _request_id() -> bytes:
    """A random (version 4) UUID, as Azure's server makes one for a request without an id; os.urandom drawn
    4 KiB at a time, a sixth of what uuid.uuid4() costs per request."""
    global _random
    if len(_random) < 16:
        _random = bytearray(os.urandom(4096))
    raw = _random[-16:]
    del _random[-16:]
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


class _ClientGone(Exception):
    """The client went away (or was timed out) while its body was read: nobody to answer."""


class ScoringApp:
    """One instance per worker; a plain ASGI callable because a framework's routing costs more than it gives."""

    def __init__(
        self,
        script: ScoringScript,
        *,
        request_timeout_ms: int,
        max_body_bytes: int,
        keys: list[str],
        swagger: dict[str, Any] | None,
        features: int | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.script = script
        self.access_log = access_log
        self.large = LargeBodies()
        self.features = features
        self.timeout_s = request_timeout_ms / 1000
        self.max_body_bytes = max_body_bytes
        self.auth = [f"Bearer {key}".encode() for key in keys if key]
        self.swagger = orjson.dumps(swagger) if swagger is not None else None
        self.slices = FairSlices()
        self.batcher = None
        if script.predict_rows is not None and script.batching:
            self.batcher = MicroBatcher(script.predict_rows, self.timeout_s, self.slices, join=script.batch_rows)

    # --- the direct path ------------------------------------------------------------------------------------
    # A POST /score with its length given and a body small enough to need no turn (most of them) is served by
    # the connection's protocol in its own callbacks: the same steps and answers as the ASGI path below, without
    # a task, a scope and the coroutines between them per request. Everything else, errors before the body
    # included, takes the ASGI path, which says what is wrong.
    def begin(self, protocol: Any) -> Direct | None:
        """At the end of a request's headers: a Direct to serve it by, or None for the ASGI path."""
        parser = protocol.parser
        url = protocol.url
        if (
            (url != b"/score" and url != b"/score/")
            or parser.get_method() != b"POST"
            or protocol.expect_100_continue
            or parser.should_upgrade()
        ):
            return None
        length, request_id, ids, authorized = self._scan(protocol.headers)
        if (
            request_id is None
            or not authorized
            or length is None
            or not length.isdigit()
            or int(length) > self.max_body_bytes
            or self.large.needed(length)
        ):
            return None
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        assert self.batcher is not None
        self.batcher.incoming += 1  # on its way to the batcher: worth waiting for (see MicroBatcher)
        return Direct(url.decode(), request_id, ids, keep_alive)

    def finish(self, protocol: Any, direct: Direct) -> None:
        """The body is in: parse it (in this loop pass, or a later one if this pass's CPU slice is spent)."""
        if self.slices.used >= SLICE_S:
            self.slices.later(self.finish, protocol, direct)
            return
        if direct.disconnected or protocol.transport.is_closing():
            self.abandon(direct)
            return
        batcher = self.batcher
        assert batcher is not None
        chunks = direct.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        direct.chunks = []
        started = time.perf_counter()
        try:
            rows, refused = self._parse(body, direct.request_id, direct.ids)
            if refused is not None:
                self.abandon(direct)
                self._answer(protocol, direct, refused)
                return
            # Predicted at once only when no other connection is open: a request that came in with others
            # in one poll of the sockets is parsed before theirs are read, and waits one pass for them.
            alone = batcher.incoming == 1 and len(protocol.guard.open) <= 1
            batcher.incoming -= 1  # queued now: no longer on its way
            direct.queued = True
            # answered when its batch is predicted (a lone request: at once, in this same pass)
            batcher.queue(rows, _Reply(self, protocol, direct, started), alone=alone)
        except Exception:  # a callback of the HTTP parser: never let it raise into the parser
            log.exception("scoring failed (request_id=%s)", direct.request_id.decode("latin-1"))
            self.abandon(direct)
            if not direct.response_started:
                self._answer(protocol, direct, _internal_answer("predict_rows", direct.request_id, direct.ids))

    def abandon(self, direct: Direct) -> None:
        """The request leaves without reaching the batcher (refused, or its client went away)."""
        if not direct.queued and self.batcher is not None:
            direct.queued = True
            self.batcher.incoming -= 1
            self.batcher.left()

    def _answer(self, protocol: Any, direct: Direct, answer: Answer) -> None:
        """Write the whole answer in one write, then hand the connection back to the protocol, as uvicorn does."""
        status, body, headers = answer
        if self.access_log is not None:
            seconds = time.perf_counter() - direct.started
            self.access_log.add(protocol.client, "POST", direct.path, status, len(body), seconds, direct.request_id)
        transport = protocol.transport
        if direct.disconnected or transport.is_closing():
            direct.response_started = direct.response_complete = True
            return
        keep_alive = direct.keep_alive and not closing
        content = [STATUS_LINE[status]]
        for name, value in protocol.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        said_close = False
        # The ids echoed from the request need no check for CR, LF or other control characters: httptools
        # refuses a request whose header values hold any ("Invalid header value char"), before it gets here.
        for name, value in headers:
            if name == b"connection":  # an answer that closes the connection says so itself (a 413)
                keep_alive, said_close = False, True
            content += (name, b": ", value, b"\r\n")
        content.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive and not said_close:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        direct.response_started = direct.response_complete = True
        transport.write(b"".join(content))
        if not keep_alive:
            transport.close()
        protocol.on_response_complete()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self.access_log is None:
            await self._route(scope, receive, send)
            return
        started = time.perf_counter()
        noted = _Noted(send)
        try:
            await self._route(scope, receive, noted)
        finally:
            self.access_log.add(
                scope.get("client"),
                scope["method"],
                scope["path"],
                noted.status,
                noted.size,
                time.perf_counter() - started,
                noted.request_id,
            )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/score" or path == "/score/":
            if method != "POST":
                await _error(send, 405, f"{method} is not allowed on /score; use POST", [(b"allow", b"POST")])
                return
            await self._score(scope, receive, send)
        elif path == "/":
            if method not in ("GET", "HEAD"):
                await _error(send, 405, f"{method} is not allowed on /", [(b"allow", b"GET, HEAD")])
                return
            await _respond(send, 200, b"Healthy", [(b"content-type", b"text/plain; charset=utf-8")])
        elif path == "/swagger.json":
            if method not in ("GET", "HEAD"):
                await _error(send, 405, f"{method} is not allowed on /swagger.json", [(b"allow", b"GET, HEAD")])
            elif not self._authorized(scope["headers"]):
                await _unauthorized(send)
            elif self.swagger is None:
                await _error(send, 404, "this service has no swagger document")
            else:
                await _respond(send, 200, self.swagger, list(_JSON))
        else:
            await _error(send, 404, f"no route for {path}; the routes are {ROUTES}")

    def _authorized(self, headers: Headers) -> bool:
        if not self.auth:
            return True
        return self._key_matches(next((value for name, value in headers if name == b"authorization"), b""))

    def _key_matches(self, authorization: bytes) -> bool:
        # Compared with every key, in constant time, so timing tells nothing about which one is close.
        return sum(hmac.compare_digest(authorization, key) for key in self.auth) > 0

    async def _score(self, scope: Scope, receive: Receive, send: Send) -> None:
        batcher = self.batcher
        if batcher is None:
            await self._score_request(scope, receive, send)
            return
        batcher.incoming += 1  # on its way to the batcher: worth waiting for (see MicroBatcher)
        try:
            await self._score_request(scope, receive, send)
        finally:
            batcher.incoming -= 1
            batcher.left()

    def _scan(self, headers: Headers) -> tuple[bytes | None, bytes | None, Headers, bool]:
        """A scoring request's headers: (content-length, request id, the id headers to answer with, authorized).

        The request id is None when the client's is too long (a 431).
        """
        request_id = client_id = legacy_id = length = None
        authorization = b""
        for name, value in headers:
            if name == b"content-length":
                length = value
            elif name == b"x-request-id":
                request_id = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-ms-client-request-id":
                client_id = value
            elif name == b"x-ms-request-id":
                legacy_id = value
        if request_id is None:
            request_id = _request_id()
        elif len(request_id) > REQUEST_ID_LIMIT:
            return length, None, [], False
        # Azure's server fills x-ms-request-id from the client's ids, else the request id.
        ids = [(b"x-request-id", request_id), (b"x-ms-request-id", legacy_id or client_id or request_id)]
        if client_id is not None:
            ids.append((b"x-ms-client-request-id", client_id))
        return length, request_id, ids, not self.auth or self._key_matches(authorization)

    async def _score_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        length, request_id, ids, authorized = self._scan(scope["headers"])
        if request_id is None:
            await _error(send, 431, f"x-request-id must not exceed {REQUEST_ID_LIMIT} characters")
            return
        if not authorized:
            await _unauthorized(send, ids)
            return
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _too_large(send, self.max_body_bytes, ids)
            return
        # Large bodies are read and parsed one at a time (pipeline.serve.budget): the memory limit holds.
        turn = self.large.needed(length)
        if turn and not await self.large.acquire(self.timeout_s):
            message = f"other large bodies were being parsed for {self.timeout_s * 1000:.0f} ms; retry"
            await _error(send, 503, message, [*ids, (b"retry-after", b"1")])
            return
        try:
            body = await self._read_body(receive)
            if body is None:
                await _too_large(send, self.max_body_bytes, ids)
            elif self.batcher is not None:
                await self._score_batched(body, request_id, ids, send)
            else:
                await self._score_run(scope, body, request_id, ids, send)
        except _ClientGone:
            return
        finally:
            if turn:
                self.large.release()

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes max_body_bytes (chunked bodies included)."""
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        body = message.get("body", b"")
        size = len(body)
        if size > self.max_body_bytes:
            return None
        if not message.get("more_body", False):
            return body
        chunks = [body]
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _score_batched(self, body: bytes, request_id: bytes, ids: Headers, send: Send) -> None:
        assert self.batcher is not None
        await self.slices.turn()
        started = time.perf_counter()
        rows, refused = self._parse(body, request_id, ids)
        if refused is not None:
            await _respond(send, *refused)
            return
        try:
            alone = self.batcher.incoming == 1  # no other request in this worker is being read or parsed
            self.batcher.incoming -= 1  # queued now: no longer on its way
            try:
                labels = await self.batcher.submit(rows, alone=alone)
            finally:
                self.batcher.incoming += 1
        except (BatchTimeout, BatchFailed) as exc:
            await _respond(send, *self._labelled(exc, started, request_id, ids))
            return
        await _respond(send, *self._labelled(labels, started, request_id, ids))

    def _parse(self, body: bytes, request_id: bytes, ids: Headers) -> tuple[Any, Answer | None]:
        """(parse_rows(body), None), or (None, the answer) when it refused the body or failed; its time is counted."""
        assert self.script.parse_rows is not None
        started = time.perf_counter()
        failure: Exception | None = None
        try:
            rows = self.script.parse_rows(body)
        except Exception as exc:  # noqa: BLE001  whatever the user's parse_rows raises is answered, not fatal
            failure = exc
        self.slices.used += time.perf_counter() - started
        if failure is None:
            return rows, None
        if isinstance(failure, ValueError):
            message, failure = str(failure), None  # its traceback holds this frame: no cycle left for the GC
            return None, _error_answer(400, message, ids)
        log.error("parse_rows() raised (request_id=%s)", request_id.decode("latin-1"), exc_info=failure)
        failure = None
        return None, _internal_answer("parse_rows", request_id, ids)

    def _labelled(self, labels: Any, started: float, request_id: bytes, ids: Headers) -> Answer:
        """The answer to a request whose rows the batcher predicted (labels), or failed to (the exception)."""
        if isinstance(labels, BatchTimeout):
            return _timeout_answer(self.timeout_s, request_id, ids)
        if isinstance(labels, BaseException):
            return _internal_answer("predict_rows", request_id, ids)
        try:
            body = dumps(labels)  # orjson, or json for what it refuses (e.g. an object array of strings)
        except Exception:
            log.exception("predict_rows() returned something that cannot be encoded as JSON")
            return _internal_answer("predict_rows", request_id, ids)
        elapsed = b"%.3f" % ((time.perf_counter() - started) * 1000)
        return 200, body, [*ids, (b"content-type", JSON_TYPE), (b"x-ms-run-fn-exec-ms", elapsed), _OK_RUN]

    async def _score_run(self, scope: Scope, body: bytes, request_id: bytes, ids: Headers, send: Send) -> None:
        # Azure passes run() the body decoded as UTF-8 text; a body that isn't is the client's fault.
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await _error(send, 400, f"body is not UTF-8: {exc}", ids)
            return
        args: tuple[Any, ...] = (text,)
        if self.script.run_takes_headers:
            args = (text, {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        rid = request_id.decode("latin-1")
        await self.slices.turn()
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            output = call_with_timeout(self.script.run, self.timeout_s, *args)
        except (Exception, RunTimeout) as exc:  # noqa: BLE001  the user's run(): answered 400/500/504, never fatal
            failure = exc
        ran = time.perf_counter() - started
        self.slices.used += ran
        if isinstance(failure, RunTimeout):
            log.error("run() did not finish within %.0f ms (request_id=%s)", self.timeout_s * 1000, rid)
            await _timeout(send, self.timeout_s, request_id, ids)
            return
        if failure is not None:
            reason = describe_bad_input(body, failure, self.features)
            if reason is not None:
                log.info("400 for request_id=%s: %s (run() raised %s)", rid, reason, type(failure).__name__)
            else:
                log.error("run() raised (request_id=%s)", rid, exc_info=failure)
            failure = None  # its traceback holds this frame (and run()'s): no cycle left for the GC
            if reason is not None:
                await _error(send, 400, reason, ids)
            else:
                await _internal(send, "run", request_id, ids)
            return
        elapsed = b"%.3f" % (ran * 1000)
        try:
            status, payload, headers = encode_output(output)
        except Exception:
            log.exception("run() returned a %s, not JSON-serializable (request_id=%s)", type(output).__name__, rid)
            await _internal(send, "run", request_id, ids)
            return
        failed = (b"x-ms-run-function-failed", b"True") if status >= 500 else _OK_RUN
        await _respond(send, status, payload, [*ids, *headers, (b"x-ms-run-fn-exec-ms", elapsed), failed])


class _NoEvent:
    """What uvicorn sets on a request's message event when its connection is lost: nothing waits on a direct one."""

    __slots__ = ()

    def set(self) -> None:
        pass


class Direct:
    """One POST /score that the connection's protocol serves itself, in its callbacks, with no ASGI task.

    Stands where uvicorn keeps a request's RequestResponseCycle (protocol.cycle), with the attributes its
    protocol reads of one, so keep-alive, pipelined requests behind it, a lost connection and a graceful
    shutdown are handled as for any other request.
    """

    __slots__ = (
        "chunks",
        "disconnected",
        "ids",
        "keep_alive",
        "path",
        "queued",
        "request_id",
        "response_complete",
        "response_started",
        "started",
    )
    message_event = _NoEvent()

    def __init__(self, path: str, request_id: bytes, ids: Headers, keep_alive: bool) -> None:
        self.path = path
        self.request_id = request_id
        self.ids = ids
        self.keep_alive = keep_alive
        self.chunks: list[bytes] = []
        self.disconnected = self.response_started = self.response_complete = False
        self.queued = False  # its rows are with the batcher (no longer counted as on their way to it)
        self.started = time.perf_counter()


class _Reply:
    """How the batcher answers a direct request (pipeline.serve.batching.Waiter): it writes the answer at once."""

    __slots__ = ("app", "direct", "protocol", "started")

    def __init__(self, app: ScoringApp, protocol: Any, direct: Direct, started: float) -> None:
        self.app, self.protocol, self.direct, self.started = app, protocol, direct, started

    def done(self) -> bool:
        return self.direct.response_started

    def set_result(self, result: Any) -> None:
        try:
            direct = self.direct
            self.app._answer(
                self.protocol, direct, self.app._labelled(result, self.started, direct.request_id, direct.ids)
            )
        except Exception:  # the batcher's loop: an answer that cannot be written ends its connection, nothing else
            log.exception("cannot answer request_id=%s", self.direct.request_id.decode("latin-1"))
            self.protocol.transport.close()

    set_exception = set_result  # _labelled answers a BatchTimeout or BatchFailed as such


class _Noted:
    """The app's `send`, noting the status, body size and request id for the access log."""

    __slots__ = ("request_id", "send", "size", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0  # 0 in the log: nothing was answered (the client went away, or was timed out)
        self.size = 0
        self.request_id: bytes | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.request_id = next((value for name, value in message["headers"] if name == b"x-request-id"), None)
        else:
            self.size += len(message.get("body", b""))
        await self.send(message)


Answer = tuple[int, bytes, Headers]


async def _respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    headers = [*headers, (b"content-length", b"%d" % len(body))]  # never the caller's list: some are shared
    if closing and _CLOSE not in headers:
        headers.append(_CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_answer(status: int, message: str, headers: Headers | None = None, **extra: str) -> Answer:
    return status, orjson.dumps({"error": message, **extra}), [*(headers or []), *_JSON]


async def _error(send: Send, status: int, message: str, headers: Headers | None = None, **extra: str) -> None:
    await _respond(send, *_error_answer(status, message, headers, **extra))


async def _unauthorized(send: Send, headers: Headers | None = None) -> None:
    message = "missing or wrong key: send the header 'Authorization: Bearer <key>'"
    await _error(send, 401, message, [*(headers or []), (b"www-authenticate", b"Bearer")])


async def _too_large(send: Send, limit: int, headers: Headers) -> None:
    # Close the connection: the rest of an oversized body is not worth reading to keep it alive.
    await _error(send, 413, f"body is larger than {limit} bytes", [*headers, (b"connection", b"close")])


def _timeout_answer(timeout_s: float, request_id: bytes, headers: Headers) -> Answer:
    message = f"scoring did not finish within {timeout_s * 1000:.0f} ms"
    failed = [*headers, (b"x-ms-run-function-failed", b"True")]
    return _error_answer(504, message, failed, request_id=request_id.decode("latin-1"))


async def _timeout(send: Send, timeout_s: float, request_id: bytes, headers: Headers) -> None:
    await _respond(send, *_timeout_answer(timeout_s, request_id, headers))


def _internal_answer(function: str, request_id: bytes, headers: Headers) -> Answer:
    message = f"internal error in {function}(); see the service log"
    failed = [*headers, (b"x-ms-run-function-failed", b"True")]
    return _error_answer(500, message, failed, request_id=request_id.decode("latin-1"))


async def _internal(send: Send, function: str, request_id: bytes, headers: Headers) -> None:
    await _respond(send, *_internal_answer(function, request_id, headers))
