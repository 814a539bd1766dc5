"""pipeline.serve: real services on 127.0.0.1 hosting real score.py files, stopped by PID after each use."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests

from pipeline.errors import UsageError
from pipeline.serve import ServeConfig

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXAMPLE_MODEL = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"
MNIST_DIRS = [ROOT / "examples" / "mnist" / "data"]
KEYS = {"primary": "p-key-1234", "secondary": "s-key-5678"}


def read_idx(name: str, offset: int) -> np.ndarray:
    folder = next(d for d in MNIST_DIRS if (d / name).exists())
    with gzip.open(folder / name) as handle:
        return np.frombuffer(handle.read(), np.uint8, offset=offset)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example model when it exists, else the tutorial-sized multinomial model trained here."""
    folder = tmp_path_factory.mktemp("model")
    if EXAMPLE_MODEL.exists():
        shutil.copy(EXAMPLE_MODEL, folder / "sklearn_mnist_model.pkl")
    else:
        import joblib
        from sklearn.linear_model import LogisticRegression

        images = read_idx("train-images.gz", 16).reshape(-1, 784) / 255.0
        model = LogisticRegression(C=100, solver="lbfgs", max_iter=1000).fit(images, read_idx("train-labels.gz", 8))
        joblib.dump(model, folder / "sklearn_mnist_model.pkl")
    return folder


@pytest.fixture(scope="session")
def test_images() -> np.ndarray:
    return read_idx("test-images.gz", 16).reshape(-1, 784) / 255.0


@pytest.fixture(scope="session")
def expected(model_dir: Path, test_images: np.ndarray) -> list[int]:
    import joblib

    return joblib.load(model_dir / "sklearn_mnist_model.pkl").predict(test_images).tolist()


class Service:
    """`python -m pipeline.serve CONFIG` in a subprocess; stop() ends it and every worker, by PID."""

    def __init__(self, folder: Path, **config: Any) -> None:
        self.folder = folder
        self.ready_file = folder / "ready.json"
        self.log_file = folder / "service.log"
        config.setdefault("ready_file", str(self.ready_file))
        self.config_file = folder / "config.json"
        self.config_file.write_text(ServeConfig(**config).to_json())
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.serve", str(self.config_file)],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pids: set[int] = {self.process.pid}

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        until = time.monotonic() + timeout
        while not self.ready_file.exists():
            assert self.process.poll() is None, f"service exited early:\n{self.log()}"
            assert time.monotonic() < until, f"service not ready after {timeout} s:\n{self.log()}"
            time.sleep(0.05)
        info = self.ready()
        self.url = info["scoring_uri"].rsplit("/", 1)[0]
        return info

    def ready(self) -> dict[str, Any]:
        info = json.loads(self.ready_file.read_text())
        self.pids.update(info["workers"])
        return info

    def events(self) -> dict[str, Any]:
        return json.loads((self.folder / "ready.events.json").read_text())

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def post(self, body: Any, **kwargs: Any) -> requests.Response:
        data = json.dumps(body) if isinstance(body, (dict, list)) else body
        return requests.post(self.url + "/score", data=data, timeout=30, **kwargs)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self.pids - {self.process.pid}:  # workers outlive nothing: check, by PID
            try:
                worker = psutil.Process(pid)
                if worker.ppid() == self.process.pid or worker.cmdline()[-1:] == ["pipeline.serve.worker"]:
                    worker.kill()
            except psutil.Error:
                pass
        return self.process.returncode


@pytest.fixture
def start(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Any]:
    services: list[Service] = []

    def starter(script: str, **config: Any) -> Service:
        config = {"entry_script": str(DATA / script), "model_dir": str(model_dir), "workers": 2, **config}
        service = Service(tmp_path_factory.mktemp("service"), **config)
        services.append(service)
        service.wait_ready()
        return service

    yield starter
    for service in services:
        service.stop()


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Service]:
    service = Service(
        tmp_path_factory.mktemp("fast"),
        entry_script=str(DATA / "score_fast.py"),
        model_dir=str(model_dir),
        workers=2,
        max_body_bytes=2_000_000,
        swagger={"swagger": "2.0", "info": {"title": "mnist"}},
    )
    service.wait_ready()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("tutorial")
    (folder / "keys.json").write_text(json.dumps(KEYS))
    service = Service(
        folder,
        entry_script=str(DATA / "score_tutorial.py"),
        model_dir=str(model_dir),
        workers=2,
        keys_file=str(folder / "keys.json"),
        features=784,
    )
    service.wait_ready()
    yield service
    service.stop()


