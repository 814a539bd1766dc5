"""Target `azureml-online`: an Azure ML managed online endpoint (SDK v2, azure-ai-ml), v1's living successor."""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pipeline import http
from pipeline.errors import RenderError, TargetError, UsageError
from pipeline.render import check_yaml, render_template
from pipeline.spec import RegistrySource, Spec
from pipeline.targets import azureml_common as common
from pipeline.targets import keys as keyfile
from pipeline.targets.base import (
    AddProblem,
    Auth,
    BaseTarget,
    Capabilities,
    DeployRequest,
    Live,
    Reply,
    Rollout,
    ServiceRecord,
)

ClientFactory = Callable[[Path | None], Any]
DEPLOYMENT = "blue"  # one deployment per endpoint, taking all traffic
FILES = ("endpoint.yml", "deployment.yml")


def default_client(config: Path | None) -> Any:
    """MLClient(credential, subscription_id, resource_group, workspace_name) from the workspace config.json."""
    _sdk()
    common.require("azure.identity", "azureml-online", common.EXTRA_V2)
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    # from_config reads subscription_id, resource_group and workspace_name; without a path it searches
    # the working folder and its parents like azureml-core. The credential asks Azure only when first used.
    return MLClient.from_config(credential=DefaultAzureCredential(), path=str(config) if config else None)


def _sdk() -> Any:
    common.require("azure.ai.ml", "azureml-online", common.EXTRA_V2)
    import azure.ai.ml

    # The SDK logs notes users can't act on ("This is an experimental class", "Found the config file in"),
    # and azure-identity logs every credential it tried: the one-line reason in our error says enough.
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    logging.getLogger("azure.ai.ml._ml_client").setLevel(logging.WARNING)
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    return azure.ai.ml


def instance_type(spec: Spec) -> tuple[str, str]:
    """The VM size and why: deploy.azureml.instance_type, else the table's cheapest size that fits."""
    given = spec.deploy.settings().get("instance_type")
    if given:
        return given, "instance_type: from deploy.azureml.instance_type"
    chosen = common.choose_instance_type(spec.deploy.cpu_cores, spec.deploy.memory_gb)
    if chosen is None:  # pipeline.rules rejects such a spec; this is the last line of defence
        raise RenderError(f"no VM size in the table has {spec.deploy.cpu_cores} cores and {spec.deploy.memory_gb} GB; "
                          "set deploy.azureml.instance_type")
    cores, memory = next((c, m) for n, c, m in common.INSTANCE_TYPES if n == chosen)
    return chosen, (f"instance_type: the smallest size with >= {spec.deploy.cpu_cores} cores and >= "
                    f"{spec.deploy.memory_gb} GB ({cores} cores, {memory} GB); set deploy.azureml.instance_type to override")


def load(folder: Path, model_path: Path | None = None) -> tuple[Any, Any]:
    """endpoint.yml and deployment.yml as the SDK's entities, through its own loaders (offline)."""
    ml = _sdk()
    entities = []
    for name, loader in (("endpoint.yml", ml.load_online_endpoint), ("deployment.yml", ml.load_online_deployment)):
        override = [{"model.path": str(model_path)}] if name == "deployment.yml" and model_path else None
        try:
            entities.append(loader(source=str(folder / name), params_override=override))
        except Exception as exc:  # noqa: BLE001  marshmallow ValidationError, the SDK's ValidationException, OSError
            raise RenderError(f"rendered {name} is not accepted by azure-ai-ml: {validation_message(exc)}") from None
    return entities[0], entities[1]


def validation_message(exc: BaseException) -> str:
    """The SDK's pretty-printed error JSON as `field.path: message` pairs, without its advertising."""
    text = str(getattr(exc, "message", None) or exc).split("Visit this link")[0]
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    problems: list[str] = []
    if start >= 0:
        try:
            _flatten(json.loads(text[start:].strip()), (), problems)
        except ValueError:
            problems = []
    if not problems:
        problems = [" ".join(text.split())[:300] or type(exc).__name__]
    return "; ".join(dict.fromkeys(problems))


