"""Targets aci and aks (azureml-core): real SDK configuration objects built offline, fakes only at the network."""
from __future__ import annotations

import http.server
import io
import json
import os
import socket
import stat
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("azureml.core")
# azureml-core's vendored ruamel.yaml warns on every conda file it reads; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

from azureml._model_management._util import deploy_config_dict_to_obj  # noqa: E402
from azureml.core.webservice.aci import AciServiceDeploymentConfiguration  # noqa: E402
from azureml.core.webservice.aks import AksServiceDeploymentConfiguration  # noqa: E402

from pipeline import render, spec as specs  # noqa: E402
from pipeline.console import Console  # noqa: E402
from pipeline.errors import SpecError, TargetError, UsageError  # noqa: E402
from pipeline.targets import azureml_common as common
from pipeline.targets import keys  # noqa: E402
from pipeline.targets import azureml_v1  # noqa: E402
from pipeline.targets.azureml_v1 import AciTarget, AksTarget, AzureMLv1Api  # noqa: E402
from pipeline.targets.base import DeployRequest, ServiceRecord  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"


# -- the network is off limits (conftest's no_network): a hidden call fails the test --
@pytest.fixture(autouse=True)
def _offline(no_network):
    yield no_network


def test_the_network_guard_blocks_azure_and_allows_loopback(no_network):
    with pytest.raises(OSError, match="test tried to resolve 'management.azure.com'"):
        socket.create_connection(("management.azure.com", 443), timeout=1)
    assert no_network == ["resolve 'management.azure.com'"]
    no_network.clear()  # recorded, as a swallowed attempt would be: the fixture fails such a test at teardown
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=1).close()


# -- specs, rendered build folders, deploy requests ----------------------------------------------
def write_spec(folder: Path, base: str = "mnist-aci.yaml", replace: dict[str, str] | None = None,
               name: str = "spec.yaml") -> Path:
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
    return DeployRequest(spec=spec, build_dir=build(spec, tmp_path), model_path=MODEL, model_dir=MODEL.parent,
                         service_dir=tmp_path / "service", previous=previous, console=console or Console(quiet=True))


# -- fakes at the network boundary: they record every call -----------------------------------------
class FakeWorkspace:
    name = "mlws"
    resource_group = "ml-rg"
    subscription_id = "00000000-0000-0000-0000-000000000000"


class FakeModel:
    def __init__(self, name: str, version: int, tags=None) -> None:
        self.name, self.version, self.id, self.tags = name, version, f"{name}:{version}", dict(tags or {})


class FakeService:
    def __init__(self, name="sklearn-mnist-aci", state="Healthy", logs="", wait_error=None, prints="") -> None:
        self.name, self.state, self._logs, self._wait_error, self._prints = name, state, logs, wait_error, prints
        self.scoring_uri = f"http://{name}.westeurope.azurecontainer.io/score"
        self.swagger_uri = f"http://{name}.westeurope.azurecontainer.io/swagger.json"
        self.tags = {"data": "MNIST", "method": "sklearn"}
        self.models = [FakeModel("sklearn_mnist", 7)]
        self.auth_enabled = False
        self.container_resource_requirements = SimpleNamespace(cpu=1, memory_in_gb=1)
        self.calls: list[tuple[str, dict]] = []

    def wait_for_deployment(self, show_output=False, timeout_sec=None):
        self.calls.append(("wait_for_deployment", {"show_output": show_output, "timeout_sec": timeout_sec}))
        print(self._prints, end="")
        if self._wait_error:
            raise self._wait_error

    def get_logs(self, num_lines=5000, init=False):
        self.calls.append(("get_logs", {"num_lines": num_lines}))
        return self._logs

    def get_keys(self):
        self.calls.append(("get_keys", {}))
        return "primary-secret-key", "secondary-secret-key"

    def get_access_token(self):
        self.calls.append(("get_access_token", {}))
        return SimpleNamespace(access_token="aad-token")

    def delete(self):
        self.calls.append(("delete", {}))


