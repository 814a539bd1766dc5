"""Target azureml-online (azure-ai-ml): YAML the SDK's own loaders accept, fakes only at the network."""
from __future__ import annotations

import copy
import http.server
import json
import os
import socket
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("azure.ai.ml")
# azure-ai-ml's schemas use marshmallow's deprecated `context`; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated")

from azure.ai.ml import load_online_deployment, load_online_endpoint  # noqa: E402  (slow: imported once)
from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint  # noqa: E402
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError  # noqa: E402

from pipeline import render, spec as specs  # noqa: E402
from pipeline.console import Console  # noqa: E402
from pipeline.errors import RenderError, SpecError, TargetError, UsageError  # noqa: E402
from pipeline.targets import azureml_common as common
from pipeline.targets import keys  # noqa: E402
from pipeline.targets.azureml_online import OnlineTarget  # noqa: E402
from pipeline.targets.base import DeployRequest, ServiceRecord  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"
SPEC = "mnist-online.yaml"
SOURCE = f"  source: {ROOT}/examples/mnist/sklearn_mnist_model.pkl"


# -- the network is off limits (conftest's no_network): a hidden call fails the test --
@pytest.fixture(autouse=True)
def _offline(no_network):
    yield no_network


@pytest.fixture
def scoring_server():
    """A real HTTP server on loopback standing in for the scoring URI; it records what it was sent."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": self.rfile.read(int(self.headers["Content-Length"]))})
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"[7, 2]")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score", seen
    server.shutdown()
    server.server_close()


def write_spec(folder: Path, base: str, replace: dict[str, str] | None = None) -> Path:
    """A copy of specs/<base> in `folder`, its ../examples paths made absolute, with text replaced."""
    text = (ROOT / "specs" / base).read_text(encoding="utf-8").replace("../examples/", f"{ROOT}/examples/")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(text, encoding="utf-8")
    return folder / "spec.yaml"


def load(tmp_path: Path, replace: dict[str, str] | None = None) -> specs.Spec:
    return specs.load(write_spec(tmp_path / "specs", SPEC, replace))


def build(spec: specs.Spec, tmp_path: Path) -> Path:
    folder = tmp_path / "build"
    render.write_files(folder, render.render_all(spec))
    return folder


def request(spec: specs.Spec, tmp_path: Path) -> DeployRequest:
    return DeployRequest(spec=spec, build_dir=build(spec, tmp_path), model_path=MODEL, model_dir=MODEL.parent,
                         service_dir=tmp_path / "service", previous=None, console=Console(quiet=True))


# -- offline: render, and the SDK's loaders accept it ---------------------------------------------------
def test_rendered_online_spec_is_accepted_by_load_online_endpoint_and_deployment(tmp_path):
    spec = specs.load(ROOT / "specs" / SPEC)
    files = render.render_all(spec)
    assert sorted(files) == ["deployment.yml", "endpoint.yml", "myenv.yml", "score.py"]
    folder = tmp_path / "build"
    render.write_files(folder, files)
    (folder / "sklearn_mnist_model.pkl").write_bytes(MODEL.read_bytes())  # where the yml's model path points

    endpoint = load_online_endpoint(source=str(folder / "endpoint.yml"))
    assert isinstance(endpoint, ManagedOnlineEndpoint)
    assert (endpoint.name, endpoint.auth_mode) == ("sklearn-mnist-online", "key")
    assert endpoint.tags == {"data": "MNIST", "method": "sklearn"}
    assert endpoint.description == "Predict MNIST with sklearn"

    deployment = load_online_deployment(source=str(folder / "deployment.yml"))
    assert isinstance(deployment, ManagedOnlineDeployment)
    assert (deployment.name, deployment.endpoint_name) == ("blue", "sklearn-mnist-online")
    assert (deployment.instance_type, deployment.instance_count) == ("Standard_DS1_v2", 1)
    assert deployment.request_settings.request_timeout_ms == 5000
    assert (deployment.code_configuration.code, deployment.code_configuration.scoring_script) == (".", "score.py")
    assert deployment.environment.image == "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
    conda = deployment.environment.conda_file
    assert conda["dependencies"][-1] == {"pip": ["orjson", "azureml-inference-server-http"]}
    assert Path(deployment.model.path) == folder / "sklearn_mnist_model.pkl"
    assert deployment.liveness_probe.failure_threshold == 30 and deployment.readiness_probe.initial_delay == 10
    assert deployment.tags == {"data": "MNIST", "method": "sklearn"}


def test_extra_pip_packages_are_the_inference_server(tmp_path):
    assert OnlineTarget().extra_pip_packages(load(tmp_path)) == ["azureml-inference-server-http"]


@pytest.mark.parametrize("cores, memory, expected", [
    (1, 1, "Standard_DS1_v2"), (0.5, 0.5, "Standard_DS1_v2"), (1, 3.5, "Standard_DS1_v2"), (1, 4, "Standard_F2s_v2"),
    (2, 4, "Standard_F2s_v2"), (2, 6, "Standard_DS2_v2"), (2, 12, "Standard_E2s_v3"), (3, 8, "Standard_F4s_v2"),
    (4, 14, "Standard_DS3_v2"), (8, 28, "Standard_DS4_v2"), (16, 100, "Standard_E16s_v3"), (64, 432, "Standard_E64s_v3"),
    (64, 500, None), (1, 1024, None),
])
def test_instance_type_table(cores, memory, expected):
    assert common.choose_instance_type(cores, memory) == expected


def test_instance_type_from_the_table_and_from_the_spec(tmp_path):
    spec = load(tmp_path, {"cpu_cores: 1": "cpu_cores: 4", "memory_gb: 1": "memory_gb: 12"})
    text = render.render_all(spec)["deployment.yml"]
    assert 'instance_type: "Standard_DS3_v2"' in text
    assert "the smallest size with >= 4 cores and >= 12 GB (4 cores, 14 GB)" in text
    spec = load(tmp_path, {"    replicas: 1": "    replicas: 3\n    instance_type: Standard_F8s_v2"})
    text = render.render_all(spec)["deployment.yml"]
    assert 'instance_type: "Standard_F8s_v2"' in text and "instance_count: 3" in text


def test_registry_model_and_token_auth_render_as_azureml_references(tmp_path):
    spec = load(tmp_path, {SOURCE: "  source: {registry: azureml, file: sklearn_mnist_model.pkl}",
                           "  auth: true ": "  auth: false ", "    replicas: 1": "    replicas: 1\n    token_auth: true"})
    folder = build(spec, tmp_path)
    assert 'model: "azureml:sklearn_mnist:1"' in (folder / "deployment.yml").read_text()  # v2's Model(ws, name, version)
    deployment = load_online_deployment(source=str(folder / "deployment.yml"))
    assert deployment.model == "sklearn_mnist:1"  # the loader keeps the reference, minus its azureml: prefix
    assert load_online_endpoint(source=str(folder / "endpoint.yml")).auth_mode == "aml_token"


def test_render_turns_sdk_validation_errors_into_a_render_error(tmp_path):
    own = tmp_path / "specs" / "mytemplates" / "azureml"
    own.mkdir(parents=True)
    template = (ROOT / "templates" / "azureml" / "deployment.yml.j2").read_text()
    (own / "deployment.yml.j2").write_text(template.replace("instance_count: {{ azureml.instance_count|yaml }}",
                                                            'instance_count: "many"\nreplicas: 2'))
    spec = load(tmp_path, {"description: Predict": "templates: mytemplates\ndescription: Predict"})
    with pytest.raises(RenderError) as caught:
        render.render_all(spec)
    assert str(caught.value) == ("rendered deployment.yml is not accepted by azure-ai-ml: "
                                 "instance_count: Not a valid integer.; replicas: Unknown field.")


def test_spec_rules_reject_what_endpoints_reject(tmp_path):
    path = write_spec(tmp_path / "specs", SPEC, {
        "  auth: true ": "  auth: false ",
        "tags: {data: MNIST, method: sklearn}": "tags: {data: MNIST, 'a/b': sklearn}",
        "cpu_cores: 1": "cpu_cores: 64", "memory_gb: 1": "memory_gb: 512",
        "request_timeout_ms: 5000": "request_timeout_ms: 200000",
        "    replicas: 1": "    replicas: 1\n    autoscale: {max_replicas: 3}",
    })
    lines = path.read_text().splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if text in line)

    shown = specs.display_path(path)
    with pytest.raises(SpecError) as caught:
        specs.load(path)
    assert caught.value.messages == sorted([
        f"{shown}:{at('tags:')}: tags.a/b: Azure rejects tag names containing /",
        f"{shown}:{at('cpu_cores:')}: deploy.cpu_cores: no VM size in the instance_type table has 64 cores and 512 GB; "
        "set deploy.azureml.instance_type",
        f"{shown}:{at('  auth:')}: deploy.auth: managed online endpoints always authenticate: set deploy.auth: true "
        "(key auth) or deploy.azureml.token_auth: true (Azure ML tokens)",
        f"{shown}:{at('request_timeout_ms:')}: deploy.request_timeout_ms: managed online endpoints allow at most "
        "180000 ms, got 200000",
        f"{shown}:{at('autoscale:')}: deploy.azureml.autoscale: not used by target 'azureml-online'",
    ], key=lambda m: int(m.split(":")[1]))


# -- fakes at the network boundary ---------------------------------------------------------------
class FakePoller:
    def __init__(self, log: list, result=None, error: Exception | None = None, done: bool = True) -> None:
        self.log, self._result, self._error, self._done = log, result, error, done

    def result(self, timeout=None):
        self.log.append(("result", {"timeout": timeout}))
        if self._error:
            raise self._error
        return self._result

    def done(self):
        return self._done


class FakeEndpoints:
    def __init__(self, log: list, exists: bool = True) -> None:
        self.log, self.exists, self.missing = log, exists, None  # missing: what get/begin_delete raise
        self.live = SimpleNamespace(name="sklearn-mnist-online", provisioning_state="Succeeded",
                                    scoring_uri="https://sklearn-mnist-online.westeurope.inference.ml.azure.com/score",
                                    openapi_uri="https://sklearn-mnist-online.westeurope.inference.ml.azure.com/swagger.json",
                                    traffic={"blue": 100}, tags={"data": "MNIST", "method": "sklearn"}, auth_mode="key")

    def begin_create_or_update(self, endpoint):
        # the entity is changed after the call (traffic), so record what it was at the time
        self.log.append(("online_endpoints.begin_create_or_update", {"endpoint": copy.deepcopy(endpoint)}))
        self.exists = True
        return FakePoller(self.log, endpoint)

    def get(self, name):
        self.log.append(("online_endpoints.get", {"name": name}))
        if self.missing:
            raise self.missing
        if not self.exists:
            raise ResourceNotFoundError(f"(UserError) Endpoint {name} not found")
        return self.live

    def get_keys(self, name):
        self.log.append(("online_endpoints.get_keys", {"name": name}))
        return SimpleNamespace(primary_key="primary-secret-key", secondary_key="secondary-secret-key",
                               access_token="aml-token")

    def begin_delete(self, name=None):
        self.log.append(("online_endpoints.begin_delete", {"name": name}))
        if self.missing:
            raise self.missing
        return FakePoller(self.log)


class FakeDeployments:
    def __init__(self, log: list, error: Exception | None = None, done: bool = True, logs: str = "") -> None:
        self.log, self.error, self._done, self._logs = log, error, done, logs
        self.live = SimpleNamespace(name="blue", provisioning_state="Succeeded", instance_type="Standard_DS1_v2",
                                    instance_count=1, model="azureml:/subscriptions/s/models/anon/versions/1")

    def begin_create_or_update(self, deployment):
        self.log.append(("online_deployments.begin_create_or_update", {"deployment": deployment}))
        return FakePoller(self.log, deployment, self.error, self._done)

    def get(self, name, endpoint_name):
        self.log.append(("online_deployments.get", {"name": name, "endpoint_name": endpoint_name}))
        return self.live

    def get_logs(self, name, endpoint_name, lines):
        self.log.append(("online_deployments.get_logs", {"name": name, "endpoint_name": endpoint_name, "lines": lines}))
        return self._logs


class FakeClient:
    """MLClient's surface that the target uses; every call lands in `log`."""

    subscription_id = "00000000-0000-0000-0000-000000000000"
    resource_group_name = "ml-rg"
    workspace_name = "mlws"

    def __init__(self, exists: bool = True, **deployments) -> None:
        self.log: list = []
        self.online_endpoints = FakeEndpoints(self.log, exists)
        self.online_deployments = FakeDeployments(self.log, **deployments)


