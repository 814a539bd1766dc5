"""Target azureml-online: YAML azure-ai-ml's own loaders accept, and the real SDK against a fake Azure at HTTP."""

from __future__ import annotations

import http.server
import json
import os
import stat
import threading
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml")
# azure-ai-ml's schemas use marshmallow's deprecated `context`; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated")

from azure.ai.ml import load_online_deployment, load_online_endpoint  # noqa: E402  (slow: imported once)
from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint  # noqa: E402

from pipeline import render  # noqa: E402
from pipeline import spec as specs  # noqa: E402
from pipeline.console import Console  # noqa: E402
from pipeline.errors import RenderError, SpecError, TargetError, UsageError  # noqa: E402
from pipeline.targets import azureml_common as common  # noqa: E402
from pipeline.targets import keys  # noqa: E402
from pipeline.targets.azureml_online import OnlineTarget  # noqa: E402
from pipeline.targets.base import DeployRequest, ServiceRecord  # noqa: E402
from tests import fake_azure as fake  # noqa: E402

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
            seen.append(
                {
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": self.rfile.read(int(self.headers["Content-Length"])),
                }
            )
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
    return DeployRequest(
        spec=spec,
        build_dir=build(spec, tmp_path),
        model_path=MODEL,
        model_dir=MODEL.parent,
        service_dir=tmp_path / "service",
        previous=None,
        console=Console(quiet=True),
    )


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


@pytest.mark.parametrize(
    "cores, memory, expected",
    [
        (1, 1, "Standard_DS1_v2"),
        (0.5, 0.5, "Standard_DS1_v2"),
        (1, 3.5, "Standard_DS1_v2"),
        (1, 4, "Standard_F2s_v2"),
        (2, 4, "Standard_F2s_v2"),
        (2, 6, "Standard_DS2_v2"),
        (2, 12, "Standard_E2s_v3"),
        (3, 8, "Standard_F4s_v2"),
        (4, 14, "Standard_DS3_v2"),
        (8, 28, "Standard_DS4_v2"),
        (16, 100, "Standard_E16s_v3"),
        (64, 432, "Standard_E64s_v3"),
        (64, 500, None),
        (1, 1024, None),
    ],
)
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
    spec = load(
        tmp_path,
        {
            SOURCE: "  source: {registry: azureml, file: sklearn_mnist_model.pkl}",
            "  auth: true ": "  auth: false ",
            "    replicas: 1": "    replicas: 1\n    token_auth: true",
        },
    )
    folder = build(spec, tmp_path)
    assert (
        'model: "azureml:sklearn_mnist:1"' in (folder / "deployment.yml").read_text()
    )  # v2's Model(ws, name, version)
    deployment = load_online_deployment(source=str(folder / "deployment.yml"))
    assert deployment.model == "sklearn_mnist:1"  # the loader keeps the reference, minus its azureml: prefix
    assert load_online_endpoint(source=str(folder / "endpoint.yml")).auth_mode == "aml_token"


def test_render_turns_sdk_validation_errors_into_a_render_error(tmp_path):
    own = tmp_path / "specs" / "mytemplates" / "azureml"
    own.mkdir(parents=True)
    template = (ROOT / "templates" / "azureml" / "deployment.yml.j2").read_text()
    (own / "deployment.yml.j2").write_text(
        template.replace("instance_count: {{ azureml.instance_count|yaml }}", 'instance_count: "many"\nreplicas: 2')
    )
    spec = load(tmp_path, {"description: Predict": "templates: mytemplates\ndescription: Predict"})
    with pytest.raises(RenderError) as caught:
        render.render_all(spec)
    assert str(caught.value) == (
        "rendered deployment.yml is not accepted by azure-ai-ml: "
        "instance_count: Not a valid integer.; replicas: Unknown field."
    )