class FakeApi(AzureMLv1Api):
    """Records each SDK call that would talk to Azure, and answers like the workspace would."""

    def __init__(self, service: FakeService | None = None, *, registry=None, missing: Exception | None = None) -> None:
        self.svc = service or FakeService()
        self.registry = dict(registry or {})     # (name, version) -> FakeModel
        self.missing = missing                   # what Webservice(ws, name) raises
        self.calls: list[tuple[str, tuple, dict]] = []

    def get_model(self, ws, name, version):
        self.calls.append(("get_model", (ws, name, version), {}))
        if (name, version) not in self.registry:
            raise RuntimeError(f"ModelNotFound: {name}:{version}")
        return self.registry[(name, version)]

    def register_model(self, ws, **kwargs):
        self.calls.append(("register_model", (ws,), kwargs))
        return FakeModel(kwargs["model_name"], 7, kwargs["tags"])

    def compute_target(self, ws, name):
        self.calls.append(("compute_target", (ws, name), {}))
        return SimpleNamespace(name=name)

    def deploy(self, ws, name, models, inference_config, deployment_config, deployment_target):
        self.calls.append(("deploy", (ws, name, models, inference_config, deployment_config, deployment_target), {}))
        return self.svc

    def service(self, ws, name):
        self.calls.append(("service", (ws, name), {}))
        if self.missing:
            raise self.missing
        return self.svc


def fake_target(cls=AciTarget, api: FakeApi | None = None):
    ws = FakeWorkspace()
    configs: list = []
    api = api or FakeApi()
    target = cls(workspace_factory=lambda config: configs.append(config) or ws, api=api)
    return target, api, ws, configs


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
    assert data == {"computeType": "ACI", "containerResourceRequirements": {"cpu": 1, "memoryInGB": 1.5},
                    "authEnabled": True, "tags": {"data": "MNIST", "method": "sklearn"},
                    "description": "Predict MNIST with sklearn"}
    ours = AciTarget().deployment_config(spec)
    theirs = deploy_config_dict_to_obj(data, data["tags"], None, data["description"])  # `az ml ... --deploy-config-file`
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


@pytest.mark.parametrize("settings, expected", [
    (AKS["autoscale"], {"autoscale_enabled": True, "autoscale_min_replicas": 1, "autoscale_max_replicas": 3,
                        "autoscale_target_utilization": 70, "num_replicas": None}),
    ("replicas: 2", {"autoscale_enabled": False, "num_replicas": 2, "autoscale_min_replicas": None}),
    ("token_auth: true", {"autoscale_enabled": None, "num_replicas": None, "token_auth_enabled": True}),
])
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
@pytest.mark.parametrize("base, replace, at, expected", [
    ("mnist-aci.yaml", {"cpu_cores: 1": "cpu_cores: 5"}, "cpu_cores:",
     "deploy.cpu_cores: Azure Container Instances allows at most 4 cores, got 5"),
    ("mnist-aci.yaml", {"memory_gb: 1": "memory_gb: 32"}, "memory_gb:",
     "deploy.memory_gb: Azure Container Instances allows at most 16 GB, got 32"),
    ("mnist-aci.yaml", {"  ready_timeout_s: 1200": "  ready_timeout_s: 1200\n  azureml: {replicas: 2}"}, "replicas",
     "deploy.azureml.replicas: not used by target 'aci' (aks only)"),
    ("mnist-aks.yaml", {"    compute_target: aks-mnist    # the attached cluster's name in the workspace\n": ""},
     "  azureml:", "deploy.azureml.compute_target: required for target 'aks': the name of the attached AKS cluster"),
    ("mnist-aks.yaml", {"compute_target: aks-mnist": "compute_target: 1-aks_"}, "compute_target:",
     "deploy.azureml.compute_target: '1-aks_' is not a name Azure ML accepts for a compute target: "
     "2-16 letters, digits and '-', starting with a letter and not ending with '-'"),
    ("mnist-aks.yaml", {"    autoscale:": "    replicas: 2\n    autoscale:"}, "autoscale:",
     "deploy.azureml.autoscale: cannot be combined with deploy.azureml.replicas (a fixed count disables autoscaling)"),
    ("mnist-aks.yaml", {"    autoscale:": "    token_auth: true\n    autoscale:"}, "token_auth:",
     "deploy.azureml.token_auth: cannot be combined with deploy.auth: AKS allows key auth or token auth, not both"),
    ("mnist-aci.yaml", {"name: sklearn-mnist-aci ": "name: Sklearn_MNIST "}, "name:",
     "name: 'Sklearn_MNIST' must be 3-32 characters of lowercase letters, digits and '-', "
     "starting with a letter and not ending with '-'"),
])
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


