"""Targets aci and aks: the real azureml-core, offline for its configuration objects, against a fake Azure at HTTP."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import stat
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("azureml.core")
# azureml-core's vendored ruamel.yaml warns on every conda file it reads; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

from azureml._model_management._util import deploy_config_dict_to_obj  # noqa: E402
from azureml.core.webservice.aci import AciServiceDeploymentConfiguration  # noqa: E402
from azureml.core.webservice.aks import AksServiceDeploymentConfiguration  # noqa: E402

from pipeline import render  # noqa: E402
from pipeline import spec as specs  # noqa: E402
from pipeline.console import Console  # noqa: E402
from pipeline.errors import ModelError, SpecError, TargetError, UsageError  # noqa: E402
from pipeline.targets import azureml_common as common  # noqa: E402
from pipeline.targets import keys  # noqa: E402
from pipeline.targets.azureml_v1 import AciTarget, AksTarget  # noqa: E402
from pipeline.targets.base import DeployRequest, ServiceRecord  # noqa: E402
from tests import fake_azure as fake  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"


# -- the network is off limits (conftest's no_network): a hidden call fails the test --
@pytest.fixture(autouse=True)
def _offline(no_network):
    yield no_network


def test_the_network_guard_blocks_azure_and_allows_loopback(no_network):
    with pytest.raises(OSError, match=r"test tried to resolve 'management\.azure\.com'"):
        socket.create_connection(("management.azure.com", 443), timeout=1)
    assert no_network == ["resolve 'management.azure.com'"]
    no_network.clear()  # recorded, as a swallowed attempt would be: the fixture fails such a test at teardown
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=1).close()


# -- specs, rendered build folders, deploy requests ----------------------------------------------
def write_spec(
    folder: Path, base: str = "mnist-aci.yaml", replace: dict[str, str] | None = None, name: str = "spec.yaml"
) -> Path:
    """A copy of specs/<base> in `folder`, its ../examples paths made absolute, with text replaced."""
    text = (ROOT / "specs" / base).read_text(encoding="utf-8").replace("../examples/", f"{ROOT}/examples/")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, base: str = "mnist-aci.yaml", replace: dict[str, str] | None = None) -> specs.Spec:
    return specs.load(write_spec(tmp_path / "specs", base, replace))


def build(spec: specs.Spec, tmp_path: Path) -> Path:
    folder = tmp_path / "build"
    render.write_files(folder, render.render_all(spec))
    return folder


def request(spec: specs.Spec, tmp_path: Path, previous=None, console=None) -> DeployRequest:
    return DeployRequest(
        spec=spec,
        build_dir=build(spec, tmp_path),
        model_path=MODEL,
        model_dir=MODEL.parent,
        service_dir=tmp_path / "service",
        previous=previous,
        console=console or Console(quiet=True),
    )


# -- offline: the tutorial's configuration objects, for real ---------------------------------------
def test_aci_deployment_config_is_the_tutorials(tmp_path):
    spec = load(tmp_path)
    config = AciTarget().deployment_config(spec)
    assert isinstance(config, AciServiceDeploymentConfiguration)
    # AciWebservice.deploy_configuration(cpu_cores=1, memory_gb=1, tags={"data": "MNIST", "method": "sklearn"},
    #                                    description='Predict MNIST with sklearn')
    assert (config.cpu_cores, config.memory_gb) == (1, 1)
    assert config.tags == {"data": "MNIST", "method": "sklearn"}
    assert config.description == "Predict MNIST with sklearn"
    assert config.auth_enabled is False


def test_inference_config_runs_the_rendered_score_py_in_the_rendered_myenv(tmp_path):
    spec = load(tmp_path)
    folder = build(spec, tmp_path)
    config = AciTarget().inference_config(spec, folder)
    assert config.entry_script == str(folder / "score.py")
    assert config.source_directory is None and config.conda_file is None  # the environment carries it all
    env = config.environment
    assert env.name == "sklearn-mnist-aci-env"
    deps = env.python.conda_dependencies
    assert deps.get_python_version() == "3.11"
    assert list(deps.conda_channels) == ["conda-forge"]
    assert {"scikit-learn", "numpy"} <= set(deps.conda_packages)
    assert list(deps.pip_packages) == ["orjson", "azureml-defaults"]  # the spec's, then what Azure's runtime needs


def test_extra_pip_packages_are_azureml_defaults(tmp_path):
    assert AciTarget().extra_pip_packages(load(tmp_path)) == ["azureml-defaults"]
    assert "azureml-defaults" in render.render_all(load(tmp_path))["myenv.yml"]


def test_rendered_aciconfig_json_is_what_the_sdk_reads_back(tmp_path):
    spec = load(tmp_path, replace={"auth: false": "auth: true", "memory_gb: 1\n": "memory_gb: 1.5\n"})
    folder = build(spec, tmp_path)
    data = json.loads((folder / "aciconfig.json").read_text())
    assert data == {
        "computeType": "ACI",
        "containerResourceRequirements": {"cpu": 1, "memoryInGB": 1.5},
        "authEnabled": True,
        "tags": {"data": "MNIST", "method": "sklearn"},
        "description": "Predict MNIST with sklearn",
    }
    ours = AciTarget().deployment_config(spec)
    theirs = deploy_config_dict_to_obj(
        data, data["tags"], None, data["description"]
    )  # `az ml ... --deploy-config-file`
    for key in ("cpu_cores", "memory_gb", "auth_enabled", "tags", "description"):
        assert getattr(theirs, key) == getattr(ours, key), key
    AciTarget().check_rendered(folder, ours)


def test_an_edited_config_file_stops_the_deploy(tmp_path):
    spec = load(tmp_path)
    folder = build(spec, tmp_path)
    path = folder / "aciconfig.json"
    path.write_text(path.read_text().replace('"memoryInGB": 1', '"memoryInGB": 4'))
    with pytest.raises(TargetError, match=r"memory_gb: file 4, spec 1.*render again"):
        AciTarget().check_rendered(folder, AciTarget().deployment_config(spec))


AKS = {"autoscale": "autoscale: {min_replicas: 1, max_replicas: 3, target_utilization: 70}"}


@pytest.mark.parametrize(
    "settings, expected",
    [
        (
            AKS["autoscale"],
            {
                "autoscale_enabled": True,
                "autoscale_min_replicas": 1,
                "autoscale_max_replicas": 3,
                "autoscale_target_utilization": 70,
                "num_replicas": None,
            },
        ),
        ("replicas: 2", {"autoscale_enabled": False, "num_replicas": 2, "autoscale_min_replicas": None}),
        ("token_auth: true", {"autoscale_enabled": None, "num_replicas": None, "token_auth_enabled": True}),
    ],
)
def test_aks_deployment_config(tmp_path, settings, expected):
    auth = "auth: false" if "token_auth" in settings else "auth: true"
    spec = load(tmp_path, "mnist-aks.yaml", {"  auth: true ": f"  {auth} ", AKS["autoscale"]: settings})
    config = AksTarget().deployment_config(spec)
    assert isinstance(config, AksServiceDeploymentConfiguration)
    assert (config.cpu_cores, config.memory_gb, config.scoring_timeout_ms) == (1, 1, 5000)
    assert config.tags == {"data": "MNIST", "method": "sklearn"} and config.description == "Predict MNIST with sklearn"
    assert config.compute_target_name == "aks-mnist"
    assert config.auth_enabled is (auth == "auth: true")
    assert config.token_auth_enabled is ("token_auth" in settings)
    for key, value in expected.items():
        assert getattr(config, key) == value, key
    AksTarget().check_rendered(build(spec, tmp_path), config)  # aksconfig.json says the same


# -- spec rules: Azure's own limits, caught by pipeline.spec.load before any SDK call ----------------
@pytest.mark.parametrize(
    "base, replace, at, expected",
    [
        (
            "mnist-aci.yaml",
            {"cpu_cores: 1": "cpu_cores: 5"},
            "cpu_cores:",
            "deploy.cpu_cores: Azure Container Instances allows at most 4 cores, got 5",
        ),
        (
            "mnist-aci.yaml",
            {"memory_gb: 1": "memory_gb: 32"},
            "memory_gb:",
            "deploy.memory_gb: Azure Container Instances allows at most 16 GB, got 32",
        ),
        (
            "mnist-aci.yaml",
            {"  ready_timeout_s: 1200": "  ready_timeout_s: 1200\n  azureml: {replicas: 2}"},
            "replicas",
            "deploy.azureml.replicas: not used by target 'aci' (aks only)",
        ),
        (
            "mnist-aks.yaml",
            {"    compute_target: aks-mnist    # the attached cluster's name in the workspace\n": ""},
            "  azureml:",
            "deploy.azureml.compute_target: required for target 'aks': the name of the attached AKS cluster",
        ),
        (
            "mnist-aks.yaml",
            {"compute_target: aks-mnist": "compute_target: 1-aks_"},
            "compute_target:",
            "deploy.azureml.compute_target: '1-aks_' is not a name Azure ML accepts for a compute target: "
            "2-16 letters, digits and '-', starting with a letter and not ending with '-'",
        ),
        (
            "mnist-aks.yaml",
            {"    autoscale:": "    replicas: 2\n    autoscale:"},
            "autoscale:",
            "deploy.azureml.autoscale: cannot be combined with deploy.azureml.replicas (a fixed count disables autoscaling)",
        ),
        (
            "mnist-aks.yaml",
            {"    autoscale:": "    token_auth: true\n    autoscale:"},
            "token_auth:",
            "deploy.azureml.token_auth: cannot be combined with deploy.auth: AKS allows key auth or token auth, not both",
        ),
        (
            "mnist-aci.yaml",
            {"name: sklearn-mnist-aci ": "name: Sklearn_MNIST "},
            "name:",
            "name: 'Sklearn_MNIST' must be 3-32 characters of lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'",
        ),
    ],
)
def test_spec_rules_reject_what_azure_rejects(tmp_path, base, replace, at, expected):
    path = write_spec(tmp_path / "specs", base, replace)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if at in text)
    with pytest.raises(SpecError) as caught:
        specs.load(path)
    assert caught.value.messages == [f"{specs.display_path(path)}:{line}: {expected}"]


def test_shipped_azure_specs_are_valid():
    for name in ("mnist-aci.yaml", "mnist-aks.yaml", "mnist-online.yaml"):
        loaded = specs.load(ROOT / "specs" / name)
        assert loaded.model.sha256 == specs.load(ROOT / "specs" / "mnist.yaml").model.sha256
        assert loaded.deploy.settings().get("workspace_config") is None  # the SDK's own config.json search


# -- deploy, at the wire: the real azureml-core against tests/fake_azure.py ------------------------------
def wired(tmp_path: Path, fake, base: str = "mnist-aci.yaml", replace: dict[str, str] | None = None) -> specs.Spec:
    """specs/<base> for the fake workspace: its config.json named in deploy.azureml.workspace_config."""
    replace = dict(replace or {})
    if base == "mnist-aci.yaml":
        block = f"  azureml: {{workspace_config: {fake.config_file}}}"
        replace["  ready_timeout_s: 1200"] = f"  ready_timeout_s: 1200\n{block}"
    else:
        replace["  azureml:\n"] = f"  azureml:\n    workspace_config: {fake.config_file}\n"
    return load(tmp_path, base, replace)


def created(fake) -> dict:
    """The one create request MMS received (a retry that created nothing does not count)."""
    [call] = [c for c in fake.requests_to("POST", r"/services$") if c.status == 202]
    return call.json


def test_deploy_at_the_wire_registers_uploads_and_deploys_like_the_tutorial(tmp_path, fake_azure, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the model (and the state home) live outside the working directory
    spec = wired(tmp_path, fake_azure)
    req = request(spec, tmp_path)
    record = AciTarget().deploy(req)

    # Model.register: the verified file uploaded as an artifact, an asset over it, the model with our tags
    [register] = fake_azure.requests_to("POST", r"/models$")
    assert register.json["name"] == "sklearn_mnist" and register.json["description"] == "Predict MNIST with sklearn"
    assert register.json["kvTags"] == {"data": "MNIST", "method": "sklearn", "sha256": spec.model.sha256}
    [asset] = fake_azure.assets.values()
    assert register.json["url"] == f"aml://asset/{asset['id']}"
    prefix = asset["artifacts"][0]["prefix"]
    assert prefix.startswith("LocalUpload/") and prefix.endswith("/sklearn_mnist_model.pkl")
    assert fake_azure.blobs[f"azureml/{prefix}"] == MODEL.read_bytes()
    # Model.deploy: AciWebservice.deploy_configuration as the spec says, overwrite=True, our model and files
    body = created(fake_azure)
    assert body["computeType"] == "ACI" and body["name"] == "sklearn-mnist-aci"
    assert body["containerResourceRequirements"] == {"cpu": 1, "memoryInGB": 1}
    assert body["kvTags"] == {"data": "MNIST", "method": "sklearn"}
    assert body["description"] == "Predict MNIST with sklearn"
    assert (body["authEnabled"], body["overwrite"]) == (False, True)
    image = body["environmentImageRequest"]
    assert image["modelIds"] == ["sklearn_mnist:1"]
    assert image["environment"]["name"] == "sklearn-mnist-aci-env"
    conda = image["environment"]["python"]["condaDependencies"]
    assert conda["channels"] == ["conda-forge"]
    assert conda["dependencies"][:3] == ["python=3.11", "scikit-learn", "numpy"]
    assert conda["dependencies"][-1] == {"pip": ["orjson", "azureml-defaults"]}
    [script] = [a for a in image["assets"] if a["id"] == "score.py"]
    uploaded = fake_azure.blobs["azureml/" + script["url"].removeprefix("aml://artifact/")]
    assert uploaded == (req.build_dir / "score.py").read_bytes()  # the rendered score.py, byte for byte
    assert len(fake_azure.requests_to("GET", r"/operations/")) == 2  # Running, then Succeeded
    assert record.to_dict() == {
        "target": "aci",
        "service": "sklearn-mnist-aci",
        "workspace": {"name": "mlws", "resource_group": "ml-rg", "subscription_id": fake.SUBSCRIPTION},
        "workspace_config": str(fake_azure.config_file),
        "scoring_uri": "http://sklearn-mnist-aci.westeurope.azurecontainer.io/score",
        "swagger_uri": "http://sklearn-mnist-aci.westeurope.azurecontainer.io/swagger.json",
        "state": "Healthy",
        "model_id": "sklearn_mnist:1",
        "model_name": "sklearn_mnist",
        "model_version": 1,
        "model_sha256": spec.model.sha256,
        "auth": False,
        "token_auth": False,
        "tags": {"data": "MNIST", "method": "sklearn"},
        "description": "Predict MNIST with sklearn",
        "cpu_cores": 1,
        "memory_gb": 1,
    }
    assert Path.cwd() == elsewhere and list(elsewhere.iterdir()) == []  # back where we were, nothing left there
    assert not (req.service_dir / "keys.json").exists()
    # every ARM and AML request carried the service principal's token (the fake answers 401 otherwise)
    assert {c.status for c in fake_azure.calls} <= {200, 201, 202}
    [token] = fake_azure.requests_to("POST", r"/oauth2/v2.0/token$")
    assert "client_id=" + fake.CLIENT_ID in token.body.decode()


def test_deploy_at_the_wire_prints_nothing_on_stdout_and_logs_what_the_sdk_said(tmp_path, fake_azure, capsys):
    req = request(wired(tmp_path, fake_azure), tmp_path)
    AciTarget().deploy(req)
    out, _ = capsys.readouterr()
    assert out == ""  # `run --json` prints one JSON document: the SDK's prints went to the log
    log = (req.service_dir / common.SDK_LOG).read_text()
    assert "Registering model sklearn_mnist" in log
    assert 'ACI service creation operation finished, operation "Succeeded"' in log


def test_deploy_at_the_wire_with_auth_stores_keys_0600_and_never_in_the_record(tmp_path, fake_azure):
    req = request(wired(tmp_path, fake_azure, replace={"auth: false": "auth: true"}), tmp_path)
    record = AciTarget().deploy(req)
    assert created(fake_azure)["authEnabled"] is True
    assert len(fake_azure.requests_to("POST", r"/services/sklearn-mnist-aci/listkeys$")) == 1
    live = fake_azure.services["sklearn-mnist-aci"]["_keys"]
    path = req.service_dir / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"primary": live["primaryKey"], "secondary": live["secondaryKey"]}
    assert live["primaryKey"] not in json.dumps(record.to_dict()) and record.to_dict()["auth"] is True


def test_deploy_at_the_wire_failed_shows_azures_error_and_the_log_tail(tmp_path, fake_azure):
    logs = "".join(f"log line {i}\n" for i in range(200)) + "ModuleNotFoundError: No module named 'sklearn'\n"
    error = {
        "code": "AciDeploymentFailed",
        "statusCode": 400,
        "message": "Aci Deployment failed with exception: Your container application crashed.",
        "details": [{"code": "CrashLoopBackOff", "message": "Your container application crashed."}],
    }
    fake_azure.outcomes.append(fake.Outcome(state="Failed", service_state="Unhealthy", error=error, logs=logs))
    req = request(wired(tmp_path, fake_azure), tmp_path)
    with pytest.raises(TargetError) as caught:
        AciTarget().deploy(req)
    message = str(caught.value)
    assert message.startswith(
        "ACI service sklearn-mnist-aci did not become healthy within 1200 s: Service deployment "
        "polling reached non-successful terminal state, current service state: Unhealthy"
    )
    assert '"code": "AciDeploymentFailed"' in message and "Your container application crashed." in message
    assert "ModuleNotFoundError: No module named 'sklearn'" in message and "log line 199" in message
    assert "log line 150" not in message  # only the tail
    [logs_call] = fake_azure.requests_to("GET", r"/services/sklearn-mnist-aci/logs$")
    assert logs_call.query["tail"] == str(common.LOG_LINES)
    assert message.endswith(f"(everything the SDK printed is in {req.service_dir / common.SDK_LOG})")
    assert not fake_azure.requests_to("POST", r"/listkeys$")


def test_deploy_at_the_wire_succeeded_but_unhealthy_still_fails(tmp_path, fake_azure):
    fake_azure.outcomes.append(fake.Outcome(state="Succeeded", service_state="Unhealthy", logs="boom\n"))
    with pytest.raises(TargetError, match=r"the service is Unhealthy(.|\n)*boom"):
        AciTarget().deploy(request(wired(tmp_path, fake_azure), tmp_path))


def test_deploy_at_the_wire_times_out_by_the_sdks_own_clock(tmp_path, fake_azure):
    fake_azure.outcomes.append(fake.Outcome(polls=10**6))  # Azure never finishes
    with pytest.raises(TargetError) as caught:
        AciTarget().deploy(request(wired(tmp_path, fake_azure), tmp_path))
    assert "did not become healthy within 1200 s: Deployment polling exceeded timeout override of 1200.0s" in str(
        caught.value
    )
    assert sum(fake_azure.sleeps) >= 1200  # the SDK's 5 s polls, on the fake's clock


@pytest.mark.parametrize("status", [429, 503])
def test_deploy_at_the_wire_throttled_is_retried_by_the_sdk_and_deployed_once(tmp_path, fake_azure, status):
    busy = {"code": "TooManyRequests" if status == 429 else "ServiceUnavailable", "message": "try again later"}
    fake_azure.fail("POST", r"/services$", status, {"error": busy}, headers={"Retry-After": "7"})
    fake_azure.fail("POST", r"/models$", status, {"error": busy}, headers={"Retry-After": "7"})
    record = AciTarget().deploy(request(wired(tmp_path, fake_azure), tmp_path))
    assert [c.status for c in fake_azure.requests_to("POST", r"/services$")] == [status, 202]
    assert [c.status for c in fake_azure.requests_to("POST", r"/models$")] == [status, 200]
    assert list(fake_azure.services) == ["sklearn-mnist-aci"] and list(fake_azure.models) == ["sklearn_mnist:1"]
    assert [op["operationType"] for op in fake_azure.operations.values()] == ["Deploy"]  # one deployment
    assert record.to_dict()["model_id"] == "sklearn_mnist:1"
    # azureml-core backs off on its own schedule (2 s and more), whatever Retry-After says
    assert len([s for s in fake_azure.sleeps if s >= 2]) >= 2


def test_deploy_at_the_wire_token_expiring_mid_run_is_renewed(tmp_path, fake_azure):
    fake_azure.after("POST", r"/services$", fake_azure.expire_tokens)  # an hour passes while ACI starts
    record = AciTarget().deploy(request(wired(tmp_path, fake_azure), tmp_path))
    assert record.to_dict()["state"] == "Healthy"
    tokens = fake_azure.requests_to("POST", r"/oauth2/v2.0/token$")
    assert len(tokens) == 2  # the SDK saw its token expire and asked for a new one before polling
    assert not [c for c in fake_azure.calls if c.status == 401]


def test_deploy_at_the_wire_token_rejected_mid_run_fails_clearly_and_a_rerun_updates(tmp_path, fake_azure):
    spec = wired(tmp_path, fake_azure)
    # Azure stops accepting the token the SDK still trusts (revoked, or the machine's clock is behind)
    fake_azure.after("POST", r"/services$", lambda: fake_azure.tokens.clear())
    with pytest.raises(TargetError) as caught:
        AciTarget().deploy(request(spec, tmp_path))
    assert "Response Code: 401" in str(caught.value) and "AuthenticationFailed" in str(caught.value)
    assert "Headers:" not in str(caught.value)  # the raw response headers are noise
    record = AciTarget().deploy(request(spec, tmp_path))  # a new run signs in again and updates in place
    assert record.to_dict()["state"] == "Healthy" and list(fake_azure.services) == ["sklearn-mnist-aci"]
    assert [c.json["overwrite"] for c in fake_azure.requests_to("POST", r"/services$")] == [True, True]


def test_deploy_at_the_wire_aci_quota_error_names_the_quota(tmp_path, fake_azure):
    quota = {
        "code": "BadRequest",
        "statusCode": 400,
        "message": "The request is invalid.",
        "details": [
            {
                "code": "ContainerGroupQuotaReached",
                "message": "Resource type 'Microsoft.ContainerInstance/containerGroups' container group quota "
                "'StandardCores' exceeded in region 'westeurope'. Limit: '10', Usage: '10' Requested: '1'.",
            }
        ],
    }
    fake_azure.fail("POST", r"/services$", 400, quota)
    with pytest.raises(TargetError) as caught:
        AciTarget().deploy(request(wired(tmp_path, fake_azure), tmp_path))
    message = str(caught.value)
    assert message.startswith("ACI refused to deploy sklearn-mnist-aci: Received bad response from Model Management")
    assert (
        "Azure said: BadRequest: The request is invalid.; ContainerGroupQuotaReached: Resource type "
        "'Microsoft.ContainerInstance/containerGroups' container group quota 'StandardCores' exceeded" in message
    )
    assert "Headers:" not in message
    assert len(fake_azure.requests_to("POST", r"/services$")) == 1 and not fake_azure.services  # a 400 is final


def test_deploy_at_the_wire_name_taken_by_another_service(tmp_path, fake_azure):
    taken = "Service name sklearn-mnist-aci is already in use by an AKS service in this workspace; choose another name"
    fake_azure.fail("POST", r"/services/validate$", 200, {"error": {"code": "BadRequest", "message": taken}})
    with pytest.raises(TargetError) as caught:
        AciTarget().deploy(request(wired(tmp_path, fake_azure), tmp_path))
    assert str(caught.value).startswith(f"ACI refused to deploy sklearn-mnist-aci: {taken}")
    assert not fake_azure.requests_to("POST", r"/services$")  # refused before anything was created


def register_in_the_fake(fake_azure, version: int = 1, tags: dict | None = None) -> dict:
    """A model already in the workspace's registry, with its file in the workspace's storage."""
    asset_id = f"asset{version}"
    prefix = f"LocalUpload/registered/{version}/sklearn_mnist_model.pkl"
    fake_azure.blobs[f"azureml/{prefix}"] = MODEL.read_bytes()
    fake_azure.assets[asset_id] = {"id": asset_id, "name": "sklearn_mnist", "artifacts": [{"prefix": prefix}]}
    model = {
        "id": f"sklearn_mnist:{version}",
        "name": "sklearn_mnist",
        "version": version,
        "url": f"aml://asset/{asset_id}",
        "mimeType": "application/octet-stream",
        "description": None,
        "framework": "Custom",
        "frameworkVersion": None,
        "unpack": False,
        "kvTags": dict(tags or {}),
        "properties": {},
        "experimentName": None,
        "runId": None,
        "datasets": [],
        "createdTime": fake.NOW,
        "modifiedTime": fake.NOW,
        "createdBy": {"userName": "someone"},
        "resourceRequirements": None,
    }
    fake_azure.models[model["id"]] = model
    return model


def test_deploy_at_the_wire_registry_model_is_used_not_registered(tmp_path, fake_azure):
    register_in_the_fake(fake_azure)
    source = f"  source: {ROOT}/examples/mnist/sklearn_mnist_model.pkl"
    spec = wired(tmp_path, fake_azure, replace={source: "  source: {registry: azureml, file: sklearn_mnist_model.pkl}"})
    record = AciTarget().deploy(request(spec, tmp_path))
    assert not fake_azure.requests_to("POST", r"/models$")
    assert not [c for c in fake_azure.requests_to("POST", r"/artifacts/batch") if b"sklearn_mnist_model" in c.body]
    assert created(fake_azure)["environmentImageRequest"]["modelIds"] == ["sklearn_mnist:1"]
    assert record.to_dict()["model_id"] == "sklearn_mnist:1"


def test_redeploy_at_the_wire_reuses_the_registered_model(tmp_path, fake_azure):
    spec = wired(tmp_path, fake_azure)
    register_in_the_fake(fake_azure, 7, {"sha256": spec.model.sha256})
    previous = ServiceRecord.from_dict(
        {
            "target": "aci",
            "model_sha256": spec.model.sha256,
            "model_version": 7,
            "workspace": {"name": "mlws", "resource_group": "ml-rg", "subscription_id": fake.SUBSCRIPTION},
        }
    )
    record = AciTarget().deploy(request(spec, tmp_path, previous=previous))
    assert not fake_azure.requests_to("POST", r"/models$")  # the same bytes are not registered again
    assert created(fake_azure)["environmentImageRequest"]["modelIds"] == ["sklearn_mnist:7"]
    assert record.to_dict()["model_version"] == 7


@pytest.mark.parametrize(
    "settings, expected",
    [
        (
            AKS["autoscale"],
            {
                "numReplicas": None,
                "autoScaler": {
                    "autoscaleEnabled": True,
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "targetUtilization": 70,
                    "refreshPeriodInSeconds": None,
                },
            },
        ),
        (
            "replicas: 2",
            {
                "numReplicas": 2,
                "autoScaler": {
                    "autoscaleEnabled": False,
                    "minReplicas": None,
                    "maxReplicas": None,
                    "targetUtilization": None,
                    "refreshPeriodInSeconds": None,
                },
            },
        ),
    ],
)
def test_aks_deploy_at_the_wire_sends_the_spec(tmp_path, fake_azure, settings, expected):
    spec = wired(tmp_path, fake_azure, "mnist-aks.yaml", {AKS["autoscale"]: settings})
    req = request(spec, tmp_path)
    record = AksTarget().deploy(req)
    assert len(fake_azure.requests_to("GET", r"/computes/aks-mnist$")) == 1  # ComputeTarget(ws, 'aks-mnist')
    body = created(fake_azure)
    assert (body["computeType"], body["computeName"], body["name"]) == ("AKS", "aks-mnist", "sklearn-mnist-aks")
    assert body["containerResourceRequirements"] == {
        "cpu": 1,
        "cpuLimit": None,
        "memoryInGB": 1,
        "memoryInGBLimit": None,
        "gpu": None,
    }
    assert (body["authEnabled"], body["aadAuthEnabled"], body["scoringTimeoutMs"]) == (True, False, 5000)
    assert body["kvTags"] == {"data": "MNIST", "method": "sklearn"}
    assert body["description"] == "Predict MNIST with sklearn"
    for key, value in expected.items():
        assert body[key] == value, key
    assert record.to_dict()["compute_target"] == "aks-mnist" and record.to_dict()["auth"] is True
    assert stat.S_IMODE((req.service_dir / "keys.json").stat().st_mode) == 0o600


def test_aks_token_auth_at_the_wire_invoke_fetches_a_fresh_token(tmp_path, fake_azure, scoring_server):
    uri, seen = scoring_server
    spec = wired(
        tmp_path,
        fake_azure,
        "mnist-aks.yaml",
        {"  auth: true ": "  auth: false ", AKS["autoscale"]: "token_auth: true"},
    )
    req = request(spec, tmp_path)
    record = AksTarget().deploy(req)
    assert created(fake_azure)["aadAuthEnabled"] is True and created(fake_azure)["authEnabled"] is False
    AksTarget().invoke(rec({**record.to_dict(), "scoring_uri": uri}), b"{}", timeout=5, service_dir=req.service_dir)
    assert seen[0]["headers"]["Authorization"] == "Bearer aad-token-for-sklearn-mnist-aks"
    assert len(fake_azure.requests_to("POST", r"/services/sklearn-mnist-aks/token$")) == 1


# -- probe: live, drifted, missing, unreachable ---------------------------------------------------
def deployed(tmp_path, fake_azure, **replace) -> tuple[dict, specs.Spec, DeployRequest]:
    spec = wired(tmp_path, fake_azure, replace=replace or None)
    req = request(spec, tmp_path)
    return AciTarget().deploy(req), spec, req


def test_probe_at_the_wire_healthy_and_matching(tmp_path, fake_azure):
    record, spec, _ = deployed(tmp_path, fake_azure)
    live = AciTarget().probe(record, spec)
    assert (live.reachable, live.healthy, live.drift) == (True, True, ())
    assert live.detail == f"ACI service sklearn-mnist-aci is Healthy at {record.to_dict()['scoring_uri']}"


def test_probe_at_the_wire_reports_drift(tmp_path, fake_azure):
    record, spec, _ = deployed(tmp_path, fake_azure)
    service = fake_azure.services["sklearn-mnist-aci"]  # changed by someone in the portal
    service["kvTags"] = {"data": "MNIST"}
    service["containerResourceRequirements"] = {"cpu": 1, "memoryInGB": 2}
    live = AciTarget().probe(record, spec)
    assert live.reachable and live.healthy
    assert live.drift == (
        "tags: live {'data': 'MNIST'}, recorded {'data': 'MNIST', 'method': 'sklearn'}",
        "memory_gb: live 2, recorded 1",
    )


def test_probe_at_the_wire_missing_service(tmp_path, fake_azure):
    record, spec, _ = deployed(tmp_path, fake_azure)
    del fake_azure.services["sklearn-mnist-aci"]
    live = AciTarget().probe(record, spec)
    assert (live.reachable, live.healthy) == (True, False)
    assert live.detail == "ACI service sklearn-mnist-aci not found in workspace mlws"
    assert live.drift == ("service: recorded, but missing from the workspace",)


def test_probe_at_the_wire_before_the_first_deploy(tmp_path, fake_azure):
    spec = wired(tmp_path, fake_azure)
    live = AciTarget().probe(None, spec)
    assert (live.reachable, live.healthy, live.drift) == (True, False, ())
    assert live.detail == "workspace mlws is reachable; ACI service sklearn-mnist-aci does not exist yet"
    assert live.found is False
    deployed(tmp_path / "someone-else", fake_azure)  # someone else's service with the same name, without a stamp
    live = AciTarget().probe(None, spec)
    assert live.detail.endswith(
        "it is not recorded here and carries no stamp of pipeline: deploy will overwrite it in workspace mlws"
    )
    assert (live.found, live.stamp) == (True, None)


def test_probe_at_the_wire_unhealthy(tmp_path, fake_azure):
    record, spec, _ = deployed(tmp_path, fake_azure)
    fake_azure.services["sklearn-mnist-aci"]["state"] = "Unhealthy"
    live = AciTarget().probe(record, spec)
    assert (live.reachable, live.healthy, live.detail) == (True, False, "ACI service sklearn-mnist-aci is Unhealthy")


def test_probe_without_credentials_is_unreachable_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (*common.SP_ENV, "MSI_ENDPOINT", "AZUREML_AUTH_CONFIG_DIR", "AZURE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    live = AciTarget().probe(None, load(tmp_path))
    assert (live.reachable, live.healthy, live.drift) == (False, False, ())
    assert live.detail == (
        "cannot reach the Azure ML workspace: no Azure credentials: run `az login`, or set "
        "AZUREML_SERVICE_PRINCIPAL_ID, AZUREML_SERVICE_PRINCIPAL_PASSWORD, "
        "AZUREML_SERVICE_PRINCIPAL_TENANT_ID for a service principal"
    )


def test_probe_without_config_json_is_unreachable_with_a_reason(tmp_path, fake_azure, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Workspace.from_config() searches here and upwards
    if any((parent / "config.json").exists() for parent in [tmp_path, *tmp_path.parents]):
        pytest.skip("a config.json above the temporary folder would be found")
    live = AciTarget().probe(None, load(tmp_path))
    assert (live.reachable, live.healthy) == (False, False)
    assert live.detail == (
        "cannot reach the Azure ML workspace: no workspace config.json found in the working folder "
        "or its parents (set deploy.azureml.workspace_config)"
    )


def test_probe_at_the_wire_finds_config_json_like_the_sdk(tmp_path, fake_azure, monkeypatch):
    monkeypatch.chdir(fake_azure.config_file.parent)  # Workspace.from_config(): ./config.json
    live = AciTarget().probe(None, load(tmp_path))
    assert live.reachable and live.detail.startswith("workspace mlws is reachable")
    [workspace] = fake_azure.requests_to("GET", r"/workspaces/mlws$")
    assert workspace.host == "management.azure.com"


def test_probe_at_the_wire_azure_unavailable_is_unreachable(tmp_path, fake_azure):
    fake_azure.fail(
        "GET", r"/workspaces/mlws$", 503, {"error": {"code": "ServiceUnavailable", "message": "down"}}, times=100
    )
    live = AciTarget().probe(None, wired(tmp_path, fake_azure))
    assert (live.reachable, live.healthy) == (False, False)
    assert live.detail.startswith("cannot reach the Azure ML workspace: ")


def test_probe_network_failure_is_unreachable(tmp_path):
    def offline(config):
        raise OSError("HTTPSConnectionPool(host='management.azure.com', port=443): Max retries exceeded")

    live = AciTarget(workspace_factory=offline).probe(rec(RECORD))
    assert (live.reachable, live.detail) == (
        False,
        "cannot reach the Azure ML workspace: no network connection to Azure (management.azure.com)",
    )


def test_missing_sdk_is_a_usage_error_and_an_unreachable_probe(tmp_path, monkeypatch):
    spec = load(tmp_path)
    monkeypatch.setitem(sys.modules, "azureml.core", None)  # as if azureml-core were not installed
    with pytest.raises(UsageError) as caught:
        AciTarget().deployment_config(spec)
    assert str(caught.value) == "target 'aci' needs the azure extra: pip install '.[azure]'"
    live = AciTarget().probe(rec(RECORD), spec)
    assert (live.reachable, live.detail) == (False, "target 'aci' needs the azure extra: pip install '.[azure]'")


# -- invoke, delete, logs --------------------------------------------------------------------------
def rec(data: dict) -> ServiceRecord:
    return ServiceRecord.from_dict(data)


RECORD = {
    "target": "aci",
    "service": "sklearn-mnist-aci",
    "workspace_config": None,
    "model_id": "sklearn_mnist:7",
    "scoring_uri": "http://sklearn-mnist-aci.westeurope.azurecontainer.io/score",
    "auth": False,
    "tags": {"data": "MNIST", "method": "sklearn"},
    "cpu_cores": 1,
    "memory_gb": 1,
}


@pytest.fixture
def scoring_server():
    """A real HTTP server on loopback standing in for the scoring URI; it records what it was sent."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
            status, answer = (400, b'{"error": "bad"}') if b"bad" in body else (200, b"[7, 2]")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score", seen
    server.shutdown()
    server.server_close()


