"""What target `azureml-online` asks of azure-ai-ml offline: the client, the YAML loaders, VM sizes, SDK values."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RenderError
from pipeline.targets import azureml_common as common

if TYPE_CHECKING:
    from pipeline.spec import Spec

ClientFactory = Callable[[Path | None], Any]
FILES = ("endpoint.yml", "deployment.yml")
# Blue/green: the new version is deployed beside the live one under the other name, then takes all the traffic.
FIRST, SECOND = "blue", "green"


def default_client(config: Path | None) -> Any:
    """MLClient(credential, subscription_id, resource_group, workspace_name) from the workspace config.json."""
    sdk()
    common.require("azure.identity", "azureml-online", common.EXTRA_V2)
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    # from_config reads subscription_id, resource_group and workspace_name; without a path it searches
    # the working folder and its parents like azureml-core. The credential asks Azure only when first used.
    return MLClient.from_config(credential=DefaultAzureCredential(), path=str(config) if config else None)


def sdk() -> Any:
    common.require("azure.ai.ml", "azureml-online", common.EXTRA_V2)
    import azure.ai.ml

    # The SDK logs notes users can't act on ("This is an experimental class", "Found the config file in"),
    # and azure-identity logs every credential it tried: the one-line reason in our error says enough.
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    logging.getLogger("azure.ai.ml._ml_client").setLevel(logging.WARNING)
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    return azure.ai.ml


def next_deployment(live: str | None) -> str:
    """The name of the next version: the other of blue and green (blue first, and beside anything else)."""
    return SECOND if live == FIRST else FIRST


def serving(traffic: Mapping[str, Any] | None) -> str | None:
    """The deployment that takes the most of the endpoint's traffic, if any takes some."""
    weights = weights_of(traffic)
    return max(weights, key=lambda name: (weights[name], name)) if weights else None


def weights_of(traffic: Mapping[str, Any] | None) -> dict[str, int]:
    """The endpoint's traffic without the deployments that take none (azure-ai-ml strips those on update too)."""
    return {str(name): int(weight) for name, weight in (traffic or {}).items() if int(weight)}


def instance_type(spec: Spec) -> tuple[str, str]:
    """The VM size and why: deploy.azureml.instance_type, else the table's cheapest size that fits."""
    given = spec.deploy.settings().get("instance_type")
    if given:
        return given, "instance_type: from deploy.azureml.instance_type"
    chosen = common.choose_instance_type(spec.deploy.cpu_cores, spec.deploy.memory_gb)
    if chosen is None:  # pipeline.rules rejects such a spec; this is the last line of defence
        raise RenderError(
            f"no VM size in the table has {spec.deploy.cpu_cores} cores and {spec.deploy.memory_gb} GB; "
            "set deploy.azureml.instance_type"
        )
    cores, memory = next((c, m) for n, c, m in common.INSTANCE_TYPES if n == chosen)
    return chosen, (
        f"instance_type: the smallest size with >= {spec.deploy.cpu_cores} cores and >= "
        f"{spec.deploy.memory_gb} GB ({cores} cores, {memory} GB); set deploy.azureml.instance_type to override"
    )


def load(folder: Path, model_path: Path | None = None) -> tuple[Any, Any]:
    """endpoint.yml and deployment.yml as the SDK's entities, through its own loaders (offline)."""
    ml = sdk()
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


def value(state: Any) -> Any:
    """azure-ai-ml's states are str enums: 'Succeeded', not 'DeploymentProvisioningState.SUCCEEDED'."""
    return getattr(state, "value", state)


def initial_status(poller: Any) -> int | None:
    """The HTTP status of the request that started a long-running operation (204: there was nothing to do)."""
    method = poller.polling_method() if hasattr(poller, "polling_method") else None
    response = getattr(method, "_initial_response", None)  # azure-core keeps it; no public accessor
    return getattr(getattr(response, "http_response", None), "status_code", None)


def model_id(model: Any) -> str | None:
    if model is None or isinstance(model, str):
        return model
    return getattr(model, "id", None) or f"{getattr(model, 'name', '?')}:{getattr(model, 'version', '?')}"


def timeout_ms(deployment: Any) -> int | None:
    """The deployment's request timeout, as deploy.request_timeout_ms says it."""
    ms = getattr(getattr(deployment, "request_settings", None), "request_timeout_ms", None)
    return int(ms) if ms is not None else None