# -- deploy through fakes: the exact calls the tutorial makes ----------------------------------------
def test_deploy_fake_workspace_registers_the_model_and_deploys_like_the_tutorial(tmp_path):
    spec = load(tmp_path)
    target, api, ws, configs = fake_target()
    req = request(spec, tmp_path)
    record = target.deploy(req)

    assert configs == [None]  # Workspace.from_config()'s own search
    assert [c[0] for c in api.calls] == ["register_model", "deploy"]
    _, args, kwargs = api.calls[0]
    assert args == (ws,)
    digest = spec.model.sha256
    assert kwargs == {"model_path": str(MODEL), "model_name": "sklearn_mnist",
                      "tags": {"data": "MNIST", "method": "sklearn", "sha256": digest},
                      "description": "Predict MNIST with sklearn"}
    _, (dws, name, models, inference_config, deployment_config, deployment_target), _ = api.calls[1]
    assert (dws, name, [m.id for m in models], deployment_target) == (ws, "sklearn-mnist-aci", ["sklearn_mnist:7"], None)
    assert isinstance(deployment_config, AciServiceDeploymentConfiguration)
    assert (deployment_config.cpu_cores, deployment_config.memory_gb, deployment_config.auth_enabled) == (1, 1, False)
    assert inference_config.entry_script == str(req.build_dir / "score.py")
    assert api.svc.calls == [("wait_for_deployment", {"show_output": True, "timeout_sec": 1200})]
    assert record.to_dict() == {
        "target": "aci", "service": "sklearn-mnist-aci",
        "workspace": {"name": "mlws", "resource_group": "ml-rg", "subscription_id": ws.subscription_id},
        "workspace_config": None,
        "scoring_uri": "http://sklearn-mnist-aci.westeurope.azurecontainer.io/score",
        "swagger_uri": "http://sklearn-mnist-aci.westeurope.azurecontainer.io/swagger.json",
        "state": "Healthy", "model_id": "sklearn_mnist:7", "model_name": "sklearn_mnist", "model_version": 7,
        "model_sha256": digest, "auth": False, "token_auth": False,
        "tags": {"data": "MNIST", "method": "sklearn"}, "description": "Predict MNIST with sklearn",
        "cpu_cores": 1, "memory_gb": 1,
    }
    json.dumps(record.to_dict())  # the runner stores it as JSON
    assert not (req.service_dir / "keys.json").exists()


def test_deploy_fake_workspace_with_auth_stores_keys_0600_and_never_in_the_record(tmp_path):
    spec = load(tmp_path, replace={"auth: false": "auth: true"})
    target, api, _, _ = fake_target()
    req = request(spec, tmp_path)
    record = target.deploy(req)
    keys = req.service_dir / "keys.json"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert json.loads(keys.read_text()) == {"primary": "primary-secret-key", "secondary": "secondary-secret-key"}
    assert "secret" not in json.dumps(record.to_dict())
    assert record.auth is True
    assert api.svc.calls[-1] == ("get_keys", {})


def test_deploy_failure_fake_workspace_shows_the_tail_of_the_service_log(tmp_path):
    spec = load(tmp_path)
    logs = "".join(f"log line {i}\n" for i in range(200)) + "ModuleNotFoundError: No module named 'sklearn'\n"
    error = RuntimeError("Service deployment polling reached non-successful terminal state, current service state: "
                         "Unhealthy\nOperation ID: 1234\nError:\n{\"code\": \"AciDeploymentFailed\"}")
    target, api, _, _ = fake_target(api=FakeApi(FakeService(state="Unhealthy", logs=logs, wait_error=error)))
    with pytest.raises(TargetError) as caught:
        target.deploy(request(spec, tmp_path))
    message = str(caught.value)
    assert "ACI service sklearn-mnist-aci did not become healthy within 1200 s" in message
    assert "current service state: Unhealthy" in message and "AciDeploymentFailed" in message
    assert "ModuleNotFoundError: No module named 'sklearn'" in message and "log line 199" in message
    assert "log line 150" not in message  # only the tail
    assert ("get_logs", {"num_lines": common.LOG_LINES}) in api.svc.calls