def _flatten(node: Any, path: tuple[str, ...], out: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, path if key == "_schema" else path + (str(key),), out)
    elif isinstance(node, list):
        for item in node:
            _flatten(item, path, out)
    else:
        message = " ".join(str(node).split())
        out.append(f"{'.'.join(path)}: {message}" if path else message)


class OnlineTarget(BaseTarget):
    """A managed online endpoint with one deployment (blue) taking all traffic."""

    name: ClassVar[str] = "azureml-online"
    summary: ClassVar[str] = "an Azure ML managed online endpoint, SDK v2"
    settings_key: ClassVar[str] = "azureml"
    settings_schema: ClassVar[Mapping[str, Any]] = common.SETTINGS_SCHEMA
    extra: ClassVar[str | None] = common.EXTRA_V2
    packages: ClassVar[Mapping[str, str]] = {"azure-ai-ml": "azure.ai.ml", "azure-identity": "azure.identity"}
    capabilities: ClassVar[Capabilities] = Capabilities(probe_unrecorded=True, rollout=Rollout.IN_PLACE,
                                                        auth=frozenset({Auth.KEY, Auth.TOKEN}))
    registry_sdk: ClassVar[str] = "v2"  # azure-ai-ml fetches registry models too: no azureml-core needed
    kind = "managed online endpoint"

    def __init__(self, client_factory: ClientFactory | None = None) -> None:
        self.client_factory = client_factory or default_client

    # -- offline ---------------------------------------------------------------------------------
    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        common.check_workspace_config(data, add, folder)
        deploy, azure = data["deploy"], data["deploy"]["azureml"]
        for key in ("compute_target", "autoscale"):
            if key in azure:
                add(("deploy", "azureml", key), "not used by target 'azureml-online'")
        if deploy["auth"] and azure.get("token_auth"):
            add(("deploy", "azureml", "token_auth"),
                "cannot be combined with deploy.auth: an endpoint uses key or token auth, not both")
        if deploy["request_timeout_ms"] > 180000:
            add(("deploy", "request_timeout_ms"),
                f"managed online endpoints allow at most 180000 ms, got {deploy['request_timeout_ms']}")
        if not deploy["auth"] and not azure.get("token_auth"):
            add(("deploy", "auth"), "managed online endpoints always authenticate: set deploy.auth: true (key auth) "
                "or deploy.azureml.token_auth: true (Azure ML tokens)")
        if "instance_type" not in azure and common.choose_instance_type(deploy["cpu_cores"], deploy["memory_gb"]) is None:
            add(("deploy", "cpu_cores"), f"no VM size in the instance_type table has {deploy['cpu_cores']} cores and "
                f"{deploy['memory_gb']} GB; set deploy.azureml.instance_type")
        common.check_arm_tags(data, add)  # an endpoint is an Azure Resource Manager resource

    def extra_pip_packages(self, spec: Spec) -> list[str]:
        return ["azureml-inference-server-http"]  # the v2 images' scoring server

    def assets(self, spec: Spec) -> dict[str, Path]:
        """Files the rendered folder needs beside it: deployment.yml names the local model file."""
        if isinstance(spec.model.source, RegistrySource):
            return {}
        return {spec.model.file_name: spec.model.source}

    def template_values(self, spec: Spec) -> dict[str, Any]:
        azure = spec.deploy.settings()
        size, why = instance_type(spec)
        registry = isinstance(spec.model.source, RegistrySource)
        return {
            "deployment": DEPLOYMENT,
            "auth_mode": "aml_token" if azure.get("token_auth") else "key",
            "registry_model": f"azureml:{spec.model.name}:{spec.model.version}" if registry else None,
            "base_image": azure["base_image"],
            "instance_type": size,
            "instance_reason": why,
            "instance_count": azure.get("replicas") or 1,
        }

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        """endpoint.yml and deployment.yml, accepted by azure-ai-ml's own loaders before they are returned."""
        values = {**values, "azureml": self.template_values(spec)}
        files = {name: render_template(env, f"azureml/{name}.j2", values) for name in FILES}
        for name, text in files.items():
            check_yaml(text, name)
        with tempfile.TemporaryDirectory(prefix="pipeline-online-") as tmp:
            # The deployment loader reads the conda file it names, so validate beside a rendered myenv.yml.
            folder = Path(tmp)
            (folder / "myenv.yml").write_text(render_template(env, "myenv.yml.j2", values), encoding="utf-8")
            if values["azureml"]["registry_model"] is None:  # an anonymous model is hashed on load: give it bytes
                (folder / spec.model.file_name).write_bytes(b"")
            for name, text in files.items():
                (folder / name).write_text(text, encoding="utf-8")
            load(folder)
        return files

    # -- deploy ----------------------------------------------------------------------------------
    def deploy(self, request: DeployRequest) -> ServiceRecord:
        log = request.service_dir / common.SDK_LOG
        try:
            with common.sdk_output(log, request.console, request.spec.name):
                return self._deploy(request)
        except TargetError as exc:
            raise TargetError(f"{exc}\n(everything the SDK printed is in {log})") from None
        finally:
            request.console.clear_progress()

    def _deploy(self, request: DeployRequest) -> ServiceRecord:
        spec, console = request.spec, request.console
        registry = isinstance(spec.model.source, RegistrySource)
        try:
            endpoint, deployment = load(request.build_dir, None if registry else request.model_path)
        except RenderError as exc:
            raise TargetError(f"{request.build_dir}: {exc}") from None
        config = common.workspace_config(spec.deploy.settings(), spec.folder, spec.model.source)
        client = self._client(config)
        name = endpoint.name
        try:
            # The endpoint is PUT whole: keep the live traffic routing, or an update would route 0% to blue.
            endpoint.traffic = dict(client.online_endpoints.get(name=name).traffic or {})
        except Exception as exc:  # noqa: BLE001
            if not common.is_not_found(exc):
                raise TargetError(f"{common.UNREACHABLE}: {common.reason(exc)}") from None
        console.progress(f"{name}: creating or updating the endpoint")
        try:
            client.online_endpoints.begin_create_or_update(endpoint).result()
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"creating endpoint {name}: {common.excerpt(exc)}") from None
        console.progress(f"{name}: deploying {DEPLOYMENT} on {deployment.instance_type} (this takes several minutes)")
        try:
            poller = client.online_deployments.begin_create_or_update(deployment)
            poller.result(timeout=spec.deploy.ready_timeout_s)
            failure = None if poller.done() else f"still not ready after {spec.deploy.ready_timeout_s} s"
        except Exception as exc:  # noqa: BLE001  HttpResponseError, the SDK's deployment errors
            failure = common.excerpt(exc)
        if failure:
            logs = common.logs_section(
                lambda n: client.online_deployments.get_logs(name=DEPLOYMENT, endpoint_name=name, lines=n), "deployment")
            raise TargetError(f"deployment {DEPLOYMENT} of endpoint {name} failed: {failure}{logs}")
        endpoint.traffic = {DEPLOYMENT: 100}
        console.progress(f"{name}: routing all traffic to {DEPLOYMENT}")
        try:
            client.online_endpoints.begin_create_or_update(endpoint).result()
            live = client.online_endpoints.get(name=name)
            live_deployment = client.online_deployments.get(name=DEPLOYMENT, endpoint_name=name)
            if endpoint.auth_mode == "key":
                keys = client.online_endpoints.get_keys(name=name)
                keyfile.write(request.service_dir, keys.primary_key, keys.secondary_key)
            else:
                keyfile.remove(request.service_dir)  # tokens are fetched fresh for each request
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"endpoint {name}: {common.excerpt(exc)}") from None
        from pipeline.files import sha256_path

        return ServiceRecord(
            target=self.name,
            scoring_uri=live.scoring_uri,
            auth=endpoint.auth_mode == "key",
            swagger_uri=live.openapi_uri,
            model_sha256=spec.model.sha256 or (None if registry else sha256_path(request.model_path)),
            extra={
                "endpoint": name,
                "deployment": DEPLOYMENT,
                "workspace": {"name": client.workspace_name, "resource_group": client.resource_group_name,
                              "subscription_id": client.subscription_id},
                "workspace_config": str(config) if config else None,
                "state": _value(live_deployment.provisioning_state),
                "auth_mode": endpoint.auth_mode,
                "model_id": _model_id(live_deployment.model),
                "instance_type": deployment.instance_type,
                "instance_count": deployment.instance_count,
                "traffic": {DEPLOYMENT: 100},
                "tags": dict(spec.tags),
                "description": spec.description,
            },
        )

    # -- the live endpoint -----------------------------------------------------------------------
    def probe(self, record: ServiceRecord | None, spec: Spec | None = None) -> Live:
        info = record.to_dict() if record else {}
        name = info.get("endpoint") or (spec.name if spec else "")
        recorded = bool(info.get("endpoint"))  # plan may ask before the first deploy, with no record
        try:
            _sdk()
            client = self._client(common.recorded_config(info, spec))
            endpoint = client.online_endpoints.get(name=name)
        except (TargetError, UsageError) as exc:
            return Live(False, False, str(exc))
        except Exception as exc:  # noqa: BLE001  credentials are only tried here, at the first request
            if not common.is_not_found(exc):
                return Live(False, False, f"{common.UNREACHABLE}: {common.reason(exc)}")
            if not recorded:
                return Live(True, False, f"workspace is reachable; endpoint {name} does not exist yet")
            return Live(True, False, f"endpoint {name} not found in the workspace",
                        ("endpoint: recorded, but missing from the workspace",))
        try:
            deployment = client.online_deployments.get(name=info.get("deployment", DEPLOYMENT), endpoint_name=name)
        except Exception as exc:  # noqa: BLE001
            if common.is_not_found(exc):
                return Live(True, False, f"endpoint {name} has no deployment {DEPLOYMENT}",
                            (f"deployment: {DEPLOYMENT} recorded, but missing from the endpoint",))
            return Live(False, False, f"cannot read deployment {DEPLOYMENT} of {name}: {common.reason(exc)}")
        drift = _drift(endpoint, deployment, info)
        states = (_value(endpoint.provisioning_state), _value(deployment.provisioning_state))
        healthy = states == ("Succeeded", "Succeeded") and (endpoint.traffic or {}).get(DEPLOYMENT) == 100
        detail = (f"endpoint {name} is {states[0]}, deployment {DEPLOYMENT} is {states[1]}"
                  + (f" at {endpoint.scoring_uri}" if healthy else ""))
        if not recorded:
            detail += "; it is not recorded here, and deploy will update it"
        return Live(True, healthy, detail, tuple(drift))

    def invoke(self, record: ServiceRecord, body: bytes, *, timeout: float, service_dir: Path) -> Reply:
        """An HTTP POST with the endpoint key (or a fresh aml_token), pinned to the recorded deployment."""
        info = record.extra
        headers = {"azureml-model-deployment": info.get("deployment", DEPLOYMENT)}
        if info.get("auth_mode") == "aml_token":
            client = self._client(common.recorded_config(info))
            try:
                token = client.online_endpoints.get_keys(name=info["endpoint"]).access_token
            except Exception as exc:  # noqa: BLE001
                raise TargetError(f"cannot get a token for endpoint {info['endpoint']}: "
                                  f"{common.reason(exc)}") from None
            headers["Authorization"] = "Bearer " + token
        else:
            headers["Authorization"] = "Bearer " + keyfile.read_primary(service_dir)
        assert record.scoring_uri is not None
        return http.post(record.scoring_uri, body, headers, timeout)

    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        info = record.extra
        name = info.get("endpoint", "")
        client = self._client(common.recorded_config(info))
        gone = f"endpoint {name} was not found in the workspace (nothing to delete)"
        try:
            with common.sdk_output(service_dir / common.SDK_LOG, None, f"delete {name}"):  # the poller's dots
                client.online_endpoints.get(name=name)
                poller = client.online_endpoints.begin_delete(name=name)
                poller.result()
        except Exception as exc:  # noqa: BLE001
            if not common.is_not_found(exc):
                raise TargetError(f"deleting endpoint {name}: {common.reason(exc)}") from None
            keyfile.remove(service_dir)
            return gone
        keyfile.remove(service_dir)
        if _initial_status(poller) == 204:  # ARM's answer for a name with nothing behind it: gone since the get
            return gone
        return f"deleted endpoint {name} and its deployment {info.get('deployment', DEPLOYMENT)}"

    def logs(self, record: ServiceRecord, service_dir: Path, *, tail: int) -> str:
        info = record.extra
        name = info.get("endpoint", "")
        client = self._client(common.recorded_config(info))
        try:
            with common.sdk_output(service_dir / common.SDK_LOG, None, f"logs {name}"):
                text = client.online_deployments.get_logs(name=info.get("deployment", DEPLOYMENT),
                                                          endpoint_name=name, lines=tail)
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"cannot read the logs of {name}: {common.reason(exc)}") from None
        return common.log_tail(text, tail)

    # -- helpers ---------------------------------------------------------------------------------
    def _client(self, config: Path | None) -> Any:
        try:
            return self.client_factory(config)
        except (TargetError, UsageError):
            raise
        except Exception as exc:  # noqa: BLE001  missing config.json, bad config
            raise TargetError(f"{common.UNREACHABLE}: {common.reason(exc)}") from None