BEARER = {"Authorization": f"Bearer {KEYS['primary']}"}
ROW = [0.0] * 784
BAD_BODIES = {
    "malformed JSON": (b'{"data": [[1, 2', "not valid JSON"),
    "not UTF-8": (b'{"data": [[\xff]]}', ""),
    "missing data": ({"rows": [ROW]}, '"data"'),
    "data not a list": ({"data": 5}, '"data"'),
    "ragged rows": ({"data": [ROW, ROW[:12]]}, "data[1] has 12 values"),
    "wrong row length": ({"data": [ROW[:12]]}, "data[0] has 12 values, expected 784"),
    "a string": ({"data": [["x", *ROW[1:]]]}, "data[0][0] is not a number"),
    "a null": ({"data": [[*ROW[:5], None, *ROW[6:]]]}, "data[0][5] is not a number"),
    "a boolean": ({"data": [[True, *ROW[1:]]]}, "data[0][0] is not a number"),
    "NaN": (b'{"data": [[NaN' + b", 0" * 783 + b"]]}", "NaN or Infinity"),
    "Infinity": (b'{"data": [[-Infinity' + b", 0" * 783 + b"]]}", "NaN or Infinity"),
}


def test_config_round_trip_and_every_problem_at_once(tmp_path: Path) -> None:
    config = ServeConfig(entry_script="/s/score.py", model_dir="/m", workers=2, swagger={"a": 1})
    path = tmp_path / "c.json"
    path.write_text(config.to_json())
    assert ServeConfig.from_json(str(path)) == config
    assert config.resolved_app_root == "/s"
    with_ready = ServeConfig(entry_script="s", model_dir="m", ready_file="/r/x.json")
    assert with_ready.resolved_events_file == "/r/x.events.json"
    with pytest.raises(UsageError) as error:
        ServeConfig(entry_script="s", model_dir="m", workers=0, port=70000, memory_limit_mb=True)
    assert all(word in str(error.value) for word in ("workers", "port", "memory_limit_mb"))
    path.write_text(json.dumps({"entry_script": "s", "model_dir": "m", "wokers": 2}))
    with pytest.raises(UsageError, match=r"unknown keys.*wokers"):
        ServeConfig.from_json(str(path))


def test_routes_methods_and_swagger(fast: Service) -> None:
    health = requests.get(fast.url + "/", timeout=5)
    assert (health.status_code, health.text) == (200, "Healthy")
    assert requests.head(fast.url + "/", timeout=5).status_code == 200
    wrong = (("GET", "/score", "POST"), ("POST", "/", "GET, HEAD"), ("PUT", "/swagger.json", "GET, HEAD"))
    for method, path, allow in wrong:
        response = requests.request(method, fast.url + path, timeout=5)
        assert response.status_code == 405 and response.headers["allow"] == allow
        assert "not allowed" in response.json()["error"]
    missing = requests.get(fast.url + "/nope", timeout=5)
    assert missing.status_code == 404 and "/score" in missing.json()["error"]
    assert requests.get(fast.url + "/swagger.json", timeout=5).json() == {"swagger": "2.0", "info": {"title": "mnist"}}
    assert fast.post({"data": [ROW]}).status_code == 200
    assert requests.post(fast.url + "/score/", data=json.dumps({"data": [ROW]}), timeout=5).status_code == 200