def test_deploy_fake_workspace_unhealthy_without_an_exception_still_fails(tmp_path):
    target, api, _, _ = fake_target(api=FakeApi(FakeService(state="Unhealthy", logs="boom\n")))
    with pytest.raises(TargetError, match=r"the service is Unhealthy(.|\n)*boom"):
        target.deploy(request(load(tmp_path), tmp_path))


def test_deploy_fake_workspace_sdk_output_becomes_progress(tmp_path):
    err = io.StringIO()
    console = Console(out=io.StringIO(), err=err)
    console.interactive = True
    target, _, _, _ = fake_target(api=FakeApi(FakeService(prints="Tips: ...\nRunning\n....\nSucceeded\n")))
    target.deploy(request(load(tmp_path), tmp_path, console=console))
    assert "sklearn-mnist-aci: Succeeded" in err.getvalue()
    assert console.out.getvalue() == ""  # the SDK's prints never reach stdout


def test_deploy_fake_workspace_registry_model_is_used_not_registered(tmp_path):
    spec = load(tmp_path, replace={"  source: ../examples/mnist/sklearn_mnist_model.pkl".replace("../examples/", f"{ROOT}/examples/"):
                                   "  source: {registry: azureml, file: sklearn_mnist_model.pkl}"})
    registry = {("sklearn_mnist", 1): FakeModel("sklearn_mnist", 1)}
    target, api, ws, _ = fake_target(api=FakeApi(registry=registry))
    record = target.deploy(request(spec, tmp_path))
    assert [c[0] for c in api.calls] == ["get_model", "deploy"]
    assert api.calls[0][1] == (ws, "sklearn_mnist", 1)  # Model(ws, name='sklearn_mnist', version=1)
    assert record.extra["model_id"] == "sklearn_mnist:1"


def test_redeploy_fake_workspace_reuses_the_registered_model(tmp_path):
    spec = load(tmp_path)
    digest = spec.model.sha256
    registry = {("sklearn_mnist", 7): FakeModel("sklearn_mnist", 7, {"sha256": digest})}
    target, api, ws, _ = fake_target(api=FakeApi(registry=registry))
    previous = rec({"target": "aci", "model_sha256": digest, "model_version": 7,
                    "workspace": azureml_v1._workspace_info(ws)})
    target.deploy(request(spec, tmp_path, previous=previous))
    assert [c[0] for c in api.calls] == ["get_model", "deploy"]


def test_aks_deploy_fake_workspace_targets_the_attached_cluster(tmp_path):
    spec = load(tmp_path, "mnist-aks.yaml")
    target, api, ws, _ = fake_target(AksTarget, FakeApi(FakeService(name="sklearn-mnist-aks")))
    record = target.deploy(request(spec, tmp_path))
    assert [c[0] for c in api.calls] == ["register_model", "compute_target", "deploy"]
    assert api.calls[1][1] == (ws, "aks-mnist")  # ComputeTarget(ws, 'aks-mnist')
    deployment_config, deployment_target = api.calls[2][1][4:]
    assert isinstance(deployment_config, AksServiceDeploymentConfiguration)
    assert deployment_target.name == "aks-mnist"
    assert record.extra["compute_target"] == "aks-mnist" and record.auth is True
    assert stat.S_IMODE((tmp_path / "service" / "keys.json").stat().st_mode) == 0o600