def fake_client_target(client: FakeClient | None = None):
    client = client or FakeClient()
    configs: list = []
    return OnlineTarget(client_factory=lambda config: configs.append(config) or client), client, configs


# -- deploy -----------------------------------------------------------------------------------
def test_deploy_fake_client_creates_endpoint_deployment_then_routes_traffic(tmp_path):
    spec = load(tmp_path)
    target, client, configs = fake_client_target(FakeClient(exists=False))
    req = request(spec, tmp_path)
    record = target.deploy(req)

    assert configs == [None]  # MLClient.from_config()'s own search
    assert [name for name, _ in client.log] == [
        "online_endpoints.get",  # 404: a new endpoint, with no traffic until blue exists
        "online_endpoints.begin_create_or_update", "result",
        "online_deployments.begin_create_or_update", "result",
        "online_endpoints.begin_create_or_update", "result",
        "online_endpoints.get", "online_deployments.get", "online_endpoints.get_keys",
    ]
    del client.log[0]
    first, deployment, second = client.log[0][1]["endpoint"], client.log[2][1]["deployment"], client.log[4][1]["endpoint"]
    assert isinstance(first, ManagedOnlineEndpoint) and first.traffic == {}
    assert (first.name, first.auth_mode, first.tags) == ("sklearn-mnist-online", "key", {"data": "MNIST", "method": "sklearn"})
    assert second.traffic == {"blue": 100}
    assert isinstance(deployment, ManagedOnlineDeployment)
    assert Path(deployment.model.path) == MODEL  # the fetched, verified file, not the placeholder
    assert (deployment.name, deployment.endpoint_name, deployment.instance_type) == ("blue", "sklearn-mnist-online", "Standard_DS1_v2")
    assert (deployment.code_configuration.code, Path(deployment.base_path)) == (".", req.build_dir)  # uploads build/
    assert client.log[3] == ("result", {"timeout": 1800})  # deploy.ready_timeout_s
    assert client.log[6:] == [("online_endpoints.get", {"name": "sklearn-mnist-online"}),
                              ("online_deployments.get", {"name": "blue", "endpoint_name": "sklearn-mnist-online"}),
                              ("online_endpoints.get_keys", {"name": "sklearn-mnist-online"})]
    assert record.to_dict() == {
        "target": "azureml-online", "endpoint": "sklearn-mnist-online", "deployment": "blue",
        "workspace": {"name": "mlws", "resource_group": "ml-rg", "subscription_id": FakeClient.subscription_id},
        "workspace_config": None,
        "scoring_uri": "https://sklearn-mnist-online.westeurope.inference.ml.azure.com/score",
        "swagger_uri": "https://sklearn-mnist-online.westeurope.inference.ml.azure.com/swagger.json",
        "state": "Succeeded", "auth_mode": "key", "auth": True,
        "model_id": "azureml:/subscriptions/s/models/anon/versions/1", "model_sha256": spec.model.sha256,
        "instance_type": "Standard_DS1_v2", "instance_count": 1, "traffic": {"blue": 100},
        "tags": {"data": "MNIST", "method": "sklearn"}, "description": "Predict MNIST with sklearn",
    }
    keys = req.service_dir / "keys.json"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert json.loads(keys.read_text())["primary"] == "primary-secret-key"
    assert "secret" not in json.dumps(record.to_dict())