def test_spec_rules_reject_what_endpoints_reject(tmp_path):
    path = write_spec(
        tmp_path / "specs",
        SPEC,
        {
            "  auth: true ": "  auth: false ",
            "tags: {data: MNIST, method: sklearn}": "tags: {data: MNIST, 'a/b': sklearn}",
            "cpu_cores: 1": "cpu_cores: 64",
            "memory_gb: 1": "memory_gb: 512",
            "request_timeout_ms: 5000": "request_timeout_ms: 200000",
            "    replicas: 1": "    replicas: 1\n    autoscale: {max_replicas: 3}",
        },
    )
    lines = path.read_text().splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if text in line)

    shown = specs.display_path(path)
    with pytest.raises(SpecError) as caught:
        specs.load(path)
    assert caught.value.messages == sorted(
        [
            f"{shown}:{at('tags:')}: tags.a/b: Azure rejects tag names containing /",
            f"{shown}:{at('cpu_cores:')}: deploy.cpu_cores: no VM size in the instance_type table has 64 cores and 512 GB; "
            "set deploy.azureml.instance_type",
            f"{shown}:{at('  auth:')}: deploy.auth: managed online endpoints always authenticate: set deploy.auth: true "
            "(key auth) or deploy.azureml.token_auth: true (Azure ML tokens)",
            f"{shown}:{at('request_timeout_ms:')}: deploy.request_timeout_ms: managed online endpoints allow at most "
            "180000 ms, got 200000",
            f"{shown}:{at('autoscale:')}: deploy.azureml.autoscale: not used by target 'azureml-online'",
        ],
        key=lambda m: int(m.split(":")[1]),
    )


# -- deploy, at the wire: the real azure-ai-ml against tests/fake_azure.py --------------------------------
ENDPOINT = rf"{fake.WS_PATH}/onlineEndpoints/sklearn-mnist-online"
DEPLOYMENT = rf"{ENDPOINT}/deployments/blue"


def wired(tmp_path: Path, fake_azure, replace: dict[str, str] | None = None) -> specs.Spec:
    """specs/mnist-online.yaml for the fake workspace: its config.json named in deploy.azureml.workspace_config."""
    return load(
        tmp_path,
        {"    replicas: 1": f"    replicas: 1\n    workspace_config: {fake_azure.config_file}", **(replace or {})},
    )


def puts(fake_azure, path: str) -> list:
    """The bodies of the accepted PUTs to one ARM resource."""
    return [c.json for c in fake_azure.requests_to("PUT", path + "$") if c.status in (200, 201)]


