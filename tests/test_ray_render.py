"""Fast tests of the ray target without a cluster: rendered configs (golden files), rules, the deployed-config
overlay and merge, drift, the application module's HTTP contract, and probe/delete against a fake Ray dashboard
(a real HTTP server on 127.0.0.1 standing in for a remote cluster we cannot reach)."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import importlib.util
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
import yaml

from pipeline import render
from pipeline import spec as specs
from pipeline.errors import RenderError, SpecError
from tests.test_render import CASES, write_spec

pytest.importorskip("ray.serve", reason="needs the ray extra: pip install '.[ray]'")

from pipeline.targets import ray as ray_target
from pipeline.targets import ray_config
from pipeline.targets.base import ServiceRecord
from pipeline.targets.ray_cluster import Cluster, Rest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "ray"
UPDATE = os.environ.get("PIPELINE_UPDATE_GOLDEN") == "1"  # rewrite the golden files instead of comparing


def _ray_spec(tmp_path: Path, **deploy) -> specs.Spec:
    return specs.load(write_spec(tmp_path, deploy={"target": "ray", **deploy}))


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs from its golden file (PIPELINE_UPDATE_GOLDEN=1 rewrites it)"
    )


@pytest.mark.parametrize(
    "variant, deploy",
    [
        ("fixed", {"ray": {"replicas": 2}}),
        (
            "autoscaling",
            {
                "cpu_cores": 0.5,
                "memory_gb": 1.5,
                "request_timeout_ms": 2500,
                "ray": {
                    "autoscaling": {"max_replicas": 6, "target_ongoing_requests": 4},
                    "route_prefix": "/mnist",
                    "working_dir": "https://example.invalid/app.zip",
                },
            },
        ),
    ],
)
def test_rendered_serve_config_and_rayservice_match_their_golden_files(tmp_path, variant, deploy):
    files = render.render_all(_ray_spec(tmp_path, **deploy))
    assert {"serve_app.py", "serve_config.yaml", "rayservice.yaml", "swagger.json", "score.py", "myenv.yml"} <= set(
        files
    )
    _golden(f"{variant}/serve_config.yaml", files["serve_config.yaml"])
    _golden(f"{variant}/rayservice.yaml", files["rayservice.yaml"])
    service = yaml.safe_load(files["rayservice.yaml"])
    assert service["spec"]["serveConfigV2"] == files["serve_config.yaml"]  # KubeRay gets the very same config
    assert "ray[serve]==2.60.0" in files["myenv.yml"]


def test_resources_and_timeouts_reach_serves_own_fields(tmp_path):
    config = yaml.safe_load(
        render.render_all(
            _ray_spec(tmp_path, cpu_cores=0.5, memory_gb=2, request_timeout_ms=1500, ray={"autoscaling": {}})
        )["serve_config.yaml"]
    )
    app = config["applications"][0]
    deployment = app["deployments"][0]
    assert app["route_prefix"] == "/sklearn-mnist-svc" and app["import_path"] == "serve_app:build"
    assert deployment["ray_actor_options"] == {"num_cpus": 0.5, "memory": 2 * 1024**3}
    assert deployment["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}
    assert "num_replicas" not in deployment
    assert app["args"]["request_timeout_ms"] == 1500 and config["http_options"]["request_timeout_s"] == 2.5
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)


@pytest.mark.parametrize("text", CASES)
def test_spec_strings_come_out_of_the_serve_config_unchanged(tmp_path, text):
    spec = specs.load(write_spec(tmp_path, description=text, tags={"note": text}, deploy={"target": "ray"}))
    files = render.render_all(spec)
    stamp = yaml.safe_load(files["serve_config.yaml"])["applications"][0]["deployments"][0]["user_config"]
    assert stamp["description"] == text and stamp["tags"] == {"note": text}
    assert yaml.safe_load(files["rayservice.yaml"])["spec"]["serveConfigV2"] == files["serve_config.yaml"]


def test_a_template_that_serve_rejects_is_a_render_error(tmp_path):
    overrides = tmp_path / "templates" / "ray"
    overrides.mkdir(parents=True)
    good = (ROOT / "templates" / "ray" / "serve_config.yaml.j2").read_text()
    (overrides / "serve_config.yaml.j2").write_text(
        good.replace('import_path: "serve_app:build"', 'import_path: "nocolon"')
    )
    spec = specs.load(write_spec(tmp_path, templates="templates", deploy={"target": "ray"}))
    with pytest.raises(RenderError, match=r"not accepted by Ray Serve: applications\.0\.import_path"):
        render.render_all(spec)


@pytest.mark.parametrize(
    "deploy, message",
    [
        (
            {"ray": {"replicas": 2, "autoscaling": {}}},
            "deploy.ray.autoscaling: cannot be combined with deploy.ray.replicas",
        ),
        (
            {"ray": {"autoscaling": {"min_replicas": 5, "max_replicas": 2}}},
            "deploy.ray.autoscaling.min_replicas: must not exceed max_replicas (2)",
        ),
        (
            {"ray": {"route_prefix": "/mnist/"}},
            "deploy.ray.route_prefix: '/mnist/': Serve takes no '//' and no trailing '/'",
        ),
        (
            {"ray": {"address": "ray://head:10001"}},
            "deploy.ray.address: 'ray://head:10001' must be the Ray dashboard's http(s):// URL",
        ),
        ({"ray": {"working_dir": "/local/folder"}}, "deploy.ray.working_dir: '/local/folder' must be a remote URI"),
    ],
)
def test_rules_name_the_field_and_line(tmp_path, deploy, message):
    path = write_spec(tmp_path, deploy={"target": "ray", **deploy})
    with pytest.raises(SpecError) as info:
        specs.load(path)
    lines = [m for m in info.value.messages if message in m]
    assert lines, info.value.messages
    assert lines[0].startswith(f"{path.name}:") or ":" in lines[0].split(" ")[0]


# -- the config as deployed -----------------------------------------------------------------------
def _rendered(tmp_path: Path, **deploy) -> Path:
    files = render.render_all(_ray_spec(tmp_path, **deploy))
    out = tmp_path / "build"
    render.write_files(out, files)
    return out / "serve_config.yaml"


def test_live_config_sets_the_package_loopback_and_key_digests(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"primary": "p-key", "secondary": "s-key"}))
    owned = Cluster("http://127.0.0.1:1", owned=True, ports={"serve_http": 43210})
    config = ray_config.live_config(_rendered(tmp_path), "gcs://_ray_pkg_abc.zip", owned, keys)
    app = config["applications"][0]
    assert app["runtime_env"]["working_dir"] == "gcs://_ray_pkg_abc.zip"
    assert config["http_options"]["host"] == "127.0.0.1" and config["http_options"]["port"] == 43210
    digests = app["deployments"][0]["user_config"]["auth_key_sha256"]
    assert digests == [hashlib.sha256(b"p-key").hexdigest(), hashlib.sha256(b"s-key").hexdigest()]
    assert "p-key" not in json.dumps(config)  # the dashboard shows the config: only digests travel
    remote = ray_config.live_config(_rendered(tmp_path), "gcs://_ray_pkg_abc.zip", Cluster("http://head:8265"), None)
    assert remote["http_options"]["host"] == "0.0.0.0" and "auth_key_sha256" not in json.dumps(remote)


def test_merged_keeps_other_services_applications_and_drops_ours_on_delete():
    ours = {"http_options": {"host": "127.0.0.1"}, "applications": [{"name": "a", "import_path": "m:x"}]}
    details = {
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": {
            "a": {"deployed_app_config": {"name": "a", "import_path": "old:x"}},
            "b": {"deployed_app_config": {"name": "b", "import_path": "m:y"}},
            "c": {"deployed_app_config": None},
        },
    }
    assert ray_config.merged(details, ours)["applications"] == [
        {"name": "b", "import_path": "m:y"},
        ours["applications"][0],
    ]
    dropped = ray_config.merged(details, None, drop="a")
    assert dropped["applications"] == [{"name": "b", "import_path": "m:y"}]
    assert dropped["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_config_drift_ignores_float_ints_and_names_changed_fields():
    recorded = {"deployments": [{"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}}]}
    assert (
        ray_config.config_drift(
            {"deployments": [{"num_replicas": 1, "ray_actor_options": {"num_cpus": 1.0}}]}, recorded
        )
        == []
    )
    drift = ray_config.config_drift(
        {"deployments": [{"num_replicas": 3, "ray_actor_options": {"num_cpus": 1.0}}]}, recorded
    )
    assert drift == ["deployments[0].num_replicas: live 3, recorded 1"]


# -- the application module's HTTP contract --------------------------------------------------------
def _load_app(tmp_path: Path, score: Path | None = None):
    files = render.render_all(_ray_spec(tmp_path))
    folder = tmp_path / "app"
    render.write_files(folder, {k: files[k] for k in ("serve_app.py", "score.py", "swagger.json")})
    if score is not None:
        shutil.copy(score, folder / "score.py")
    model = folder  # the model file lies beside score.py, as `render -o` and deploy lay the folder out
    shutil.copy(ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl", model)
    spec = importlib.util.spec_from_file_location(f"serve_app_{abs(hash(str(folder)))}", folder / "serve_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.environ["AZUREML_MODEL_DIR"] = str(model)
    script = module.load_script(str(folder / "score.py"))
    script.init()
    return module, script


def _host(module, script, *, timeout_ms=5000, batching=True):
    async def predict(rows):
        outcome, value = await asyncio.get_running_loop().run_in_executor(
            None, lambda: module.predict_split(script.predict_rows, [rows])[0]
        )
        if outcome == "failed":
            raise module.Failed()
        return value

    async def call(function, *args):
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    settings = {"features": 784, "request_timeout_ms": timeout_ms, "max_body_bytes": 1000}
    return module.Host(script, settings, predict if batching else None, call)


def _ask(host, path="/score", method="POST", body=b"", headers=None):
    async def reader(limit):
        return None if len(body) > limit else body

    headers = {"content-length": str(len(body)), **(headers or {})}
    status, payload, extra = asyncio.run(host.handle(path, method, headers, reader))
    return status, payload, dict(extra)


@pytest.fixture(autouse=True)
def _restore_model_dir():
    saved = os.environ.get("AZUREML_MODEL_DIR")
    yield
    os.environ.pop("AZUREML_MODEL_DIR", None) if saved is None else os.environ.__setitem__("AZUREML_MODEL_DIR", saved)
    sys.modules.pop("score", None)


def test_routes_and_errors_match_the_local_host(tmp_path):
    module, script = _load_app(tmp_path)
    host = _host(module, script)
    assert _ask(host, "/", "GET")[:2] == (200, b"Healthy")
    assert _ask(host, "", "GET")[:2] == (200, b"Healthy")  # the route prefix itself, without a slash
    assert json.loads(_ask(host, "/swagger.json", "GET")[1])["paths"]["/score"]["post"]["operationId"] == "score"
    status, body, headers = _ask(host, "/score", "GET")
    assert status == 405 and headers["allow"] == "POST" and "use POST" in json.loads(body)["error"]
    assert _ask(host, "/nope", "GET")[0] == 404
    sample = (ROOT / "examples" / "mnist" / "sample.json").read_bytes()
    big = _host(module, script)
    big.max_body = len(sample)
    status, body, headers = _ask(big, body=sample, headers={"x-request-id": "abc", "x-ms-client-request-id": "c1"})
    assert status == 200 and json.loads(body) == [2, 5, 1]
    assert (
        headers["x-request-id"] == "abc"
        and headers["x-ms-request-id"] == "c1"
        and headers["x-ms-run-function-failed"] == "False"
    )
    status, body, headers = _ask(host, body=b"x" * 1001)
    assert status == 413 and headers["connection"] == "close"
    assert _ask(host, body=b"{}", headers={"x-request-id": "r" * 101})[0] == 431
    status, body, _ = _ask(host, body=b'{"data": [[1, 2]]}')
    assert status == 400 and json.loads(body)["error"] == "data[0] has 2 values, expected 784"


def test_a_run_only_script_gets_the_local_hosts_400_messages(tmp_path):
    from pipeline.serve.script import describe_bad_input

    module, script = _load_app(tmp_path, ROOT / "tests" / "data" / "score_tutorial.py")
    host = _host(module, script, batching=False)
    for body in (
        b"{bad",
        b'{"data": [[1, 2], [3]]}',
        b'{"rows": []}',
        b'{"data": [["a"]]}',
        b"\xff\xfe",
        b'{"data": [[NaN]]}',
    ):
        status, payload, _ = _ask(host, body=body)
        expected = describe_bad_input(body, ValueError("x"), 784)
        assert status == 400 and json.loads(payload)["error"] == expected, (body, payload)


def test_a_slow_script_gets_a_json_504_and_a_failing_one_a_500(tmp_path):
    module, script = _load_app(tmp_path, ROOT / "tests" / "data" / "score_misbehave.py")
    host = _host(module, script, timeout_ms=200, batching=False)
    status, body, headers = _ask(host, body=b'{"sleep_ms": 1000}')
    assert status == 504 and json.loads(body)["error"] == "scoring did not finish within 200 ms"
    assert headers["x-ms-run-function-failed"] == "True"
    module2, slow = _load_app(tmp_path / "b", ROOT / "tests" / "data" / "score_slow_batch.py")
    batched = _host(module2, slow, timeout_ms=200)
    assert _ask(batched, body=b'{"data": [[-1, 2]]}')[0] == 504
    assert json.loads(_ask(batched, body=b'{"data": [[3, 2], [4, 2]]}')[1]) == [3, 4]


def test_predict_split_fails_only_the_culprit_of_a_batch(tmp_path):
    module, _script = _load_app(tmp_path)

    def predict(matrix):
        if any(row[0] < 0 for row in matrix):
            raise ValueError("negative")
        return [row[0] for row in matrix]

    assert module.predict_split(predict, [[[1]], [[-1]], [[2], [3]]]) == [("ok", [1]), ("failed", None), ("ok", [2, 3])]


def test_key_auth_checks_digests_in_constant_time(tmp_path):
    module, script = _load_app(tmp_path)
    host = _host(module, script)
    host.configure({"auth_key_sha256": [hashlib.sha256(b"k1").hexdigest(), hashlib.sha256(b"k2").hexdigest()]})
    sample = b'{"data": [' + json.dumps([0] * 784).encode() + b"]}"
    host.max_body = len(sample)
    assert _ask(host, body=sample)[0] == 401
    assert _ask(host, body=sample, headers={"authorization": "Bearer nope"})[0] == 401
    assert _ask(host, body=sample, headers={"authorization": "Bearer k2"})[0] == 200
    assert _ask(host, "/", "GET")[0] == 200  # health stays open, as Azure's


# -- probe and delete against a fake Ray dashboard (a remote cluster we cannot reach) ---------------
class FakeDashboard:
    """GET/PUT /api/serve/applications/ and the application's health route, on 127.0.0.1; records every PUT.

    Like Serve, a PUT removes every application it does not name (here at once; Serve takes a moment)."""

    def __init__(self) -> None:
        self.details: dict = {"http_options": {"host": "0.0.0.0", "port": 0}, "applications": {}}
        self.puts: list[dict] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body, kind="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/api/serve/applications/":
                    self._send(200, json.dumps(fake.details).encode())
                elif self.path.startswith("/svc"):
                    self._send(200, b"Healthy", "text/plain")
                else:
                    self._send(404, b"{}")

            def do_PUT(self):
                config = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.puts.append(config)
                named = {app["name"] for app in config["applications"]}
                for name in [n for n in fake.details["applications"] if n not in named]:
                    del fake.details["applications"][name]
                self._send(200, b"")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.details["http_options"]["port"] = self.port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def app(self, config: dict, replicas: list[str], state: str = "RUNNING") -> None:
        self.details["applications"][config["name"]] = {
            "status": "RUNNING",
            "deployed_app_config": config,
            "deployments": {
                "scoring": {
                    "status": "HEALTHY",
                    "target_num_replicas": len(replicas),
                    "replicas": [
                        {"replica_id": r, "state": state, "node_id": "n", "log_file_path": f"/serve/{r}.log"}
                        for r in replicas
                    ],
                }
            },
        }


@pytest.fixture
def dashboard():
    fake = FakeDashboard()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _record(port: int, config: dict) -> ServiceRecord:
    base = f"http://127.0.0.1:{port}/svc"
    extra = {
        "cluster": {"owned": False, "dashboard": f"http://127.0.0.1:{port}"},
        "app": "svc",
        "health_uri": f"{base}/",
        "config": {"applications": [config]},
        "replicas": ["r1", "r2"],
        "fixed_replicas": True,
    }
    return ServiceRecord("ray", f"{base}/score", False, f"{base}/swagger.json", extra)


def test_probe_against_a_fake_dashboard_reports_config_drift_and_replaced_replicas(dashboard):
    config = {"name": "svc", "route_prefix": "/svc", "deployments": [{"name": "scoring", "num_replicas": 2}]}
    record = _record(dashboard.port, config)
    target = ray_target.RayTarget()
    dashboard.app(config, ["r1", "r2"])
    live = target.probe(record)
    assert live.healthy and live.drift == () and "2/2 replicas: r1 RUNNING, r2 RUNNING" in live.detail
    dashboard.app({**config, "deployments": [{"name": "scoring", "num_replicas": 3}]}, ["r1", "r3"])
    live = target.probe(record)
    assert "serve config: deployments[0].num_replicas: live 3, recorded 2" in live.drift
    assert any("r2 recorded at deploy is gone" in line for line in live.drift)
    dashboard.details["applications"].clear()
    live = target.probe(record)
    assert not live.healthy and live.drift == ("application: recorded, but missing from the cluster",)


def test_delete_on_a_shared_cluster_puts_back_the_other_applications(dashboard, tmp_path):
    ours = {"name": "svc", "route_prefix": "/svc", "import_path": "serve_app:build"}
    theirs = {"name": "other", "route_prefix": "/other", "import_path": "theirs:app"}
    dashboard.app(ours, ["r1"])
    dashboard.app(theirs, ["x1"])
    target = ray_target.RayTarget()
    detail = target.delete(_record(dashboard.port, ours), tmp_path)
    assert detail == f"removed Serve application svc from the cluster at http://127.0.0.1:{dashboard.port}"
    assert [app["name"] for app in dashboard.puts[-1]["applications"]] == ["other"]
    again = target.delete(_record(dashboard.port, ours), tmp_path)
    assert again == f"Serve application svc was not on the cluster at http://127.0.0.1:{dashboard.port}"
    assert len(dashboard.puts) == 1  # nothing to remove: no second PUT


def test_an_unreachable_remote_cluster_is_not_reachable_rather_than_down():
    live = ray_target.RayTarget().probe(_record(9, {"name": "svc"}))  # port 9 (discard): nothing listens
    assert not live.reachable and "cannot reach the Ray dashboard" in live.detail
    with pytest.raises(Exception, match="cannot reach the Ray dashboard"):
        Rest("http://127.0.0.1:9", timeout=1).details()


# -- the record, the plan's words, the rendered folder -----------------------------------------------
def test_the_record_reads_back_equal_and_a_damaged_one_is_a_state_error(dashboard):
    from pipeline.errors import StateError
    from pipeline.targets.ray_service import RayService

    record = _record(dashboard.port, {"name": "svc", "route_prefix": "/svc"})
    again = ServiceRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and RayService.of(again).cluster == Cluster(f"http://127.0.0.1:{dashboard.port}")
    for broken, words in (
        ({"cluster": None}, "ray cluster record is damaged"),
        ({"replicas": "r1"}, "replicas is 'r1'"),
        ({"config": {"applications": []}}, "has no application"),
        ({"cluster": {"dashboard": "http://h:1", "head_pid": "12"}}, "head_pid is '12'"),
    ):
        damaged = ServiceRecord("ray", record.scoring_uri, extra={**record.extra, **broken})
        with pytest.raises(StateError, match=words):
            RayService.of(damaged)
    with pytest.raises(StateError, match="cluster, app, health_uri, config missing"):
        RayService.of(ServiceRecord("ray", None, extra={"pid": 1}))


def test_serve_ignores_new_http_options_while_it_runs_so_they_are_compared():
    from pipeline.targets.ray_service import http_divergence

    live = {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 6.0, "keep_alive_timeout_s": 90}
    assert http_divergence(live, {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 6}) == []
    assert http_divergence(live, {"request_timeout_s": 10.0}) == ["http_options.request_timeout_s: live 6, deployed 10"]
    assert http_divergence(None, {"request_timeout_s": 10.0}) == []  # Serve is not running: a PUT starts it so


def test_plan_says_how_an_update_reaches_the_service(tmp_path):
    target = ray_target.RayTarget()
    spec = _ray_spec(tmp_path)
    owned = {
        "owned": True,
        "dashboard": "http://127.0.0.1:1",
        "head_pid": 1,
        "temp_dir": "/t",
        "ports": {"serve_http": 2},
    }
    config = {"http_options": {"request_timeout_s": 6.0}, "applications": [{"name": spec.name}]}
    record = ServiceRecord(
        "ray",
        "http://127.0.0.1:2/x/score",
        extra={"cluster": owned, "app": spec.name, "health_uri": "http://127.0.0.1:2/x/", "config": config},
    )
    assert target.describe_update(None, spec).startswith("rolling: Ray Serve replaces replicas one at a time")
    assert target.describe_update(record, spec).startswith("rolling:")  # 5000 ms + 1 s, as recorded
    longer = _ray_spec(tmp_path / "b", request_timeout_ms=9000)
    assert "new request timeout (6 s -> 10 s)" in target.describe_update(record, longer)
    elsewhere = _ray_spec(tmp_path / "c", ray={"address": "http://head:8265"})
    assert target.describe_update(record, elsewhere).startswith("moves to the cluster at http://head:8265")


def test_a_rendered_folder_is_the_application_folder(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path, deploy={"target": "ray"})
    result = run_cli("render", path, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    out = tmp_path / "out"
    assert {"serve_app.py", "score.py", "swagger.json", "sklearn_mnist_model.pkl"} <= {p.name for p in out.iterdir()}
    config = yaml.safe_load((out / "serve_config.yaml").read_text())
    assert config["applications"][0]["args"]["model_dir"] == "."  # the model is found beside score.py


def test_a_runner_without_state_finds_the_stamped_application_and_adopts_it(dashboard, tmp_path):
    from pipeline.targets.base import STAMP_DIGEST, STAMP_MODEL, STAMP_SPEC

    target = ray_target.RayTarget()
    spec = _ray_spec(tmp_path, ray={"address": f"http://127.0.0.1:{dashboard.port}"})
    live = target.probe(None, spec)
    assert (live.reachable, live.healthy, live.found, live.stamp) == (True, False, False, None), live.detail
    stamp = {STAMP_DIGEST: "d" * 64, STAMP_MODEL: "m" * 64, STAMP_SPEC: spec.name}
    ours = ray_config.live_config(_rendered(tmp_path / "r"), "gcs://_ray_pkg_x.zip", Cluster("http://h:1"), None, stamp)
    config = {**ours["applications"][0], "route_prefix": "/svc"}
    assert config["deployments"][0]["user_config"]["stamp"] == stamp  # what the dashboard shows anyone who asks
    dashboard.app({**config, "name": spec.name}, ["r1"])
    live = target.probe(None, spec)
    assert live.found and live.stamp == stamp and "deployed by pipeline" in live.detail
    assert live.observed["tags.method"] == "sklearn" and live.observed["deploy.memory_gb"] == 1
    record = target.adopt(live, spec)
    assert record is not None and (record.digest, record.model_sha256) == (stamp[STAMP_DIGEST], stamp[STAMP_MODEL])
    assert record.scoring_uri == f"http://127.0.0.1:{dashboard.port}/svc/score" and not record.auth
    assert target.probe(record, spec).healthy  # the adopted record judges the live application like any other
    del config["deployments"][0]["user_config"]["stamp"]
    dashboard.app({**config, "name": spec.name}, ["r1"])
    by_hand = target.probe(None, spec)
    assert by_hand.found and by_hand.stamp is None and "not made by pipeline" in by_hand.detail


def test_without_a_cluster_json_nothing_is_orphaned(tmp_path):
    target = ray_target.RayTarget()
    assert target.orphans(tmp_path) == [] and target.stop_orphans(tmp_path) == []
    (tmp_path / "cluster.json").write_text('{"dashboard": "http://127.0.0.1:1", "owned": true, "head_pid": 999999999}')
    assert target.orphans(tmp_path) == []  # named, but nothing of it runs
