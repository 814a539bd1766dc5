"""The direct path (pipeline.serve.app.Direct): POST /score served in the protocol's callbacks, checked in-process.

A real ScoringApp with tests/data/score_fast.py and the example model, behind the real GuardedProtocol on a real
uvicorn server on 127.0.0.1, talked to over real sockets; in-process so the batcher's counts can be read.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn

from pipeline.serve import app as app_module
from pipeline.serve.app import ScoringApp
from pipeline.serve.guard import Guard
from pipeline.serve.script import load_script
from tests.test_serve import DATA, model_dir, test_images  # noqa: F401  (fixtures)

ROWS = 3


class CountingApp(ScoringApp):
    """The app, counting the requests that reach it through ASGI (the direct path never calls it)."""

    asgi_calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.asgi_calls += 1
        await super().__call__(scope, receive, send)


@pytest.fixture(scope="module")
def script(model_dir: Path) -> Any:  # noqa: F811
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AZUREML_MODEL_DIR", str(model_dir))
        loaded = load_script(str(DATA / "score_fast.py"))
        loaded.init()
    return loaded


@pytest.fixture(scope="module")
def rows(test_images: np.ndarray, script: Any) -> tuple[list[list[float]], list[int]]:  # noqa: F811
    picked = test_images[:ROWS]
    return picked.tolist(), script.predict_rows(picked)


def serve(script: Any, test: Callable[[CountingApp, int], Awaitable[None]], **settings: Any) -> None:
    """Run `test(app, port)` against a server on an ephemeral 127.0.0.1 port, then stop the server."""

    async def main() -> None:
        app = CountingApp(script, request_timeout_ms=5000, max_body_bytes=2_000_000, keys=[], swagger=None, **settings)
        guard = Guard(header_timeout_s=5, body_timeout_s=5, max_connections=100)
        guard.direct = app
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(
            uvicorn.Config(app, http=guard.protocol(), lifespan="off", log_config=None, server_header=False)
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            await test(app, sock.getsockname()[1])
        finally:
            server.should_exit = True
            await task
            sock.close()

    asyncio.run(main())


def post(rows: list[list[float]], *, request_id: str = "rid-1", chunked: bool = False, extra: str = "") -> bytes:
    body = json.dumps({"data": rows}).encode()
    head = f"POST /score HTTP/1.1\r\nhost: t\r\nx-request-id: {request_id}\r\ncontent-type: application/json\r\n{extra}"
    if chunked:
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


async def answers(reader: asyncio.StreamReader, count: int) -> list[tuple[str, dict[str, str], bytes]]:
    """`count` answers off the connection: (status line, headers, body)."""
    out = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status, *lines = head.decode().split("\r\n")[:-2]
        headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
        out.append((status, headers, await reader.readexactly(int(headers["content-length"]))))
    return out


def comparable(answer: tuple[str, dict[str, str], bytes]) -> tuple[str, list[tuple[str, str]], bytes]:
    """An answer without what differs from one request to the next: the date and the time taken."""
    status, headers, body = answer
    return status, [(k, v) for k, v in headers.items() if k not in ("date", "x-ms-run-fn-exec-ms")], body


def test_direct_and_asgi_paths_give_the_same_answers(script: Any, rows: Any) -> None:
    data, labels = rows
    bad = [[0.0] * 12]

    async def test(app: CountingApp, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for body in (data, bad):
            writer.write(post(body))  # a length: the direct path
            (direct,) = await answers(reader, 1)
            assert app.asgi_calls == 0
            writer.write(post(body, chunked=True))  # chunked: the ASGI path
            (general,) = await answers(reader, 1)
            assert app.asgi_calls == 1
            app.asgi_calls = 0
            assert comparable(direct) == comparable(general)
            assert list(direct[1]) == list(general[1])  # the same headers in the same order
        writer.close()

    serve(script, test)

    # and what they said: the labels, or the first problem of the bad body
    async def check(app: CountingApp, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(data) + post(bad))
        ok, refused = await answers(reader, 2)
        assert ok[0] == "HTTP/1.1 200 OK" and json.loads(ok[2]) == labels
        assert ok[1]["x-request-id"] == "rid-1" and ok[1]["x-ms-run-function-failed"] == "False"
        assert refused[0] == "HTTP/1.1 400 Bad Request"
        assert "data[0] has 12 values, expected 784" in json.loads(refused[2])["error"]
        writer.close()

    serve(script, check)


def test_pipelined_requests_are_answered_in_order_across_both_paths(script: Any, rows: Any) -> None:
    data, labels = rows

    async def test(app: CountingApp, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # one write: a direct request, a health check behind it (ASGI), then two more direct ones
        writer.write(
            post(data[:1], request_id="a")
            + b"GET / HTTP/1.1\r\nhost: t\r\n\r\n"
            + post(data[1:], request_id="b")
            + post(data, request_id="c")
        )
        got = await answers(reader, 4)
        assert [answer[0] for answer in got] == ["HTTP/1.1 200 OK"] * 4
        assert got[1][2] == b"Healthy"
        assert [answer[1].get("x-request-id") for answer in got] == ["a", None, "b", "c"]
        assert [json.loads(got[i][2]) for i in (0, 2, 3)] == [labels[:1], labels[1:], labels]
        writer.close()
        assert app.batcher is not None and app.batcher.incoming == 0

    serve(script, test)


def test_http_1_0_and_draining_answers_close_the_connection(script: Any, rows: Any) -> None:
    data, labels = rows

    async def test(app: CountingApp, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(data).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        (answer,) = await answers(reader, 1)
        assert json.loads(answer[2]) == labels and answer[1]["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert app.asgi_calls == 0

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(data))
        (first,) = await answers(reader, 1)
        assert "connection" not in first[1]  # kept alive
        app_module.closing = True  # what a drain sets: a newer version took the port
        try:
            writer.write(post(data))
            (last,) = await answers(reader, 1)
            assert json.loads(last[2]) == labels and last[1]["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            app_module.closing = False

    serve(script, test)


def test_clients_that_leave_mid_body_or_mid_batch_leave_nothing_counted(script: Any, rows: Any) -> None:
    data, labels = rows

    async def test(app: CountingApp, port: int) -> None:
        assert app.batcher is not None
        request = post(data)
        for _ in range(20):  # headers and half a body, then gone
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request[: len(request) - 100])
            await writer.drain()
            await asyncio.sleep(0.01)
            assert app.batcher.incoming == 1  # its body is on its way: the batcher would wait for it
            writer.close()
            await writer.wait_closed()
            for _ in range(100):
                if app.batcher.incoming == 0:
                    break
                await asyncio.sleep(0.01)
            assert app.batcher.incoming == 0
        # many at once, each leaving as soon as its request is sent: the others are answered, nothing is left
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(16)]
        for i, (_reader, writer) in enumerate(clients):
            writer.write(request)
            if i % 2:
                writer.close()
        for i, (reader, _writer) in enumerate(clients):
            if i % 2 == 0:
                (answer,) = await answers(reader, 1)
                assert json.loads(answer[2]) == labels
        await asyncio.sleep(0.05)
        assert app.batcher.incoming == 0
        # and a lone client after all that is still predicted at once, not after waiting for company
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(data[:1]))
        (answer,) = await answers(reader, 1)
        assert json.loads(answer[2]) == labels[:1]
        writer.close()

    serve(script, test)


def test_the_access_log_has_direct_requests_too(script: Any, rows: Any, tmp_path: Path) -> None:
    from pipeline.serve.access import AccessLog

    data, _labels = rows
    log = AccessLog(str(tmp_path / "access.log"), 1 << 20)

    async def test(app: CountingApp, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(data, request_id="logged-1") + post([[1.0]], request_id="logged-2"))
        await answers(reader, 2)
        writer.close()
        log.flush()

    serve(script, test, access_log=log)
    log.close()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert [re.search(r'"(POST /score)" (\d+) \d+ [\d.]+ms (\S+)', line).groups() for line in lines] == [  # type: ignore[union-attr]
        ("POST /score", "200", "logged-1"),
        ("POST /score", "400", "logged-2"),
    ]