def test_real_api_shim_makes_the_tutorials_sdk_calls(monkeypatch):
    """AzureMLv1Api is the only code calling Model.deploy / Model.register: check it passes overwrite=True."""
    from azureml.core.model import Model

    seen = []
    monkeypatch.setattr(Model, "deploy", staticmethod(lambda *a, **k: seen.append(("deploy", a, k)) or "svc"))
    monkeypatch.setattr(Model, "register", staticmethod(lambda *a, **k: seen.append(("register", a, k)) or "model"))
    api = AzureMLv1Api()
    assert api.deploy("ws", "svc-name", ["m"], "ic", "dc", None) == "svc"
    assert api.register_model("ws", model_path="/m.pkl", model_name="sklearn_mnist", tags={"a": "b"}, description="d") == "model"
    assert seen == [
        ("deploy", ("ws", "svc-name", ["m"], "ic", "dc"), {"deployment_target": None, "overwrite": True}),
        ("register", ("ws",), {"model_path": "/m.pkl", "model_name": "sklearn_mnist", "tags": {"a": "b"}, "description": "d"}),
    ]


# -- probe: live, drifted, missing, unreachable ---------------------------------------------------
def rec(data: dict) -> ServiceRecord:
    return ServiceRecord.from_dict(data)


RECORD = {"target": "aci", "service": "sklearn-mnist-aci", "workspace_config": None, "model_id": "sklearn_mnist:7",
          "scoring_uri": "http://sklearn-mnist-aci.westeurope.azurecontainer.io/score", "auth": False,
          "tags": {"data": "MNIST", "method": "sklearn"}, "cpu_cores": 1, "memory_gb": 1}


def test_probe_fake_workspace_healthy_and_matching():
    target, api, ws, _ = fake_target()
    live = target.probe(rec(RECORD))
    assert (live.reachable, live.healthy, live.drift) == (True, True, ())
    assert live.detail == f"ACI service sklearn-mnist-aci is Healthy at {RECORD['scoring_uri']}"
    assert api.calls == [("service", (ws, "sklearn-mnist-aci"), {})]


def test_probe_fake_workspace_reports_drift():
    service = FakeService()
    service.tags = {"data": "MNIST"}
    service.models = [FakeModel("sklearn_mnist", 8)]
    service.container_resource_requirements = SimpleNamespace(cpu=1, memory_in_gb=2)
    live = fake_target(api=FakeApi(service))[0].probe(rec(RECORD))
    assert live.reachable and live.healthy
    assert live.drift == ("tags: live {'data': 'MNIST'}, recorded {'data': 'MNIST', 'method': 'sklearn'}",
                          "models: live ['sklearn_mnist:8'], recorded ['sklearn_mnist:7']",
                          "memory_gb: live 2, recorded 1")


def test_probe_fake_workspace_missing_service():
    missing = RuntimeError("WebserviceNotFound: Webservice with name sklearn-mnist-aci not found in provided workspace")
    live = fake_target(api=FakeApi(missing=missing))[0].probe(rec(RECORD))
    assert (live.reachable, live.healthy) == (True, False)
    assert live.detail == "ACI service sklearn-mnist-aci not found in workspace mlws"
    assert live.drift == ("service: recorded, but missing from the workspace",)


def test_probe_fake_workspace_before_the_first_deploy(tmp_path):
    spec = load(tmp_path)
    missing = RuntimeError("WebserviceNotFound: Webservice with name sklearn-mnist-aci not found in provided workspace")
    live = fake_target(api=FakeApi(missing=missing))[0].probe(None, spec)
    assert (live.reachable, live.healthy, live.drift) == (True, False, ())
    assert live.detail == "workspace mlws is reachable; ACI service sklearn-mnist-aci does not exist yet"
    live = fake_target()[0].probe(None, spec)  # someone else's service with the same name
    assert live.detail.endswith("it is not recorded here, and deploy will overwrite it in workspace mlws")


def test_probe_fake_workspace_unhealthy():
    live = fake_target(api=FakeApi(FakeService(state="Unhealthy")))[0].probe(rec(RECORD))
    assert (live.reachable, live.healthy, live.detail) == (True, False, "ACI service sklearn-mnist-aci is Unhealthy")