def test_invoke_posts_with_the_stored_key(tmp_path, scoring_server):
    uri, seen = scoring_server
    keys.write(tmp_path, "primary-secret-key", "secondary-secret-key")
    target = AciTarget(workspace_factory=lambda c: pytest.fail("invoke with a key needs no workspace"))
    reply = target.invoke(
        rec({**RECORD, "scoring_uri": uri, "auth": True}), b'{"data": [[0]]}', timeout=5, service_dir=tmp_path
    )
    assert (reply.status, reply.body) == (200, b"[7, 2]")
    assert reply.seconds > 0
    assert seen[0]["headers"]["Authorization"] == "Bearer primary-secret-key"
    assert seen[0]["headers"]["Content-Type"] == "application/json" and seen[0]["body"] == b'{"data": [[0]]}'
    bad = target.invoke(rec({**RECORD, "scoring_uri": uri}), b'{"bad": 1}', timeout=5, service_dir=tmp_path)
    assert (bad.status, bad.body) == (400, b'{"error": "bad"}')
    assert "Authorization" not in seen[1]["headers"]


def test_invoke_without_keys_file_asks_azure_and_says_why_it_could_not(tmp_path):
    def offline(config):
        raise OSError("HTTPSConnectionPool(host='management.azure.com', port=443): Max retries exceeded")

    with pytest.raises(TargetError) as caught:
        AciTarget(workspace_factory=offline).invoke(
            rec({**RECORD, "auth": True}), b"{}", timeout=1, service_dir=tmp_path
        )
    assert str(caught.value) == (
        f"no key for ACI service sklearn-mnist-aci in {tmp_path}, and Azure did not give it: "
        "cannot reach the Azure ML workspace: no network connection to Azure "
        "(management.azure.com)"
    )


