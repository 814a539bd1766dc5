"""The ray target on a real local Ray cluster, the whole pipeline, inside a loopback-only network namespace.

Ray binds some ports on every interface (each Serve replica's gRPC server), so these tests never run on the
machine's own network: the module re-runs itself under `unshare --net` (tests/netns.py) and reports the inner
run as one test. Inside, the tests share one service and run in order: run (after a cluster left by a killed
deploy), answers, no-op, the only replica replaced under load, 1 -> 2 replicas and a tag under load, a new
request timeout, a killed replica, delete.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from tests import netns
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NAME = "sklearn-mnist-svc"


def test_ray_target_in_a_loopback_only_network_namespace():
    netns.rerun_inside(__file__, "not loopback_only_network_namespace")


needs_namespace = netns.inside_only


def cli(*args: str) -> tuple[int, str, str]:
    from pipeline import cli as pipeline_cli

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = pipeline_cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = root / "specs" / "mnist-ray.yaml"

    def state(self) -> dict:
        return json.loads((self.root / ".pipeline" / NAME / "state.json").read_text())

    def record(self) -> dict:
        return self.state()["service"]

    def edit(self, old: str, new: str) -> None:
        text = self.spec.read_text()
        assert old in text, old
        self.spec.write_text(text.replace(old, new))

    def status(self) -> dict:
        code, out, err = cli("status", self.spec, "--json")
        answer = json.loads(out)
        assert code == (0 if answer["state"] == "live" else 1), err  # status exits 0 only for a live service
        return answer


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """specs/mnist.yaml with deploy.target: ray, in a throw-away project; its cluster is stopped by PID after."""
    root = tmp_path_factory.mktemp("ray") / "project"
    (root / "specs").mkdir(parents=True)
    shutil.copytree(
        ROOT / "examples" / "mnist", root / "examples" / "mnist", ignore=shutil.ignore_patterns("__pycache__")
    )
    text = (ROOT / "specs" / "mnist.yaml").read_text()
    assert "target: local" in text
    (root / "specs" / "mnist-ray.yaml").write_text(text.replace("target: local", "target: ray"))
    saved = {k: os.environ.get(k) for k in ("PIPELINE_HOME", "PIPELINE_REPORTS", "NO_COLOR")}
    os.environ.update(PIPELINE_HOME=str(root / ".pipeline"), PIPELINE_REPORTS=str(root / "reports"), NO_COLOR="1")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield Project(root)
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        from pipeline.targets import ray_cluster

        cluster = ray_cluster.recorded(root / ".pipeline" / NAME / "service")
        if cluster is not None:
            ray_cluster.stop(cluster)  # by PID, whatever a failed test left


def _post(port: int, path: str, body: bytes | None, method: str = "POST", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def _images(count: int, seed: int = 7) -> tuple[list[list[float]], list[int]]:
    import joblib
    import numpy

    from pipeline import data

    dataset = data.load_dataset(
        ROOT / "examples" / "mnist" / "data" / "test-images.gz", ROOT / "examples" / "mnist" / "data" / "test-labels.gz"
    )
    rows = numpy.random.default_rng(seed).choice(len(dataset.X), count, replace=False)
    X = dataset.X[rows] / 255
    model = joblib.load(ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl")
    return X.tolist(), model.predict(X).tolist()


@needs_namespace
def test_run_brings_up_a_serve_application_whose_smoke_test_passes(project):
    from pipeline.console import Console
    from pipeline.targets import ray_cluster

    # what a deploy killed (-9) right after `ray start` leaves: a running cluster named only by cluster.json
    service_dir = project.root / ".pipeline" / NAME / "service"
    service_dir.mkdir(parents=True)
    stray = ray_cluster.processes(ray_cluster.start(service_dir, Console(quiet=True), 120))
    assert stray
    status = project.status()
    assert status["state"] == "orphaned" and f"head pid {stray[0]}" in status["orphans"][0], status
    started = time.monotonic()
    code, out, err = cli("run", project.spec)
    assert code == 0, out + err
    assert [pid for pid in stray if ray_cluster.pid_alive(pid)] == []  # stopped by PID before a new one started
    record = project.record()
    assert record["target"] == "ray"
    assert record["scoring_uri"].startswith("http://127.0.0.1:") and record["scoring_uri"].endswith(f"/{NAME}/score")
    assert project.state()["stages"]["smoke"]["outputs"]["agree"] is True
    cluster = record["cluster"]
    assert cluster["owned"] and cluster["head_pid"] > 0
    status = project.status()
    assert status["state"] == "live", status
    assert "1/1 replicas" in status["detail"] and "RUNNING (pid " in status["detail"]
    print(f"cold start (the whole run): {time.monotonic() - started:.1f} s")


@needs_namespace
def test_answers_equal_the_local_predictions_and_errors_are_json(project):
    record = project.record()
    port = int(record["scoring_uri"].split(":")[2].split("/")[0])
    rows, expected = _images(30)
    status, body, headers = _post(port, f"/{NAME}/score", json.dumps({"data": rows}).encode())
    assert status == 200 and json.loads(body) == expected
    assert headers.get("x-ms-run-function-failed") == "False" and "x-request-id" in headers
    assert _post(port, f"/{NAME}/", None, "GET")[:2] == (200, b"Healthy")
    swagger = _post(port, f"/{NAME}/swagger.json", None, "GET")
    assert swagger[0] == 200 and json.loads(swagger[1])["paths"]["/score"]["post"]["operationId"] == "score"
    for body, code, words in (
        (b"{bad", 400, "not valid JSON"),
        (b'{"data": [[1, 2]]}', 400, "has 2 values"),
        (b'{"data": []}', 400, "non-empty"),
        (b"[1]", 400, '"data"'),
    ):
        got = _post(port, f"/{NAME}/score", body)
        assert got[0] == code and words in json.loads(got[1])["error"], got
    assert _post(port, f"/{NAME}/score", None, "GET")[0] == 405
    assert _post(port, f"/{NAME}/nope", None, "GET")[0] == 404
    too_long = _post(port, f"/{NAME}/score", b"{}", headers={"x-request-id": "x" * 101})
    assert too_long[0] == 431


@needs_namespace
def test_a_second_run_is_a_no_op_and_plan_says_so(project):
    code, out, err = cli("run", project.spec)
    assert code == 0, out + err
    assert "deploy    skipped" in out and "0 ran, 7 skipped" in out
    code, out, err = cli("plan", project.spec, "--detailed-exitcode")
    assert code == 0, out + err


class Load:
    """8 keep-alive connections posting one image each, until stopped; every non-200 answer or error counts."""

    def __init__(self, port: int, path: str) -> None:
        rows, self.expected = _images(8, seed=3)
        self.bodies = [json.dumps({"data": [row]}).encode() for row in rows]
        self.port, self.path = port, path
        self.stop = threading.Event()
        self.ok = 0
        self.slowest = 0.0  # seconds: how long a request waited at worst (printed, never asserted)
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(8)]

    def client(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        deadline = time.monotonic() + 300  # bounded even if nobody stops it
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                sent = time.monotonic()
                conn.request("POST", self.path, body=self.bodies[index], headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                body = response.read()
                good = response.status == 200 and json.loads(body) == [self.expected[index]]
                with self.lock:
                    self.slowest = max(self.slowest, time.monotonic() - sent)
                    if good:
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status} {body[:100]!r}")
            except Exception as exc:  # noqa: BLE001  any error is a failed request
                with self.lock:
                    self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def _port(record: dict) -> int:
    return int(record["scoring_uri"].split(":")[2].split("/")[0])


@needs_namespace
def test_replacing_the_only_replica_fails_no_request_under_load(project):
    """A new memory_gb is a new ray_actor_options: Serve stops the one replica and starts another; requests wait."""
    record = project.record()
    project.edit("  memory_gb: 1\n", "  memory_gb: 1.5\n")
    code, out, err = cli("plan", project.spec)
    assert code == 0 and "with one replica, the old one stops before its successor is up" in out, out + err
    with Load(_port(record), f"/{NAME}/score") as load:
        time.sleep(1)
        code, out, err = cli("run", project.spec)
        time.sleep(1)
    assert code == 0, out + err
    assert load.failures == [], load.failures[:10]
    new = project.record()
    assert len(new["replicas"]) == 1 and set(new["replicas"]) != set(record["replicas"])  # replaced, not reconfigured
    assert new["config"]["applications"][0]["deployments"][0]["ray_actor_options"]["memory"] == int(1.5 * 1024**3)
    print(f"the only replica replaced under load: {load.ok} requests answered, 0 failed, slowest {load.slowest:.1f} s")


@needs_namespace
def test_an_update_to_two_replicas_and_a_tag_fails_no_request_under_load(project):
    record = project.record()
    port = _port(record)
    project.edit("tags: {data: MNIST, method: sklearn}", "tags: {data: MNIST, method: sklearn, stage: canary}")
    project.edit("  local: {port: 0}", "  local: {port: 0}\n  ray: {replicas: 2}")
    code, out, err = cli("plan", project.spec, "--detailed-exitcode")
    assert code == 2 and "update" in out, out + err
    with Load(port, f"/{NAME}/score") as load:
        time.sleep(1)
        code, out, err = cli("run", project.spec)
        time.sleep(1)
    assert code == 0, out + err
    assert load.failures == [], load.failures[:10]
    assert load.ok > 50, load.ok
    new = project.record()
    assert new["scoring_uri"] == record["scoring_uri"] and new["cluster"]["head_pid"] == record["cluster"]["head_pid"]
    assert len(new["replicas"]) == 2 and new["previous_config"] == record["config"]
    status = project.status()
    assert status["state"] == "live" and "2/2 replicas" in status["detail"], status
    from pipeline.targets.ray_cluster import Rest

    live = Rest(new["cluster"]["dashboard"]).details()["applications"][NAME]
    assert live["deployed_app_config"]["deployments"][0]["user_config"]["tags"]["stage"] == "canary"
    print(f"update under load: {load.ok} requests answered, {len(load.failures)} failed")


@needs_namespace
def test_a_new_request_timeout_restarts_serve_so_its_proxy_takes_it(project):
    """Serve ignores new HTTP options while it runs; on a cluster of the service's own, deploy restarts it."""
    from pipeline.targets.ray_cluster import Rest

    record = project.record()
    rest = Rest(record["cluster"]["dashboard"])
    assert rest.details()["http_options"]["request_timeout_s"] == 6.0  # 5000 ms and Serve's 1 s margin
    project.edit("request_timeout_ms: 5000", "request_timeout_ms: 9000")
    code, out, err = cli("plan", project.spec)
    assert code == 0 and "Serve takes its new request timeout (6 s -> 10 s) only when it starts" in out, out + err
    code, out, err = cli("run", project.spec)
    assert code == 0, out + err
    assert rest.details()["http_options"]["request_timeout_s"] == 10.0
    new = project.record()
    assert new["scoring_uri"] == record["scoring_uri"] and new["cluster"]["head_pid"] == record["cluster"]["head_pid"]
    status = project.status()
    assert status["state"] == "live" and status["drift"] == [], status