def test_redeploy_fake_client_keeps_traffic_on_blue_while_it_updates(tmp_path):
    target, client, _ = fake_client_target(FakeClient(exists=True))
    target.deploy(request(load(tmp_path), tmp_path))
    assert client.log[0] == ("online_endpoints.get", {"name": "sklearn-mnist-online"})
    assert client.log[1][1]["endpoint"].traffic == {"blue": 100}  # never 0% during the update


def test_deploy_failure_fake_client_shows_the_tail_of_the_deployment_log(tmp_path):
    logs = "".join(f"log line {i}\n" for i in range(100)) + "ModuleNotFoundError: No module named 'sklearn'\n"
    error = HttpResponseError(message="(BadArgument) Deployment failed: the container crashed on startup")
    target, client, _ = fake_client_target(FakeClient(error=error, logs=logs))
    with pytest.raises(TargetError) as caught:
        target.deploy(request(load(tmp_path), tmp_path))
    message = str(caught.value)
    assert message.startswith("deployment blue of endpoint sklearn-mnist-online failed: (BadArgument) Deployment failed")
    assert "ModuleNotFoundError: No module named 'sklearn'" in message and "log line 99" in message
    assert "log line 10\n" not in message
    assert ("online_deployments.get_logs", {"name": "blue", "endpoint_name": "sklearn-mnist-online",
                                            "lines": common.LOG_LINES}) in client.log
    assert not any(name == "online_endpoints.get_keys" for name, _ in client.log)  # no traffic, no keys