def _value(state: Any) -> Any:
    """azure-ai-ml's states are str enums: 'Succeeded', not 'DeploymentProvisioningState.SUCCEEDED'."""
    return getattr(state, "value", state)


def _initial_status(poller: Any) -> int | None:
    """The HTTP status of the request that started a long-running operation (204: there was nothing to do)."""
    method = poller.polling_method() if hasattr(poller, "polling_method") else None
    response = getattr(method, "_initial_response", None)  # azure-core keeps it; no public accessor
    return getattr(getattr(response, "http_response", None), "status_code", None)


def _model_id(model: Any) -> str | None:
    if model is None or isinstance(model, str):
        return model
    return getattr(model, "id", None) or f"{getattr(model, 'name', '?')}:{getattr(model, 'version', '?')}"


def _drift(endpoint: Any, deployment: Any, record: Mapping[str, Any]) -> list[str]:
    out = common.tags_drift(endpoint.tags, record)
    traffic = {k: int(v) for k, v in (endpoint.traffic or {}).items() if int(v)}
    if "traffic" in record and traffic != dict(record["traffic"]):
        out.append(f"traffic: live {traffic}, recorded {dict(record['traffic'])}")
    for attr in ("instance_type", "instance_count"):
        if attr in record and getattr(deployment, attr, None) != record[attr]:
            out.append(f"{attr}: live {getattr(deployment, attr, None)}, recorded {record[attr]}")
    if record.get("model_id") and _model_id(deployment.model) != record["model_id"]:
        out.append(f"model: live {_model_id(deployment.model)}, recorded {record['model_id']}")
    if record.get("scoring_uri") and endpoint.scoring_uri != record["scoring_uri"]:
        out.append(f"scoring_uri: live {endpoint.scoring_uri}, recorded {record['scoring_uri']}")
    return out