def test_invoke_at_the_wire_fetches_the_key_on_a_machine_that_has_none(tmp_path, fake_azure, scoring_server):
    uri, seen = scoring_server
    record, _, _ = deployed(tmp_path, fake_azure, **{"auth: false": "auth: true"})
    fresh = tmp_path / "fresh-runner"
    fresh.mkdir()
    reply = AciTarget().invoke(rec({**record.to_dict(), "scoring_uri": uri}), b"{}", timeout=5, service_dir=fresh)
    live = fake_azure.services["sklearn-mnist-aci"]["_keys"]
    assert reply.status == 200 and seen[0]["headers"]["Authorization"] == f"Bearer {live['primaryKey']}"
    assert json.loads((fresh / "keys.json").read_text()) == {
        "primary": live["primaryKey"],
        "secondary": live["secondaryKey"],
    }
    assert stat.S_IMODE((fresh / "keys.json").stat().st_mode) == 0o600


def test_delete_at_the_wire_deletes_the_service_and_its_keys(tmp_path, fake_azure, capsys):
    record, _, req = deployed(tmp_path, fake_azure, **{"auth: false": "auth: true"})
    capsys.readouterr()
    line = AciTarget().delete(record, req.service_dir)
    assert line == "deleted ACI service sklearn-mnist-aci from workspace mlws (registered model sklearn_mnist:1 kept)"
    assert [c.status for c in fake_azure.requests_to("DELETE", r"/services/sklearn-mnist-aci$")] == [202]
    assert fake_azure.services == {} and list(fake_azure.models) == ["sklearn_mnist:1"]
    assert not (req.service_dir / "keys.json").exists()
    assert capsys.readouterr().out == ""  # the SDK's polling output went to the log