def test_deploy_timeout_fake_client(tmp_path):
    target, client, _ = fake_client_target(FakeClient(done=False, logs="still pulling the image\n"))
    with pytest.raises(TargetError, match=r"still not ready after 1800 s(.|\n)*still pulling the image"):
        target.deploy(request(load(tmp_path), tmp_path))


def test_deploy_fake_client_rejects_a_build_folder_the_sdk_does_not_accept(tmp_path):
    req = request(load(tmp_path), tmp_path)
    path = req.build_dir / "deployment.yml"
    path.write_text(path.read_text() + "surprise: 1\n")
    target, client, _ = fake_client_target()
    with pytest.raises(TargetError, match="surprise: Unknown field"):
        target.deploy(req)
    assert client.log == []  # nothing was sent


# -- probe -----------------------------------------------------------------------------------
def rec(data: dict) -> ServiceRecord:
    return ServiceRecord.from_dict(data)


RECORD = {"target": "azureml-online", "endpoint": "sklearn-mnist-online", "deployment": "blue",
          "workspace_config": None, "scoring_uri": "https://sklearn-mnist-online.westeurope.inference.ml.azure.com/score",
          "auth_mode": "key", "auth": True, "model_id": "azureml:/subscriptions/s/models/anon/versions/1",
          "instance_type": "Standard_DS1_v2", "instance_count": 1, "traffic": {"blue": 100},
          "tags": {"data": "MNIST", "method": "sklearn"}}