def test_probe_without_credentials_is_unreachable_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (*common.SP_ENV, "MSI_ENDPOINT", "AZUREML_AUTH_CONFIG_DIR", "AZURE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    live = AciTarget().probe(None, load(tmp_path))
    assert (live.reachable, live.healthy, live.drift) == (False, False, ())
    assert live.detail == ("cannot reach the Azure ML workspace: no Azure credentials: run `az login`, or set "
                           "AZUREML_SERVICE_PRINCIPAL_ID, AZUREML_SERVICE_PRINCIPAL_PASSWORD, "
                           "AZUREML_SERVICE_PRINCIPAL_TENANT_ID for a service principal")


def test_probe_without_config_json_is_unreachable_with_a_reason(tmp_path, monkeypatch):
    (tmp_path / "home" / ".azure").mkdir(parents=True)
    (tmp_path / "home" / ".azure" / "azureProfile.json").write_text('{"subscriptions": [{"id": "s"}]}')  # "logged in"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AZURE_CONFIG_DIR", raising=False)
    monkeypatch.chdir(tmp_path / "home")  # Workspace.from_config() searches here and upwards
    if any((parent / "config.json").exists() for parent in (tmp_path / "home").parents):
        pytest.skip("a config.json above the temporary folder would be found")
    live = AciTarget().probe(None, load(tmp_path))
    assert (live.reachable, live.healthy) == (False, False)
    assert live.detail == ("cannot reach the Azure ML workspace: no workspace config.json found in the working folder "
                           "or its parents (set deploy.azureml.workspace_config)")


def test_probe_fake_workspace_network_failure_is_unreachable(tmp_path):
    def offline(config):
        raise OSError("HTTPSConnectionPool(host='management.azure.com', port=443): Max retries exceeded")

    live = AciTarget(workspace_factory=offline, api=FakeApi()).probe(rec(RECORD))
    assert (live.reachable, live.detail) == (False, "cannot reach the Azure ML workspace: no network connection to Azure "
                                                    "(management.azure.com)")


def test_probe_workspace_config_from_the_spec_fake_workspace(tmp_path):
    (tmp_path / "specs" / "ws").mkdir(parents=True)
    (tmp_path / "specs" / "ws" / "config.json").write_text("{}")
    spec = load(tmp_path, replace={"  ready_timeout_s: 1200": "  ready_timeout_s: 1200\n  azureml: {workspace_config: ws/config.json}"})
    target, _, _, configs = fake_target()
    target.probe(rec({"target": "aci", "service": "sklearn-mnist-aci"}), spec)
    assert configs == [tmp_path / "specs" / "ws" / "config.json"]


def test_missing_sdk_is_a_usage_error_and_an_unreachable_probe(tmp_path, monkeypatch):
    spec = load(tmp_path)
    monkeypatch.setitem(sys.modules, "azureml.core", None)  # as if azureml-core were not installed
    with pytest.raises(UsageError) as caught:
        AciTarget().deployment_config(spec)
    assert str(caught.value) == "target 'aci' needs the azure extra: pip install '.[azure]'"
    live = AciTarget().probe(rec(RECORD), spec)
    assert (live.reachable, live.detail) == (False, "target 'aci' needs the azure extra: pip install '.[azure]'")


# -- invoke, delete, logs --------------------------------------------------------------------------
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
    reply = target.invoke(rec({**RECORD, "scoring_uri": uri, "auth": True}), b'{"data": [[0]]}', timeout=5, service_dir=tmp_path)
    assert (reply.status, reply.body) == (200, b"[7, 2]")
    assert reply.seconds > 0
    assert seen[0]["headers"]["Authorization"] == "Bearer primary-secret-key"
    assert seen[0]["headers"]["Content-Type"] == "application/json" and seen[0]["body"] == b'{"data": [[0]]}'
    bad = target.invoke(rec({**RECORD, "scoring_uri": uri}), b'{"bad": 1}', timeout=5, service_dir=tmp_path)
    assert (bad.status, bad.body) == (400, b'{"error": "bad"}')
    assert "Authorization" not in seen[1]["headers"]


def test_invoke_fake_workspace_token_auth_fetches_a_fresh_token(tmp_path, scoring_server):
    uri, seen = scoring_server
    target, api, _, _ = fake_target(AksTarget)
    target.invoke(rec({**RECORD, "scoring_uri": uri, "token_auth": True}), b"{}", timeout=5, service_dir=tmp_path)
    assert seen[0]["headers"]["Authorization"] == "Bearer aad-token"
    assert api.svc.calls == [("get_access_token", {})]


def test_invoke_without_keys_file_says_deploy_again(tmp_path):
    with pytest.raises(TargetError, match="deploy again"):
        AciTarget().invoke(rec({**RECORD, "auth": True}), b"{}", timeout=1, service_dir=tmp_path)


def test_delete_fake_workspace_deletes_the_service_and_its_keys(tmp_path):
    keys.write(tmp_path, "k1", "k2")
    target, api, ws, _ = fake_target()
    line = target.delete(rec(RECORD), tmp_path)
    assert line == "deleted ACI service sklearn-mnist-aci from workspace mlws (registered model sklearn_mnist:7 kept)"
    assert api.calls == [("service", (ws, "sklearn-mnist-aci"), {})] and api.svc.calls == [("delete", {})]
    assert not (tmp_path / "keys.json").exists()


def test_delete_fake_workspace_already_gone(tmp_path):
    missing = RuntimeError("WebserviceNotFound: Webservice with name sklearn-mnist-aci not found in provided workspace")
    line = fake_target(api=FakeApi(missing=missing))[0].delete(rec(RECORD), tmp_path)
    assert line == "ACI service sklearn-mnist-aci was not found in workspace mlws (already deleted)"


def test_logs_fake_workspace_is_the_services_get_logs_tail(tmp_path):
    service = FakeService(logs="".join(f"line {i}\n" for i in range(10)))
    target, api, _, _ = fake_target(api=FakeApi(service))
    assert target.logs(rec(RECORD), tmp_path, tail=3) == "line 7\nline 8\nline 9"
    assert service.calls == [("get_logs", {"num_lines": 3})]


# -- live: a real workspace, only when one is configured (see README: Deploying to Azure) -------------
@pytest.mark.azure_live
def test_live_aci_deploy_probe_score_delete(tmp_path):
    config = os.environ.get("PIPELINE_AZURE_WORKSPACE_CONFIG")
    if not config:
        pytest.skip("set PIPELINE_AZURE_WORKSPACE_CONFIG to a workspace config.json to run the live Azure tests")
    import secrets

    name = f"mnist-live-{secrets.token_hex(3)}"  # never touch a service someone else runs
    spec = load(tmp_path, replace={"name: sklearn-mnist-aci ": f"name: {name} ", "auth: false": "auth: true",
                                   "  ready_timeout_s: 1200": f"  ready_timeout_s: 1200\n  azureml: {{workspace_config: {config}}}"})
    target = AciTarget()
    req = request(spec, tmp_path, console=Console())
    record = target.deploy(req)
    try:
        live = target.probe(record, spec)
        assert (live.reachable, live.healthy, live.drift) == (True, True, ()), live
        reply = target.invoke(record, json.dumps({"data": [[0.0] * 784]}).encode(), timeout=60, service_dir=req.service_dir)
        assert reply.status == 200 and len(json.loads(reply.body)) == 1
        assert target.logs(record, req.service_dir, tail=20).strip()
    finally:
        print(target.delete(record, req.service_dir))


def test_workspace_auth_never_prompts_fake_workspace_boundary(tmp_path):
    """A service principal authenticates without a prompt; a logged-out az profile counts as no login."""
    from azureml.core.authentication import ServicePrincipalAuthentication

    from pipeline.targets import azureml_common as common
    from pipeline.targets.azureml_v1_api import non_interactive_auth

    sp = {"AZUREML_SERVICE_PRINCIPAL_ID": "id", "AZUREML_SERVICE_PRINCIPAL_PASSWORD": "pw",
          "AZUREML_SERVICE_PRINCIPAL_TENANT_ID": "tenant"}
    assert isinstance(non_interactive_auth(sp), ServicePrincipalAuthentication)
    assert non_interactive_auth({}) is None
    profile = tmp_path / ".azure" / "azureProfile.json"
    profile.parent.mkdir()
    profile.write_text('\ufeff{"installationId": "x", "subscriptions": []}', encoding="utf-8")
    assert "no Azure credentials" in common.credentials_problem({"HOME": str(tmp_path)}, home=tmp_path)
    profile.write_text('\ufeff{"subscriptions": [{"id": "s", "isDefault": true}]}', encoding="utf-8")
    assert common.credentials_problem({"HOME": str(tmp_path)}, home=tmp_path) is None