def test_delete_at_the_wire_already_gone(tmp_path, fake_azure):
    record, _, req = deployed(tmp_path, fake_azure)
    del fake_azure.services["sklearn-mnist-aci"]
    line = AciTarget().delete(record, req.service_dir)
    assert line == "ACI service sklearn-mnist-aci was not found in workspace mlws (nothing to delete)"
    assert not fake_azure.requests_to("DELETE", r"/services/")


def test_delete_at_the_wire_204_is_nothing_to_delete(tmp_path, fake_azure):
    record, _, req = deployed(tmp_path, fake_azure)
    fake_azure.fail("DELETE", r"/services/sklearn-mnist-aci$", 204)  # gone between our look and the delete
    line = AciTarget().delete(record, req.service_dir)
    assert line == "ACI service sklearn-mnist-aci was not found in workspace mlws (nothing to delete)"


def test_logs_at_the_wire_is_the_services_get_logs_tail(tmp_path, fake_azure):
    fake_azure.outcomes.append(fake.Outcome(logs="".join(f"line {i}\n" for i in range(10))))
    record, _, req = deployed(tmp_path, fake_azure)
    assert AciTarget().logs(record, req.service_dir, tail=3) == "line 7\nline 8\nline 9"
    [call] = fake_azure.requests_to("GET", r"/services/sklearn-mnist-aci/logs$")
    assert call.query == {"tail": "3", "init": "False"}


