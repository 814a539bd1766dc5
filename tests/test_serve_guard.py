"""Slow and abusive clients against a real service on 127.0.0.1, over real sockets (pipeline/serve/guard.py, budget.py,
access.py): silent, slow and stalled connections are closed, thousands of idle ones do not take it down, large
bodies stay within the memory limit, and every request is in a rotated access log."""

from __future__ import annotations

import json
import re
import resource
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline import spec as specs
from pipeline.serve import ServeConfig
from pipeline.serve.budget import MIN_BODY, PARSE_FACTOR, WORKER_GROWTH_MB, body_limit
from pipeline.targets import local
from tests.test_serve import DATA, ROOT, ROW, Service, model_dir, wait_for  # noqa: F401  (model_dir: a fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Any:  # noqa: F811
    services: list[Service] = []

    def starter(**config: Any) -> Service:
        config = {"entry_script": str(DATA / "score_fast.py"), "model_dir": str(model_dir), "workers": 2, **config}
        service = Service(tmp_path_factory.mktemp("guarded"), **config)
        services.append(service)
        service.wait_ready()
        service.ready()
        return service

    yield starter
    for service in services:
        service.stop()


def _connect(service: Service) -> socket.socket:
    port = service.ready()["port"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _read_until_closed(sock: socket.socket, wait_s: float = 15) -> bytes:
    """Everything the server sends until it closes the connection; fails if it never does within wait_s."""
    sock.settimeout(wait_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server did not close the connection within {wait_s} s; it sent {data[:200]!r}")
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return data


def _good(service: Service, timeout: float = 5) -> None:
    response = requests.post(service.url + "/score", data=json.dumps({"data": [ROW]}), timeout=timeout)
    assert response.status_code == 200, response.text


def test_silent_slow_and_stalled_clients_are_cut_off_and_counted(serve: Any) -> None:
    service = serve(header_timeout_s=1, body_timeout_s=1, keep_alive_s=1)
    silent = _connect(service)
    partial = _connect(service)
    partial.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
    stalled = _connect(service)
    stalled.sendall(b'POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n{"data": [[0')
    slowloris = _connect(service)
    for byte in b"POST /score HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 12:  # a byte each 0.1 s: never done in 1 s
        try:
            slowloris.send(bytes([byte]))
        except OSError:
            break  # closed: the deadline runs from the first byte, and no byte moves it
        time.sleep(0.1)
    _good(service)  # the service answers while all of them hang
    assert _read_until_closed(silent) == b""  # never sent a byte: closed without a word
    for sock, words in (
        (partial, b"request headers not received within 1 s"),
        (slowloris, b"request headers not received within 1 s"),
        (stalled, b"request body not received within 1 s"),
    ):
        answer = _read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408 ") and words in answer, answer
    keep_alive = _connect(service)
    body = json.dumps({"data": [ROW]}).encode()
    keep_alive.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert _read_until_closed(keep_alive).startswith(b"HTTP/1.1 200 OK")  # then idle past keep_alive_s: closed
    wait_for(
        lambda: (
            service.events()["counts"].get("header_timeouts", 0) >= 3
            and service.events()["counts"].get("body_timeouts", 0) >= 1
        )
    )
    assert "connection(s) closed: no complete request headers within 1 s" in service.log()
    _good(service)


def test_huge_headers_are_refused_with_431(serve: Any) -> None:
    service = serve(workers=1)
    sock = _connect(service)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 100_000 + b"\r\n")
    except OSError:
        pass
    answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"must not exceed 65536 bytes" in answer, answer[:200]
    _good(service)


def test_thousands_of_idle_connections_leave_the_service_answering(serve: Any) -> None:
    wanted = 6000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted + 1000), hard))
    service = serve(max_connections=500, header_timeout_s=60)
    port = service.ready()["port"]
    idle: list[socket.socket] = []
    try:
        for _ in range(wanted):  # several times what both workers may hold, like a flood of idle clients
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            idle.append(sock)
        for _ in range(20):  # a fresh connection each, as a new client would come
            _good(service)
        wait_for(lambda: service.events()["counts"].get("idle_closed", 0) > 0)
        for pid in service.ready()["workers"]:
            assert len(list(Path(f"/proc/{pid}/fd").iterdir())) < 500 + 100  # the cap, and a worker's own files
        assert "idle connection(s) closed to admit new ones at the cap of 500 open" in service.log()
    finally:
        for sock in idle:
            sock.close()