@needs_namespace
def test_a_killed_replica_is_drift(project):
    record = project.record()
    from pipeline.targets.ray_cluster import Rest

    replicas = Rest(record["cluster"]["dashboard"]).details()["applications"][NAME]["deployments"]["scoring"][
        "replicas"
    ]
    victim = replicas[0]
    os.kill(int(victim["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        status = project.status()
        if status["drift"]:
            break
        assert time.monotonic() < deadline, f"no drift reported after a replica was killed: {status}"
        time.sleep(0.5)
    assert status["state"] != "live"
    assert any(victim["replica_id"] in line for line in status["drift"]), status["drift"]
    code, out, err = cli("plan", project.spec, "--detailed-exitcode")
    assert code == 2 and "replace" in out, out + err


@needs_namespace
def test_delete_leaves_no_ray_process_behind(project):
    from pipeline.targets import ray_cluster

    recorded = project.record()["cluster"]
    cluster = ray_cluster.Cluster.of(recorded)
    pids = ray_cluster.processes(cluster)
    assert cluster.head_pid in pids and len(pids) > 5
    code, out, err = cli("delete", project.spec)
    assert code == 0, out + err
    assert "stopped the local Ray cluster" in out
    alive = [pid for pid in pids if ray_cluster.pid_alive(pid)]
    assert alive == [], f"still running after delete: {alive}"
    assert ray_cluster.processes(cluster) == []
    assert not Path(cluster.alias or "/nonexistent").exists()
    service_dir = project.root / ".pipeline" / NAME / "service"
    assert not (service_dir / "ray").exists() and not (service_dir / "cluster.json").exists()
    code, out, err = cli("status", project.spec)
    assert code == 1 and "not deployed" in out


@needs_namespace
def test_on_a_cluster_elsewhere_a_runner_without_state_plans_from_the_stamp(tmp_path, monkeypatch):
    """deploy.ray.address: a cluster the service does not own, shared by two projects as by two CI runners."""
    from pipeline.console import Console
    from pipeline.targets import ray_cluster

    (tmp_path / "elsewhere").mkdir()
    cluster = ray_cluster.start(tmp_path / "elsewhere", Console(quiet=True), 120)
    try:
        runners = []
        for name in ("a", "b"):  # the same spec in two checkouts, each with its own (empty) state
            root = tmp_path / name
            (root / "specs").mkdir(parents=True)
            shutil.copytree(
                ROOT / "examples" / "mnist", root / "examples" / "mnist", ignore=shutil.ignore_patterns("__pycache__")
            )
            text = (ROOT / "specs" / "mnist.yaml").read_text().replace("target: local", "target: ray")
            (root / "specs" / "mnist-ray.yaml").write_text(
                text.replace("  local: {port: 0}", f"  ray: {{address: '{cluster.dashboard}'}}")
            )
            runners.append(Project(root))
        a, b = runners

        def on(runner: Project, *args: str) -> tuple[int, str, str]:
            monkeypatch.chdir(runner.root)
            monkeypatch.setenv("PIPELINE_HOME", str(runner.root / ".pipeline"))
            monkeypatch.setenv("PIPELINE_REPORTS", str(runner.root / "reports"))
            return cli(*args, runner.spec)

        def deploy_step(runner: Project) -> dict:
            code, out, err = on(runner, "plan", "--json")
            assert code == 0, out + err
            return next(s for s in json.loads(out)["steps"] if s["stage"] == "deploy")

        assert deploy_step(b)["deploy"]["action"] == "create"  # nothing of that name on the cluster yet
        code, out, err = on(a, "run")
        assert code == 0, out + err
        record = a.record()
        assert record["cluster"] == {**record["cluster"], "owned": False, "dashboard": cluster.dashboard}
        assert record["config"]["applications"][0]["deployments"][0]["user_config"]["stamp"]["pipeline-spec"] == NAME
        step = deploy_step(b)  # b has no state at all: it finds the application by name, and reads its stamp
        assert step["deploy"]["action"] == "no-op" and "carries this spec's digest" in step["deploy"]["live"], step
        b.edit("tags: {data: MNIST, method: sklearn}", "tags: {data: MNIST, method: scikit-learn}")
        step = deploy_step(b)
        assert step["deploy"]["action"] == "update", step
        assert {"path": "tags.method", "old": "sklearn", "new": "scikit-learn"} in step["deploy"]["fields"], step
        code, out, err = on(a, "delete")
        assert code == 0 and f"removed Serve application {NAME} from the cluster at {cluster.dashboard}" in out, out
        assert deploy_step(b)["deploy"]["action"] == "create"
        assert ray_cluster.processes(cluster)  # a cluster the service does not own keeps running
    finally:
        print(ray_cluster.stop(cluster))