# -- credentials: never a prompt ---------------------------------------------------------------------
def test_workspace_auth_never_prompts(tmp_path):
    """A service principal authenticates without a prompt; a logged-out az profile counts as no login."""
    from azureml.core.authentication import ServicePrincipalAuthentication

    from pipeline.targets.azureml_v1_api import non_interactive_auth

    sp = {
        "AZUREML_SERVICE_PRINCIPAL_ID": "id",
        "AZUREML_SERVICE_PRINCIPAL_PASSWORD": "pw",
        "AZUREML_SERVICE_PRINCIPAL_TENANT_ID": "tenant",
    }
    assert isinstance(non_interactive_auth(sp), ServicePrincipalAuthentication)
    assert non_interactive_auth({}) is None
    profile = tmp_path / ".azure" / "azureProfile.json"
    profile.parent.mkdir()
    profile.write_text('\ufeff{"installationId": "x", "subscriptions": []}', encoding="utf-8")
    assert "no Azure credentials" in common.credentials_problem({"HOME": str(tmp_path)}, home=tmp_path)
    profile.write_text('\ufeff{"subscriptions": [{"id": "s", "isDefault": true}]}', encoding="utf-8")
    assert common.credentials_problem({"HOME": str(tmp_path)}, home=tmp_path) is None