def test_at_the_cap_the_longest_sending_body_makes_room_for_a_newcomer(serve: Any) -> None:
    service = serve(workers=1, max_connections=5, body_timeout_s=30)
    busy = []
    try:
        for _ in range(5):  # each is sending a body, slowly: none is idle
            sock = _connect(service)
            sock.sendall(b'POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"data": [[')
            busy.append(sock)
            time.sleep(0.1)  # in this order
        _good(service)  # the newcomer is served
        answer = _read_until_closed(busy[0])  # the one that started first was closed for it
        assert answer.startswith(b"HTTP/1.1 503 ") and b"sending its body the longest" in answer, answer
        wait_for(lambda: service.events()["counts"].get("slow_bodies_closed", 0) >= 1)
    finally:
        for sock in busy:
            sock.close()


def test_concurrent_large_bodies_stay_within_the_memory_limit(serve: Any) -> None:
    service = serve(memory_limit_mb=700, request_timeout_ms=60_000)
    limits = {int(n) for n in re.findall(r"bodies up to (\d+) bytes", service.log())}
    assert len(limits) >= 1 and all(MIN_BODY < n < 100 * 2**20 for n in limits), limits
    limit = min(limits)
    rows = (limit - 20) // 3  # '[],' is the costliest body per byte to parse (about 35x its size)
    costly = b'{"data": [' + b",".join([b"[]"] * rows) + b"]}"
    row = b"[" + b",".join([b"0.0"] * 784) + b"]"
    real = b'{"data": [' + b",".join([row] * ((limit - 20) // (len(row) + 1))) + b"]}"
    assert len(costly) <= limit and len(real) <= limit

    def post(body: bytes) -> int:
        return requests.post(service.url + "/score", data=body, timeout=120).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(post, [costly, real, costly, real, costly, real]))
    assert statuses == [400, 200] * 3
    assert post(real + b" " * (max(limits) - len(real) + 1)) == 413  # over what any worker takes
    assert service.events()["counts"]["out_of_memory"] == 0
    _good(service)


def test_every_request_lands_in_the_access_log_which_rotates(serve: Any, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    service = serve(access_log=str(access), access_log_max_bytes=4096)
    with requests.Session() as session:
        for i in range(400):
            session.post(
                service.url + "/score", data=json.dumps({"data": [ROW]}), headers={"x-request-id": f"r-{i}"}, timeout=5
            )
            if i % 50 == 49:
                time.sleep(0.6)  # past a flush: the next batch finds the file over its size
    session_bad = requests.post(service.url + "/score", data=b"{", timeout=5)
    assert session_bad.status_code == 400
    wait_for(lambda: 'POST /score" 400' in access.read_text())
    files = [access, *(tmp_path / f"access.log.{n}" for n in (1, 2, 3))]
    assert all(f.exists() for f in files) and not (tmp_path / "access.log.4").exists()
    assert all(f.stat().st_size < 4096 + 2000 * 200 for f in files)
    lines = [line for f in files for line in f.read_text().splitlines()]
    pattern = re.compile(
        r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 127\.0\.0\.1:\d+ "POST /score" (200|400) \d+ '
        r"\d+\.\d{3}ms \S+ \d+$"
    )
    assert all(pattern.match(line) for line in lines), [line for line in lines if not pattern.match(line)][:3]
    assert any(" r-399 " in line for line in lines)  # the newest are kept; the oldest rotated away


def test_the_spec_settings_reach_the_host(tmp_path: Path) -> None:
    spec = specs.load(ROOT / "specs" / "mnist.yaml")
    folder = tmp_path / "service"
    config = local.service_config(
        spec, folder / "releases/1/app", folder / "m", None, folder / "releases/1/ready.json", 0
    )
    assert (config["header_timeout_s"], config["body_timeout_s"], config["keep_alive_s"]) == (10, 30, 5)
    assert config["max_connections"] == 1024 and config["access_log"] == str(folder / "access.log")
    ServeConfig(**config)  # a valid host config


def test_the_body_limit_is_the_share_of_memory_a_worst_case_parse_fits_in() -> None:
    assert body_limit(100 * 2**20, None, 2, 120, 30) == 100 * 2**20  # no memory limit: as configured
    limit = body_limit(100 * 2**20, 1024, 2, 120, 30)
    left = 1024 - 30 - 2 * (120 + WORKER_GROWTH_MB)
    assert limit == int(left * 2**20 / 2 / PARSE_FACTOR)
    assert 2 * (120 + WORKER_GROWTH_MB + limit * PARSE_FACTOR / 2**20) + 30 <= 1024
    assert body_limit(100 * 2**20, 200, 2, 120, 30) == MIN_BODY  # no room: the floor, and the memory limit acts