def test_headers_request_ids_and_timing(fast: Service) -> None:
    response = fast.post({"data": [ROW]}, headers={"x-request-id": "abc-123", "x-ms-client-request-id": "client-9"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["x-ms-request-id"] == "client-9"
    assert response.headers["x-ms-client-request-id"] == "client-9"
    assert float(response.headers["x-ms-run-fn-exec-ms"]) >= 0
    assert response.headers["content-type"] == "application/json"
    generated = fast.post({"data": [ROW]}).headers["x-request-id"]
    assert len(generated) == 36 and generated.count("-") == 4
    assert fast.post({"data": [ROW]}, headers={"x-request-id": "x" * 101}).status_code == 431


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_is_400_and_the_service_keeps_serving(fast: Service, tutorial: Service, case: str) -> None:
    body, fragment = BAD_BODIES[case]
    services = [(fast, {}), (tutorial, BEARER)]
    if case == "a boolean":
        services = services[:1]  # the tutorial's run() takes true as 1.0 (numpy does), and the host lets it
    for service, headers in services:
        response = service.post(body, headers=headers)
        assert response.status_code == 400, (service.config_file, response.text)
        assert fragment in response.json()["error"]
        assert service.post({"data": [ROW]}, headers=headers).status_code == 200


def test_body_too_large_is_413_by_length_and_while_streaming(fast: Service) -> None:
    big = b'{"data": [[' + b"0," * 1_100_000 + b"0]]}"
    assert fast.post(big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"data": [['
        for _ in range(40):
            yield b"0," * 50_000
        yield b"0]]}"

    response = fast.post(chunks())
    assert response.status_code == 413 and "2000000 bytes" in response.json()["error"]
    assert fast.post({"data": [ROW]}).status_code == 200


def test_auth_on_score_and_swagger_but_not_health(tutorial: Service) -> None:
    assert tutorial.post({"data": [ROW]}).status_code == 401
    assert tutorial.post({"data": [ROW]}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for key in KEYS.values():
        assert tutorial.post({"data": [ROW]}, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert requests.get(tutorial.url + "/swagger.json", timeout=5).status_code == 401
    assert requests.get(tutorial.url + "/swagger.json", headers=BEARER, timeout=5).status_code == 404
    assert requests.get(tutorial.url + "/", timeout=5).status_code == 200
    assert all(key not in tutorial.log() for key in KEYS.values())


def test_tutorial_script_unchanged_matches_local_predict(
    tutorial: Service, test_images: np.ndarray, expected: list[int]
) -> None:
    answers: list[int] = []
    for start_row in range(0, len(test_images), 100):
        response = tutorial.post({"data": test_images[start_row : start_row + 100].tolist()}, headers=BEARER)
        assert response.status_code == 200
        # run() returns a str; the host JSON-encodes it, as Azure's server does.
        assert isinstance(response.json(), str)
        answers += json.loads(response.json())
    assert answers == expected


def test_fast_script_batched_and_concurrent_singles_match_local_predict(
    fast: Service, test_images: np.ndarray, expected: list[int]
) -> None:
    batched: list[int] = []
    for start_row in range(0, len(test_images), 125):
        batched += fast.post({"data": test_images[start_row : start_row + 125].tolist()}).json()
    assert batched == expected
    local = threading.local()

    def one(index: int) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        body = json.dumps({"data": [test_images[index].tolist()]})
        response = local.session.post(fast.url + "/score", data=body, timeout=30)
        assert response.status_code == 200
        return int(response.json()[0])

    with ThreadPoolExecutor(32) as pool:  # concurrent singles: these are micro-batched together
        assert list(pool.map(one, range(len(test_images)))) == expected


def test_run_failures_timeouts_and_odd_answers(start: Any) -> None:
    service = start("score_misbehave.py", request_timeout_ms=500)
    failed = service.post({"raise": True}, headers={"x-request-id": "boom-1"})
    assert failed.status_code == 500 and failed.json() == {
        "error": "internal error in run(); see the service log",
        "request_id": "boom-1",
    }
    assert "Traceback" not in failed.text and "RuntimeError: the score script failed on purpose" in service.log()
    started = time.monotonic()
    slow = service.post({"sleep_ms": 3000})
    assert slow.status_code == 504 and "500 ms" in slow.json()["error"]
    assert time.monotonic() - started < 2.5
    assert service.post({"return": "str"}).content == b'"[7, 2]"'
    assert service.post({"return": "numpy"}).json() == {"labels": [0, 1, 2], "score": 0.5}
    teapot = service.post({"return": "teapot"})
    assert (teapot.status_code, teapot.json()) == (418, {"error": "short and stout"})
    assert service.post({}).json() == {"ok": True, "pid_seen": True}


def test_batching_path_times_out_alone(start: Any) -> None:
    service = start("score_slow_batch.py", request_timeout_ms=500, workers=1)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(service.post, {"data": [[-1.0, 2.0]]})
        time.sleep(0.1)
        fine = pool.submit(service.post, {"data": [[3.0, 2.0]]})
        assert slow.result().status_code == 504
        assert fine.result().status_code in (200, 504)  # queued behind the slow batch: its deadline may pass too
    assert service.post({"data": [[5.0, 1.0]]}).json() == [5]


def test_killed_worker_is_replaced_and_memory_limit_enforced(start: Any) -> None:
    service = start("score_misbehave.py", memory_limit_mb=400)
    before = service.ready()["workers"]
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: len(set(service.ready()["workers"]) - {before[0]}) == 2)
    assert service.events()["counts"]["worker_exited"] == 1
    assert service.post({}).status_code == 200
    try:
        service.post({"alloc_mb": 500})  # may answer before the next poll kills its worker
    except requests.ConnectionError:
        pass
    wait_for(lambda: service.events()["counts"]["out_of_memory"] == 1)
    killed = next(e for e in service.events()["events"] if e["kind"] == "out_of_memory")
    wait_for(lambda: len(set(service.ready()["workers"]) - {killed["pid"]}) == 2)
    assert "out of memory: worker" in service.log() and "limit 400 MB" in service.log()
    assert killed["total_mb"] > 400 and killed["limit_mb"] == 400 and killed["rss_mb"] > 100
    assert all(service.post({}).status_code == 200 for _ in range(10))


def test_a_memory_spike_between_polls_is_still_caught(start: Any) -> None:
    service = start("score_misbehave.py", memory_limit_mb=400, workers=1)
    try:
        service.post({"spike_mb": 500})  # freed at once: only the peak since the last poll can see it
    except requests.ConnectionError:
        pass  # or the poll came in the middle of it, as a container's kill would
    wait_for(lambda: service.events()["counts"]["out_of_memory"] == 1)
    assert "limit 400 MB" in service.log()


def test_sigterm_finishes_in_flight_requests_and_exits_0(start: Any) -> None:
    service = start("score_misbehave.py", workers=1)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(service.post, {"sleep_ms": 800})
        time.sleep(0.3)
        assert service.stop() == 0
        assert in_flight.result().status_code == 200
    assert not service.ready_file.exists()


def test_init_failure_stops_the_service_with_a_message(tmp_path: Path, model_dir: Path) -> None:
    service = Service(tmp_path, entry_script=str(DATA / "score_broken.py"), model_dir=str(model_dir), workers=2)
    try:
        assert service.process.wait(timeout=30) == 1
    finally:
        service.stop()
    assert "init() of" in service.log() and "sklearn_mnist_model.pkl is not in AZUREML_MODEL_DIR" in service.log()
    assert not service.ready_file.exists()


def test_load_32_connections_has_no_failures(fast: Service, test_images: np.ndarray, tmp_path: Path) -> None:
    body = json.dumps({"data": [test_images[0].tolist()]})
    if shutil.which("wrk") is None:
        ok, failed = python_load(fast.url + "/score", body, connections=32, seconds=5)
        assert failed == 0 and ok > 500
        return
    (tmp_path / "body.json").write_text(body)
    lua = tmp_path / "post.lua"
    lua.write_text(
        f'wrk.method = "POST"\nlocal f = io.open("{tmp_path / "body.json"}", "rb")\n'
        'wrk.body = f:read("*all")\nf:close()\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    out = subprocess.run(
        ["wrk", "-t2", "-c32", "-d5s", "--timeout", "5s", "-s", str(lua), fast.url + "/score"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "requests in" in out, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    assert int(out.split(" requests in")[0].split()[-1]) > 1000


def python_load(url: str, body: str, connections: int, seconds: float) -> tuple[int, int]:
    """Where wrk is missing: `connections` keep-alive clients for `seconds`; (answered 200, failed)."""
    until = time.monotonic() + seconds

    def client() -> tuple[int, int]:
        ok = failed = 0
        with requests.Session() as session:
            while time.monotonic() < until:
                try:
                    status = session.post(url, data=body, timeout=10).status_code
                except requests.RequestException:
                    status = 0
                ok, failed = ok + (status == 200), failed + (status != 200)
        return ok, failed

    with ThreadPoolExecutor(connections) as pool:
        results = list(pool.map(lambda _: client(), range(connections)))
    ok = sum(r[0] for r in results)
    return ok, sum(r[1] for r in results)


def wait_for(condition: Any, timeout: float = 15) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            if condition():
                return
        except (OSError, ValueError, KeyError):
            pass  # a file mid-replace or not written yet
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_workers_exit_when_the_supervisor_is_killed(start: Any) -> None:
    service = start("score_misbehave.py", workers=1)
    workers = service.ready()["workers"]
    service.process.kill()  # SIGKILL: no chance to stop its workers itself
    service.process.wait()
    wait_for(
        lambda: (
            not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers)
        )
    )


def test_a_taken_port_is_an_error_not_a_shared_one(fast: Service, tmp_path: Path, model_dir: Path) -> None:
    port = fast.ready()["port"]
    service = Service(tmp_path, entry_script=str(DATA / "score_misbehave.py"), model_dir=str(model_dir), port=port)
    try:
        assert service.process.wait(timeout=30) == 1
    finally:
        service.stop()
    assert "Address already in use" in service.log() and not service.ready_file.exists()