# -- live: a real workspace, only when one is configured (see README: Live tests) ---------------------
@pytest.mark.azure_live
def test_live_aci_deploy_probe_score_delete(tmp_path):
    config = os.environ.get("PIPELINE_AZURE_WORKSPACE_CONFIG")
    if not config:
        pytest.skip("set PIPELINE_AZURE_WORKSPACE_CONFIG to a workspace config.json to run the live Azure tests")
    import secrets

    name = f"mnist-live-{secrets.token_hex(3)}"  # never touch a service someone else runs
    spec = load(
        tmp_path,
        replace={
            "name: sklearn-mnist-aci ": f"name: {name} ",
            "auth: false": "auth: true",
            "  ready_timeout_s: 1200": f"  ready_timeout_s: 1200\n  azureml: {{workspace_config: {config}}}",
        },
    )
    target = AciTarget()
    req = request(spec, tmp_path, console=Console())
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


# -- the whole pipeline, at the wire ---------------------------------------------------------------
def test_run_json_at_the_wire_with_the_state_home_elsewhere_prints_one_document(
    tmp_path, fake_azure, project, run_cli, monkeypatch
):
    """`run specs/mnist-aci.yaml --json`, as a user would: config.json where they run it, state kept elsewhere."""
    home = tmp_path / "state"  # outside the working directory, where Model.register would refuse the model
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    shutil.copy(ROOT / "specs" / "mnist-aci.yaml", project / "specs" / "mnist-aci.yaml")
    shutil.copy(fake_azure.config_file, project / "config.json")  # Workspace.from_config()'s own search
    fake_azure.containers = tmp_path / "containers"  # ACI runs the uploaded score.py and model on loopback
    before = sorted(p.relative_to(project) for p in project.rglob("*"))

    result = run_cli("run", "specs/mnist-aci.yaml", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)  # exactly one JSON document: nothing the SDK printed is in it
    assert [(s["stage"], s["status"]) for s in document["stages"]] == [
        (stage, "ran") for stage in ("check", "fetch", "evaluate", "render", "deploy", "smoke", "report")
    ]
    assert document["ok"] is True and document["service"] == fake_azure.services["sklearn-mnist-aci"]["scoringUri"]
    body = created(fake_azure)
    assert body["containerResourceRequirements"] == {"cpu": 1, "memoryInGB": 1} and body["overwrite"] is True
    assert "Registering model sklearn_mnist" in (home / "sklearn-mnist-aci" / "service" / common.SDK_LOG).read_text()
    after = sorted(p.relative_to(project) for p in project.rglob("*") if not p.is_relative_to(project / "reports"))
    assert after == before  # nothing was copied into the user's tree to please the SDK


