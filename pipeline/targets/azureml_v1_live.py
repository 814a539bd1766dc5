"""What targets `aci` and `aks` read back from a live SDK v1 web service: its record, drift and observed fields."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.targets import azureml_common as common
from pipeline.targets.base import STAMP_MODEL, ServiceRecord

if TYPE_CHECKING:
    from pipeline.spec import Spec


def workspace_info(ws: Any) -> dict[str, Any]:
    return {
        "name": getattr(ws, "name", None),
        "resource_group": getattr(ws, "resource_group", None),
        "subscription_id": getattr(ws, "subscription_id", None),
    }


def record_of(
    target: str,
    spec: Spec,
    ws: Any,
    service: Any,
    model: Any,
    *,
    config: Path | None,
    model_sha256: str | None,
    extra: Mapping[str, Any],
) -> ServiceRecord:
    """The record deploy keeps for a healthy service: the spec's settings, Azure's URIs, state and model."""
    return ServiceRecord(
        target=target,
        scoring_uri=service.scoring_uri,
        auth=bool(spec.deploy.auth),
        swagger_uri=getattr(service, "swagger_uri", None),
        model_sha256=model_sha256,
        extra={
            "service": spec.name,
            "workspace": workspace_info(ws),
            "workspace_config": str(config) if config else None,
            "state": service.state,
            "model_id": getattr(model, "id", None),
            "model_name": getattr(model, "name", None),
            "model_version": getattr(model, "version", None),
            "token_auth": bool(spec.deploy.settings().get("token_auth")),
            "tags": dict(spec.tags),
            "description": spec.description,
            "cpu_cores": spec.deploy.cpu_cores,
            "memory_gb": spec.deploy.memory_gb,
            **extra,
        },
    )


def drift_of(service: Any, record: Mapping[str, Any]) -> list[str]:
    """How the live service differs from what the last deploy recorded."""
    out = common.tags_drift(getattr(service, "tags", None), record)
    live_models = sorted(m.id for m in getattr(service, "models", None) or [])
    if record.get("model_id") and live_models != [record["model_id"]]:
        out.append(f"models: live {live_models}, recorded [{record['model_id']!r}]")
    if record.get("scoring_uri") and service.scoring_uri != record["scoring_uri"]:
        out.append(f"scoring_uri: live {service.scoring_uri}, recorded {record['scoring_uri']}")
    resources = getattr(service, "container_resource_requirements", None)
    for attr, key in (("cpu", "cpu_cores"), ("memory_in_gb", "memory_gb")):
        live = getattr(resources, attr, None)
        if resources is not None and key in record and live is not None and float(live) != float(record[key]):
            out.append(f"{key}: live {live}, recorded {record[key]}")
    if (
        "auth" in record
        and getattr(service, "auth_enabled", None) is not None
        and bool(service.auth_enabled) != bool(record["auth"])
    ):
        out.append(f"auth: live {bool(service.auth_enabled)}, recorded {bool(record['auth'])}")
    return out


def observed(service: Any, spec: Spec | None, stamp: Mapping[str, str] | None) -> dict[str, Any]:
    """What the live service shows of itself, in the deploy inputs' field names: what a stateless plan can diff."""
    out: dict[str, Any] = common.observed_tags(getattr(service, "tags", None), spec.tags if spec is not None else {})
    out["description"] = getattr(service, "description", None)
    resources = getattr(service, "container_resource_requirements", None)
    out["deploy.cpu_cores"] = getattr(resources, "cpu", None)
    out["deploy.memory_gb"] = getattr(resources, "memory_in_gb", None)
    out["deploy.auth"] = bool(getattr(service, "auth_enabled", False))
    if hasattr(service, "compute_name"):  # AKS
        out["deploy.azureml.compute_target"] = service.compute_name
        out["deploy.azureml.token_auth"] = bool(service.token_auth_enabled)
        out["deploy.request_timeout_ms"] = service.scoring_timeout_ms
        scaler = getattr(service, "autoscaler", None)
        if scaler is not None and scaler.autoscale_enabled:
            out["deploy.azureml.autoscale.min_replicas"] = scaler.min_replicas
            out["deploy.azureml.autoscale.max_replicas"] = scaler.max_replicas
            out["deploy.azureml.autoscale.target_utilization"] = scaler.target_utilization
        elif service.num_replicas is not None:
            out["deploy.azureml.replicas"] = service.num_replicas
    shas = {(m.tags or {}).get("sha256") for m in getattr(service, "models", None) or []} - {None}
    if len(shas) == 1:  # deploy tags the models it registers with their sha256
        out["model.sha256"] = shas.pop()
    elif stamp and stamp.get(STAMP_MODEL):
        out["model.sha256"] = stamp[STAMP_MODEL]
    wanted = _flat_spec(spec) if spec is not None else {}
    return {key: common.as_spec_number(value, wanted.get(key)) for key, value in out.items()}


def _flat_spec(spec: Spec) -> dict[str, Any]:
    """The spec's numbers under observed()'s field names: Azure's 1.0 is the spec's 1."""
    settings = spec.deploy.settings()
    scale = settings.get("autoscale") or {}
    return {
        "deploy.cpu_cores": spec.deploy.cpu_cores,
        "deploy.memory_gb": spec.deploy.memory_gb,
        "deploy.request_timeout_ms": spec.deploy.request_timeout_ms,
        "deploy.azureml.replicas": settings.get("replicas"),
        **{f"deploy.azureml.autoscale.{k}": v for k, v in scale.items()},
    }