def test_deploy_at_the_wire_creates_endpoint_uploads_deploys_then_routes_traffic(tmp_path, fake_azure):
    spec = wired(tmp_path, fake_azure)
    req = request(spec, tmp_path)
    record = OnlineTarget().deploy(req)

    [first, routed] = puts(fake_azure, ENDPOINT)
    assert first["location"] == "westeurope" and first["tags"] == {"data": "MNIST", "method": "sklearn"}
    assert first["properties"]["authMode"] == "Key"
    assert first["properties"]["description"] == "Predict MNIST with sklearn"
    assert first["properties"]["traffic"] == {}  # a new endpoint routes nothing until blue exists
    assert routed["properties"]["traffic"] == {"blue": 100}
    [deployment] = puts(fake_azure, DEPLOYMENT)
    props = deployment["properties"]
    assert deployment["sku"]["capacity"] == 1 and props["instanceType"] == "Standard_DS1_v2"
    assert props["endpointComputeType"] == "Managed" and deployment["tags"] == {"data": "MNIST", "method": "sklearn"}
    assert props["requestSettings"]["requestTimeout"] == "PT5S"  # deploy.request_timeout_ms: 5000
    assert props["codeConfiguration"]["scoringScript"] == "score.py"
    # the code: the rendered build folder, uploaded to the blob container the workspace handed out
    [code] = [c.json for c in fake_azure.requests_to("PUT", r"/codes/[^/]+/versions/1$")]
    assert props["codeConfiguration"]["codeId"].lower().startswith(f"{fake.WS_PATH}/codes/".lower())
    uploaded = {
        key.split("/", 1)[1]: data
        for key, data in fake_azure.blobs.items()
        if code["properties"]["codeUri"].endswith(key.split("/", 1)[0] + "/build")
    }
    assert uploaded["build/score.py"] == (req.build_dir / "score.py").read_bytes()
    # the model: the fetched, verified file, uploaded to the default datastore as an anonymous model version
    [model] = fake_azure.requests_to("PUT", r"/models/[^/]+/versions/1$")
    assert model.path.lower() in props["model"].lower()
    model_uri = model.json["properties"]["modelUri"]
    assert "/datastores/workspaceblobstore/paths/LocalUpload/" in model_uri
    [blob] = [k for k in fake_azure.blobs if k.endswith("/sklearn_mnist_model.pkl")]
    assert blob.startswith(fake.DATASTORE_CONTAINER + "/") and fake_azure.blobs[blob] == MODEL.read_bytes()
    [environment] = [c.json for c in fake_azure.requests_to("PUT", r"/environments/[^/]+/versions/[^/]+$")]
    assert environment["properties"]["image"] == "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
    assert "azureml-inference-server-http" in environment["properties"]["condaFile"]
    assert len(fake_azure.requests_to("POST", r"/onlineEndpoints/sklearn-mnist-online/listKeys$")) == 1
    keys_now = fake_azure.resources[ENDPOINT.lower()]["_keys"]
    assert record.to_dict() == {
        "target": "azureml-online",
        "endpoint": "sklearn-mnist-online",
        "deployment": "blue",
        "workspace": {"name": "mlws", "resource_group": "ml-rg", "subscription_id": fake.SUBSCRIPTION},
        "workspace_config": str(fake_azure.config_file),
        "scoring_uri": "https://sklearn-mnist-online.westeurope.inference.ml.azure.com/score",
        "swagger_uri": "https://sklearn-mnist-online.westeurope.inference.ml.azure.com/swagger.json",
        "state": "Succeeded",
        "auth_mode": "key",
        "auth": True,
        "model_id": props["model"],
        "model_sha256": spec.model.sha256,
        "instance_type": "Standard_DS1_v2",
        "instance_count": 1,
        "traffic": {"blue": 100},
        "tags": {"data": "MNIST", "method": "sklearn"},
        "description": "Predict MNIST with sklearn",
    }
    assert (
        type(record.to_dict()["state"]) is str
    )  # not the SDK's str enum: json, messages and comparisons see 'Succeeded'
    path = req.service_dir / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"primary": keys_now["primaryKey"], "secondary": keys_now["secondaryKey"]}
    assert keys_now["primaryKey"] not in json.dumps(record.to_dict())
    assert {c.status for c in fake_azure.calls} <= {200, 201, 202, 404}  # 404: the endpoint did not exist yet


def test_deploy_at_the_wire_prints_nothing_on_stdout_and_logs_what_the_sdk_said(tmp_path, fake_azure, capsys):
    req = request(wired(tmp_path, fake_azure), tmp_path)
    OnlineTarget().deploy(req)
    assert capsys.readouterr().out == ""  # the poller's dots and the upload bars went to the log
    log = (req.service_dir / common.SDK_LOG).read_text()
    assert "Uploading sklearn_mnist_model.pkl" in log and ".." in log