def test_fetch_registry_model_at_the_wire_with_the_service_principal(tmp_path, fake_azure):
    """model.source {registry: azureml}: Model(ws, name, version).download(), signed in without a prompt."""
    from pipeline import models

    register_in_the_fake(fake_azure)
    source = models.AzureMLRegistrySource("sklearn_mnist", 1, fake_azure.config_file)
    path = models.fetch_model(source, tmp_path / "store", "sklearn_mnist", 1, load(tmp_path).model.sha256)
    assert path == tmp_path / "store" / "sklearn_mnist" / "1" / "sklearn_mnist_model.pkl"
    assert path.read_bytes() == MODEL.read_bytes()
    [token] = fake_azure.requests_to("POST", r"/oauth2/v2.0/token$")
    assert "grant_type=client_credentials" in token.body.decode()  # the service principal, not a device login


def test_fetch_registry_model_without_credentials_never_prompts(tmp_path, monkeypatch):
    from pipeline import models

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (*common.SP_ENV, "MSI_ENDPOINT", "AZUREML_AUTH_CONFIG_DIR", "AZURE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    source = models.AzureMLRegistrySource("sklearn_mnist", 1, tmp_path / "config.json")
    with pytest.raises(ModelError) as caught:
        source.fetch(tmp_path)
    assert str(caught.value) == (
        f"azureml registry model sklearn_mnist:1 (workspace config {tmp_path}/config.json): "
        "cannot reach the Azure ML workspace: no Azure credentials: run `az login`, or set "
        "AZUREML_SERVICE_PRINCIPAL_ID, AZUREML_SERVICE_PRINCIPAL_PASSWORD, "
        "AZUREML_SERVICE_PRINCIPAL_TENANT_ID for a service principal"
    )
