"""What target `azureml-online` reads back from a live endpoint: its record, drift, stamp and observed fields."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.records import Live
from pipeline.targets import azureml_common as common
from pipeline.targets.azureml_online_sdk import model_id, serving, timeout_ms, value, weights_of
from pipeline.targets.base import STAMP_MODEL, ServiceRecord

if TYPE_CHECKING:
    from pipeline.spec import Spec

TARGET = "azureml-online"


def record_of(
    client: Any,
    endpoint: Any,
    deployment: Any,
    *,
    config: Path | None,
    model_sha256: str | None,
    traffic: Mapping[str, int] | None = None,
) -> ServiceRecord:
    """The record of one deployment of a live endpoint, as deploy keeps it (the keys stay in keys.json)."""
    return ServiceRecord(
        target=TARGET,
        scoring_uri=endpoint.scoring_uri,
        auth=endpoint.auth_mode == "key",
        swagger_uri=endpoint.openapi_uri,
        model_sha256=model_sha256,
        extra={
            "endpoint": endpoint.name,
            "deployment": deployment.name,
            "workspace": {
                "name": client.workspace_name,
                "resource_group": client.resource_group_name,
                "subscription_id": client.subscription_id,
            },
            "workspace_config": str(config) if config else None,
            "state": value(deployment.provisioning_state),
            "auth_mode": endpoint.auth_mode,
            "model_id": model_id(deployment.model),
            "instance_type": deployment.instance_type,
            "instance_count": deployment.instance_count,
            "traffic": dict(weights_of(endpoint.traffic) if traffic is None else traffic),
            "tags": common.user_tags(endpoint.tags),
            "description": endpoint.description,
        },
    )


def live_of(
    endpoint: Any, deployment: Any, record: Mapping[str, Any], spec: Spec | None, others: list[str] | None = None
) -> Live:
    """The endpoint with the deployment that serves it (the recorded one, or the one the traffic goes to)."""
    name, which = endpoint.name, deployment.name
    drift = drift_of(endpoint, deployment, record)
    states = (value(endpoint.provisioning_state), value(deployment.provisioning_state))
    healthy = states == ("Succeeded", "Succeeded") and weights_of(endpoint.traffic).get(which) == 100
    detail = f"endpoint {name} is {states[0]}, deployment {which} is {states[1]}" + (
        f" at {endpoint.scoring_uri}" if healthy else ""
    )
    idle = [name for name in others or [] if not weights_of(endpoint.traffic).get(name)]
    if idle:
        detail += f"; {', '.join(idle)} also deployed there, taking no traffic"
    stamp = common.stamp_of(deployment.tags)  # what serves: the deployment's own stamp, not the endpoint's
    recorded = bool(record.get("endpoint"))
    if not recorded:
        detail += (
            "; it is not recorded here, and carries pipeline's stamp"
            if stamp
            else "; it is not recorded here and carries no stamp of pipeline (made by hand?)"
        )
    return Live(
        True,
        healthy,
        detail,
        tuple(drift),
        found=True,
        stamp=stamp,
        observed=observed(endpoint, deployment, spec, stamp),
    )


def no_deployment(endpoint: Any, record: Mapping[str, Any]) -> Live:
    """An endpoint that routes its traffic nowhere: found, but nothing serves."""
    which = record.get("deployment")
    recorded = bool(record.get("endpoint"))
    if recorded:
        return Live(
            True,
            False,
            f"endpoint {endpoint.name} has no deployment {which}",
            (f"deployment: {which} recorded, but missing from the endpoint",),
            found=True,
        )
    return Live(
        True,
        False,
        f"endpoint {endpoint.name} exists, but no deployment takes its traffic; it is not recorded here",
        found=True,
    )


def observed(endpoint: Any, deployment: Any, spec: Spec | None, stamp: Mapping[str, str] | None) -> dict[str, Any]:
    """What the live endpoint shows of itself, in the deploy inputs' field names: what a stateless plan can diff."""
    wanted: Mapping[str, Any] = _flat_inputs(spec) if spec is not None else {}
    out: dict[str, Any] = common.observed_tags(endpoint.tags, spec.tags if spec is not None else {})
    out["description"] = endpoint.description
    out["deploy.auth"] = endpoint.auth_mode == "key"
    out["deploy.azureml.token_auth"] = endpoint.auth_mode == "aml_token"
    out["deploy.azureml.instance_type"] = deployment.instance_type
    out["deploy.azureml.replicas"] = deployment.instance_count
    out["deploy.request_timeout_ms"] = timeout_ms(deployment)
    if stamp and stamp.get(STAMP_MODEL):
        out["model.sha256"] = stamp[STAMP_MODEL]
    return {key: common.as_spec_number(live, wanted.get(key)) for key, live in out.items()}


def _flat_inputs(spec: Spec) -> dict[str, Any]:
    """The spec's values under the field names observed() uses, to compare numbers by value."""
    settings = spec.deploy.settings()
    return {
        "deploy.azureml.replicas": settings.get("replicas"),
        "deploy.request_timeout_ms": spec.deploy.request_timeout_ms,
    }


def drift_of(endpoint: Any, deployment: Any, record: Mapping[str, Any]) -> list[str]:
    out = common.tags_drift(endpoint.tags, record)
    traffic = weights_of(endpoint.traffic)
    if "traffic" in record and traffic != dict(record["traffic"]):
        out.append(f"traffic: live {traffic}, recorded {dict(record['traffic'])}")
    for attr in ("instance_type", "instance_count"):
        if attr in record and getattr(deployment, attr, None) != record[attr]:
            out.append(f"{attr}: live {getattr(deployment, attr, None)}, recorded {record[attr]}")
    if record.get("model_id") and model_id(deployment.model) != record["model_id"]:
        out.append(f"model: live {model_id(deployment.model)}, recorded {record['model_id']}")
    if record.get("scoring_uri") and endpoint.scoring_uri != record["scoring_uri"]:
        out.append(f"scoring_uri: live {endpoint.scoring_uri}, recorded {record['scoring_uri']}")
    return out


def which_serves(endpoint: Any, record: Mapping[str, Any]) -> str | None:
    """The deployment to look at: the recorded one, else the one taking the endpoint's traffic."""
    return record.get("deployment") or serving(endpoint.traffic)