def test_deploy_at_the_wire_failed_shows_azures_error_and_the_log_tail(tmp_path, fake_azure):
    logs = "".join(f"log line {i}\n" for i in range(100)) + "ModuleNotFoundError: No module named 'sklearn'\n"
    error = {
        "code": "BadArgument",
        "message": "Deployment failed: the container crashed on startup. Please see troubleshooting guide.",
    }
    fake_azure.outcomes.append(fake.Outcome(state="Failed", error=error, logs=logs))
    req = request(wired(tmp_path, fake_azure), tmp_path)
    with pytest.raises(TargetError) as caught:
        OnlineTarget().deploy(req)
    message = str(caught.value)
    assert message.startswith("deployment blue of endpoint sklearn-mnist-online failed: ")
    assert "(BadArgument) Deployment failed: the container crashed on startup" in message
    assert "ModuleNotFoundError: No module named 'sklearn'" in message and "log line 99" in message
    assert "log line 10\n" not in message
    [logs_call] = fake_azure.requests_to("POST", r"/deployments/blue/getLogs$")
    assert logs_call.json["tail"] == common.LOG_LINES
    assert not fake_azure.requests_to("POST", r"/listKeys$")  # no traffic, no keys
    assert [b["properties"]["traffic"] for b in puts(fake_azure, ENDPOINT)] == [{}]
    # the endpoint was made for this deployment alone: a failed first deploy leaves nothing behind
    assert message.endswith(
        f"(deleted endpoint sklearn-mnist-online, made for it)\n"
        f"(everything the SDK printed is in {req.service_dir / common.SDK_LOG})"
    )
    assert not [k for k in fake_azure.resources if k.startswith(ENDPOINT.lower())]


@pytest.mark.parametrize("status", [429, 503])
def test_deploy_at_the_wire_throttled_is_retried_after_retry_after_and_deployed_once(tmp_path, fake_azure, status):
    busy = {"error": {"code": "TooManyRequests" if status == 429 else "ServiceUnavailable", "message": "later"}}
    fake_azure.fail("PUT", DEPLOYMENT + "$", status, busy, headers={"Retry-After": "7"})
    record = OnlineTarget().deploy(request(wired(tmp_path, fake_azure), tmp_path))
    assert [c.status for c in fake_azure.requests_to("PUT", DEPLOYMENT + "$")] == [status, 201]
    assert 7.0 in fake_azure.sleeps  # azure-core waited as Azure asked
    deploys = [op for op in fake_azure.async_ops.values() if op["resource"] == DEPLOYMENT.lower()]
    assert len(deploys) == 1 and record.to_dict()["state"] == "Succeeded"


def test_deploy_at_the_wire_token_expiring_mid_run_is_renewed(tmp_path, fake_azure):
    fake_azure.after("PUT", DEPLOYMENT + "$", fake_azure.expire_tokens)  # an hour passes while blue starts
    record = OnlineTarget().deploy(request(wired(tmp_path, fake_azure), tmp_path))
    assert record.to_dict()["state"] == "Succeeded"
    assert len(fake_azure.requests_to("POST", r"/oauth2/v2.0/token$")) == 2
    assert not [c for c in fake_azure.calls if c.status == 401]


def test_deploy_at_the_wire_name_taken_in_the_region(tmp_path, fake_azure):
    taken = (
        "Endpoint name sklearn-mnist-online is already in use in region westeurope; endpoint names are unique "
        "per region: choose another name"
    )
    fake_azure.fail("PUT", ENDPOINT + "$", 409, {"error": {"code": "Conflict", "message": taken}})
    with pytest.raises(TargetError) as caught:
        OnlineTarget().deploy(request(wired(tmp_path, fake_azure), tmp_path))
    assert str(caught.value).startswith(f"creating endpoint sklearn-mnist-online: (Conflict) {taken}")
    assert not fake_azure.requests_to("PUT", DEPLOYMENT + "$")


def test_deploy_at_the_wire_rejects_a_build_folder_the_sdk_does_not_accept(tmp_path, fake_azure):
    req = request(wired(tmp_path, fake_azure), tmp_path)
    path = req.build_dir / "deployment.yml"
    path.write_text(path.read_text() + "surprise: 1\n")
    with pytest.raises(TargetError, match="surprise: Unknown field"):
        OnlineTarget().deploy(req)
    assert fake_azure.calls == []  # nothing was sent