def test_probe_fake_client_healthy_and_matching():
    target, client, _ = fake_client_target()
    live = target.probe(rec(RECORD))
    assert (live.reachable, live.healthy, live.drift) == (True, True, ())
    assert live.detail == ("endpoint sklearn-mnist-online is Succeeded, deployment blue is Succeeded at "
                           f"{RECORD['scoring_uri']}")


def test_probe_fake_client_reports_drift():
    client = FakeClient()
    client.online_endpoints.live.traffic = {"blue": 50, "green": 50}
    client.online_deployments.live.instance_count = 3
    live = fake_client_target(client)[0].probe(rec(RECORD))
    assert (live.reachable, live.healthy) == (True, False)
    assert live.drift == ("traffic: live {'blue': 50, 'green': 50}, recorded {'blue': 100}",
                          "instance_count: live 3, recorded 1")


def test_probe_fake_client_missing_endpoint():
    client = FakeClient()
    client.online_endpoints.missing = ResourceNotFoundError("Endpoint sklearn-mnist-online not found")
    live = fake_client_target(client)[0].probe(rec(RECORD))
    assert (live.reachable, live.healthy, live.drift) == (True, False, ("endpoint: recorded, but missing from the workspace",))


def test_probe_fake_client_before_the_first_deploy(tmp_path):
    live = fake_client_target(FakeClient(exists=False))[0].probe(None, load(tmp_path))
    assert (live.reachable, live.healthy, live.drift) == (True, False, ())
    assert live.detail == "workspace is reachable; endpoint sklearn-mnist-online does not exist yet"


def test_probe_fake_client_without_credentials_is_unreachable():
    client = FakeClient()
    client.online_endpoints.missing = ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token "
                                                               "from the included credentials.\nAzure CLI not found on path")
    live = fake_client_target(client)[0].probe(rec(RECORD))
    assert (live.reachable, live.healthy) == (False, False)
    assert live.detail == ("cannot reach the Azure ML workspace: no usable Azure credentials (DefaultAzureCredential found "
                           "none): run `az login`, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for "
                           "a service principal")


def test_probe_without_config_json_is_unreachable_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLClient.from_config() searches here and upwards
    if any((parent / "config.json").exists() for parent in tmp_path.parents):
        pytest.skip("a config.json above the temporary folder would be found")
    live = OnlineTarget().probe(None, load(tmp_path))
    assert (live.reachable, live.healthy) == (False, False)
    assert live.detail == ("cannot reach the Azure ML workspace: no workspace config.json found in the working folder "
                           "or its parents (set deploy.azureml.workspace_config)")


def test_missing_sdk_is_a_usage_error_and_an_unreachable_probe(tmp_path, monkeypatch):
    import sys

    spec = load(tmp_path)
    monkeypatch.setitem(sys.modules, "azure.ai.ml", None)
    with pytest.raises(UsageError) as caught:
        render.render_all(spec)
    assert str(caught.value) == "target 'azureml-online' needs the azure-v2 extra: pip install '.[azure-v2]'"
    live = OnlineTarget().probe(rec(RECORD), spec)
    assert (live.reachable, live.detail) == (False, str(caught.value))