# -- probe -----------------------------------------------------------------------------------
def deployed(tmp_path, fake_azure, replace=None):
    spec = wired(tmp_path, fake_azure, replace)
    req = request(spec, tmp_path)
    return OnlineTarget().deploy(req), spec, req


def test_probe_at_the_wire_healthy_and_matching(tmp_path, fake_azure):
    record, spec, _ = deployed(tmp_path, fake_azure)
    live = OnlineTarget().probe(record, spec)
    assert (live.reachable, live.healthy, live.drift) == (True, True, ())
    assert live.detail == (
        f"endpoint sklearn-mnist-online is Succeeded, deployment blue is Succeeded at {record.to_dict()['scoring_uri']}"
    )


def test_probe_at_the_wire_reports_drift(tmp_path, fake_azure):
    record, spec, _ = deployed(tmp_path, fake_azure)
    fake_azure.resources[ENDPOINT.lower()]["properties"]["traffic"] = {"blue": 50, "green": 50}
    fake_azure.resources[DEPLOYMENT.lower()]["sku"]["capacity"] = 3
    live = OnlineTarget().probe(record, spec)
    assert (live.reachable, live.healthy) == (True, False)
    assert live.drift == (
        "traffic: live {'blue': 50, 'green': 50}, recorded {'blue': 100}",
        "instance_count: live 3, recorded 1",
    )


def test_probe_at_the_wire_failed_deployment_shows_the_state_by_name(tmp_path, fake_azure):
    record, spec, _ = deployed(tmp_path, fake_azure)
    fake_azure.resources[DEPLOYMENT.lower()]["properties"]["provisioningState"] = "Failed"
    live = OnlineTarget().probe(record, spec)
    assert not live.healthy
    assert live.detail == "endpoint sklearn-mnist-online is Succeeded, deployment blue is Failed"


def test_probe_at_the_wire_missing_endpoint(tmp_path, fake_azure):
    record, spec, _ = deployed(tmp_path, fake_azure)
    fake_azure.resources = {k: v for k, v in fake_azure.resources.items() if not k.startswith(ENDPOINT.lower())}
    live = OnlineTarget().probe(record, spec)
    assert (live.reachable, live.healthy, live.drift) == (
        True,
        False,
        ("endpoint: recorded, but missing from the workspace",),
    )


def test_probe_at_the_wire_before_the_first_deploy(tmp_path, fake_azure):
    live = OnlineTarget().probe(None, wired(tmp_path, fake_azure))
    assert (live.reachable, live.healthy, live.drift) == (True, False, ())
    assert live.detail == "workspace is reachable; endpoint sklearn-mnist-online does not exist yet"


def test_probe_at_the_wire_with_a_refused_secret_is_unreachable(tmp_path, fake_azure):
    fake_azure.fail(
        "POST",
        r"/oauth2/v2.0/token$",
        401,
        {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."},
        times=10,
    )
    live = OnlineTarget().probe(None, wired(tmp_path, fake_azure))
    assert (live.reachable, live.healthy) == (False, False)
    assert live.detail == (
        "cannot reach the Azure ML workspace: no usable Azure credentials (DefaultAzureCredential found "
        "none): run `az login`, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for "
        "a service principal"
    )
    assert not fake_azure.requests_to("GET", r"/onlineEndpoints/")  # no token, no request


def test_probe_without_config_json_is_unreachable_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLClient.from_config() searches here and upwards
    if any((parent / "config.json").exists() for parent in tmp_path.parents):
        pytest.skip("a config.json above the temporary folder would be found")
    live = OnlineTarget().probe(None, load(tmp_path))
    assert (live.reachable, live.healthy) == (False, False)
    assert live.detail == (
        "cannot reach the Azure ML workspace: no workspace config.json found in the working folder "
        "or its parents (set deploy.azureml.workspace_config)"
    )


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
def rec(data: dict) -> ServiceRecord:
    return ServiceRecord.from_dict(data)


RECORD = {
    "target": "azureml-online",
    "endpoint": "sklearn-mnist-online",
    "deployment": "blue",
    "workspace_config": None,
    "scoring_uri": "https://sklearn-mnist-online.westeurope.inference.ml.azure.com/score",
    "auth_mode": "key",
    "auth": True,
    "model_id": "azureml:/subscriptions/s/models/anon/versions/1",
    "instance_type": "Standard_DS1_v2",
    "instance_count": 1,
    "traffic": {"blue": 100},
    "tags": {"data": "MNIST", "method": "sklearn"},
}


def test_invoke_posts_with_the_endpoint_key_to_the_deployment(tmp_path, scoring_server):
    uri, seen = scoring_server
    keys.write(tmp_path, "primary-secret-key", "secondary-secret-key")
    target = OnlineTarget(client_factory=lambda c: pytest.fail("invoke with a key needs no client"))
    reply = target.invoke(rec({**RECORD, "scoring_uri": uri}), b'{"data": [[0]]}', timeout=5, service_dir=tmp_path)
    assert (reply.status, reply.body) == (200, b"[7, 2]")
    assert seen[0]["headers"]["authorization"] == "Bearer primary-secret-key"
    assert seen[0]["headers"]["azureml-model-deployment"] == "blue"


def test_invoke_at_the_wire_aml_token(tmp_path, fake_azure, scoring_server):
    uri, seen = scoring_server
    record, _, req = deployed(
        tmp_path, fake_azure, {"  auth: true ": "  auth: false ", "  azureml:\n": "  azureml:\n    token_auth: true\n"}
    )
    assert puts(fake_azure, ENDPOINT)[0]["properties"]["authMode"] == "AMLToken"
    assert not (req.service_dir / "keys.json").exists()
    OnlineTarget().invoke(rec({**record.to_dict(), "scoring_uri": uri}), b"{}", timeout=5, service_dir=req.service_dir)
    assert seen[0]["headers"]["authorization"] == "Bearer aml-token-for-sklearn-mnist-online"
    assert len(fake_azure.requests_to("POST", r"/onlineEndpoints/sklearn-mnist-online/token$")) == 1


def test_delete_at_the_wire_deletes_the_endpoint_and_its_keys(tmp_path, fake_azure, capsys):
    record, _, req = deployed(tmp_path, fake_azure)
    capsys.readouterr()
    line = OnlineTarget().delete(record, req.service_dir)
    assert line == "deleted endpoint sklearn-mnist-online and its deployment blue"
    assert [c.status for c in fake_azure.requests_to("DELETE", ENDPOINT + "$")] == [202]
    assert not [k for k in fake_azure.resources if k.startswith(ENDPOINT.lower())]
    assert not (req.service_dir / "keys.json").exists()
    assert capsys.readouterr().out == ""


def test_delete_at_the_wire_missing_endpoint_is_nothing_to_delete(tmp_path, fake_azure):
    keys.write(tmp_path, "k1", "k2")
    line = OnlineTarget().delete(rec({**RECORD, "workspace_config": str(fake_azure.config_file)}), tmp_path)
    assert line == "endpoint sklearn-mnist-online was not found in the workspace (nothing to delete)"
    assert not (tmp_path / "keys.json").exists()


def test_delete_at_the_wire_204_is_nothing_to_delete(tmp_path, fake_azure):
    record, _, req = deployed(tmp_path, fake_azure)
    fake_azure.fail("DELETE", ENDPOINT + "$", 204)  # gone between our look and the delete
    line = OnlineTarget().delete(record, req.service_dir)
    assert line == "endpoint sklearn-mnist-online was not found in the workspace (nothing to delete)"


def test_logs_at_the_wire_is_get_logs_tail(tmp_path, fake_azure):
    fake_azure.outcomes.append(fake.Outcome(logs="".join(f"line {i}\n" for i in range(10))))
    record, _, req = deployed(tmp_path, fake_azure)
    assert OnlineTarget().logs(record, req.service_dir, tail=2) == "line 8\nline 9"
    [call] = fake_azure.requests_to("POST", r"/deployments/blue/getLogs$")
    assert call.json["tail"] == 2


# -- live: a real workspace, only when one is configured (see README: Live tests) ---------------------
@pytest.mark.azure_live
def test_live_online_deploy_probe_score_delete(tmp_path):
    config = os.environ.get("PIPELINE_AZURE_WORKSPACE_CONFIG")
    if not config:
        pytest.skip("set PIPELINE_AZURE_WORKSPACE_CONFIG to a workspace config.json to run the live Azure tests")
    import secrets

    name = f"mnist-live-{secrets.token_hex(4)}"  # endpoint names are unique per Azure region
    spec = load(
        tmp_path,
        {
            "name: sklearn-mnist-online ": f"name: {name} ",
            "    replicas: 1": f"    replicas: 1\n    workspace_config: {config}",
        },
    )
    target = OnlineTarget()
    req = request(spec, tmp_path)
    record = target.deploy(req)
    try:
        live = target.probe(record, spec)
        assert (live.reachable, live.healthy, live.drift) == (True, True, ()), live
        reply = target.invoke(
            record, json.dumps({"data": [[0.0] * 784]}).encode(), timeout=60, service_dir=req.service_dir
        )
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


def test_fetch_registry_model_at_the_wire_with_azure_ai_ml_alone(tmp_path, fake_azure, monkeypatch):
    """For azureml-online a registry model is fetched with azure-ai-ml: azureml-core need not be installed."""
    import sys

    from pipeline import models

    path = "LocalUpload/registered/sklearn_mnist_model.pkl"
    fake_azure.blobs[f"{fake.DATASTORE_CONTAINER}/{path}"] = MODEL.read_bytes()
    version = f"{fake.WS_PATH}/models/sklearn_mnist/versions/1"
    fake_azure.resources[version.lower()] = {
        "id": version,
        "name": "1",
        "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
        "properties": {
            "modelType": "custom_model",
            "flavors": {},
            "tags": {},
            "properties": {},
            "modelUri": f"azureml://subscriptions/{fake.SUBSCRIPTION}/resourcegroups/{fake.RESOURCE_GROUP}/"
            f"workspaces/{fake.WORKSPACE}/datastores/workspaceblobstore/paths/{path}",
        },
    }
    monkeypatch.setitem(sys.modules, "azureml.core", None)  # as if only the azure-v2 extra were installed
    source = models.AzureMLRegistrySource("sklearn_mnist", 1, fake_azure.config_file, sdk="v2")
    got = models.fetch_model(source, tmp_path / "store", "sklearn_mnist", 1, load(tmp_path).model.sha256)
    assert got == tmp_path / "store" / "sklearn_mnist" / "1" / "sklearn_mnist_model.pkl"
    assert got.read_bytes() == MODEL.read_bytes()
    assert fake_azure.requests_to("GET", r"/models/sklearn_mnist/versions/1$")


def test_fetch_stage_picks_the_sdk_of_the_target(tmp_path):
    from pipeline.stages.fetch import source_for

    registry = {SOURCE: "  source: {registry: azureml, file: sklearn_mnist_model.pkl}"}
    assert source_for(load(tmp_path, registry)).sdk == "v2"
    aci = specs.load(
        write_spec(
            tmp_path / "aci",
            "mnist-aci.yaml",
            {f"  source: {ROOT}/examples/mnist/sklearn_mnist_model.pkl": "  source: {registry: azureml, file: m.pkl}"},
        )
    )
    assert source_for(aci).sdk == "v1"