# -- invoke, delete, logs ---------------------------------------------------------------------
def test_invoke_posts_with_the_endpoint_key_to_the_deployment(tmp_path, scoring_server):
    uri, seen = scoring_server
    keys.write(tmp_path, "primary-secret-key", "secondary-secret-key")
    target = OnlineTarget(client_factory=lambda c: pytest.fail("invoke with a key needs no client"))
    reply = target.invoke(rec({**RECORD, "scoring_uri": uri}), b'{"data": [[0]]}', timeout=5, service_dir=tmp_path)
    assert (reply.status, reply.body) == (200, b"[7, 2]")
    assert seen[0]["headers"]["authorization"] == "Bearer primary-secret-key"
    assert seen[0]["headers"]["azureml-model-deployment"] == "blue"


def test_invoke_fake_client_aml_token(tmp_path, scoring_server):
    uri, seen = scoring_server
    target, client, _ = fake_client_target()
    target.invoke(rec({**RECORD, "scoring_uri": uri, "auth_mode": "aml_token"}), b"{}", timeout=5, service_dir=tmp_path)
    assert seen[0]["headers"]["authorization"] == "Bearer aml-token"
    assert client.log == [("online_endpoints.get_keys", {"name": "sklearn-mnist-online"})]


def test_delete_fake_client_deletes_the_endpoint_and_its_keys(tmp_path):
    keys.write(tmp_path, "k1", "k2")
    target, client, _ = fake_client_target()
    assert target.delete(rec(RECORD), tmp_path) == "deleted endpoint sklearn-mnist-online and its deployment blue"
    assert client.log == [("online_endpoints.begin_delete", {"name": "sklearn-mnist-online"}), ("result", {"timeout": None})]
    assert not (tmp_path / "keys.json").exists()


def test_delete_fake_client_already_gone(tmp_path):
    client = FakeClient()
    client.online_endpoints.missing = ResourceNotFoundError("not there")
    line = fake_client_target(client)[0].delete(rec(RECORD), tmp_path)
    assert line == "endpoint sklearn-mnist-online was not found in the workspace (already deleted)"


def test_logs_fake_client_is_get_logs_tail(tmp_path):
    target, client, _ = fake_client_target(FakeClient(logs="".join(f"line {i}\n" for i in range(10))))
    assert target.logs(rec(RECORD), tmp_path, tail=2) == "line 8\nline 9"
    assert client.log == [("online_deployments.get_logs", {"name": "blue", "endpoint_name": "sklearn-mnist-online", "lines": 2})]


# -- live: a real workspace, only when one is configured (see README: Deploying to Azure) -------------
@pytest.mark.azure_live
def test_live_online_deploy_probe_score_delete(tmp_path):
    config = os.environ.get("PIPELINE_AZURE_WORKSPACE_CONFIG")
    if not config:
        pytest.skip("set PIPELINE_AZURE_WORKSPACE_CONFIG to a workspace config.json to run the live Azure tests")
    import secrets

    name = f"mnist-live-{secrets.token_hex(4)}"  # endpoint names are unique per Azure region
    spec = load(tmp_path, {"name: sklearn-mnist-online ": f"name: {name} ",
                           "    replicas: 1": f"    replicas: 1\n    workspace_config: {config}"})
    target = OnlineTarget()
    req = request(spec, tmp_path)
    record = target.deploy(req)
    try:
        live = target.probe(record, spec)
        assert (live.reachable, live.healthy, live.drift) == (True, True, ()), live
        reply = target.invoke(record, json.dumps({"data": [[0.0] * 784]}).encode(), timeout=60, service_dir=req.service_dir)
        assert reply.status == 200 and len(json.loads(reply.body)) == 1
        assert target.logs(record, req.service_dir, tail=20).strip()
    finally:
        print(target.delete(record, req.service_dir))


def test_render_command_writes_a_folder_the_sdk_loads_as_is(tmp_path, run_cli, monkeypatch):
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    monkeypatch.chdir(ROOT)
    out = tmp_path / "online"
    result = run_cli("render", "specs/mnist-online.yaml", "-o", out)
    assert result.code == 0, result.err
    assert (out / "sklearn_mnist_model.pkl").read_bytes() == MODEL.read_bytes()
    deployment = load_online_deployment(str(out / "deployment.yml"))
    endpoint = load_online_endpoint(str(out / "endpoint.yml"))
    assert deployment.endpoint_name == endpoint.name == "sklearn-mnist-online"
    assert deployment.instance_type == "Standard_DS1_v2" and endpoint.auth_mode == "key"
