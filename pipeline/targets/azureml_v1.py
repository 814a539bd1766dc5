"""Targets `aci` and `aks`: Azure ML SDK v1 (azureml-core) web services, the tutorial's own path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import TargetError
from pipeline.spec import Spec
from pipeline.targets import azureml_common as common
from pipeline.targets.azureml_v1_api import AzureMLv1Api, WorkspaceFactory, default_workspace
from pipeline.targets.azureml_v1_service import WebserviceTarget
from pipeline.targets.base import AddProblem, Auth, Capabilities, Rollout, ServiceRecord

__all__ = ["AciTarget", "AksTarget", "AzureMLv1Api", "WebserviceTarget", "WorkspaceFactory", "default_workspace"]

# Azure Container Instances: the largest container group a standard Linux region offers.
ACI_MAX_CPU_CORES = 4
ACI_MAX_MEMORY_GB = 16
# Azure ML compute target names (azureml.core.compute checks the same pattern).
COMPUTE_NAME = r"[A-Za-z][A-Za-z0-9-]{0,14}[A-Za-z0-9]"


class AciTarget(WebserviceTarget):
    """Azure Container Instances, as in the tutorial."""

    name = "aci"
    summary = "Azure Container Instances through Azure ML SDK v1, as in the tutorial"
    kind = "ACI"
    config_file = "aciconfig.json"

    def describe_update(self, record: ServiceRecord | None, spec: Spec) -> str:
        return "in place: ACI replaces the container group, so the service is down while it updates (downtime)"

    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        super().rules(data, add, folder=folder)
        deploy, azure = data["deploy"], data["deploy"]["azureml"]
        if deploy["cpu_cores"] > ACI_MAX_CPU_CORES:
            add(
                ("deploy", "cpu_cores"),
                f"Azure Container Instances allows at most {ACI_MAX_CPU_CORES} cores, got {deploy['cpu_cores']}",
            )
        if deploy["memory_gb"] > ACI_MAX_MEMORY_GB:
            add(
                ("deploy", "memory_gb"),
                f"Azure Container Instances allows at most {ACI_MAX_MEMORY_GB} GB, got {deploy['memory_gb']}",
            )
        for key in ("compute_target", "replicas", "autoscale", "instance_type"):
            if key in azure:
                owner = "azureml-online" if key == "instance_type" else "aks"
                add(("deploy", "azureml", key), f"not used by target 'aci' ({owner} only)")
        if azure.get("token_auth"):
            add(("deploy", "azureml", "token_auth"), "Azure Container Instances supports key auth only (deploy.auth)")

    def deployment_config(self, spec: Spec) -> Any:
        """The tutorial's AciWebservice.deploy_configuration(cpu_cores, memory_gb, tags, description)."""
        self._sdk()
        from azureml.core.webservice import AciWebservice

        try:
            return AciWebservice.deploy_configuration(
                cpu_cores=spec.deploy.cpu_cores,
                memory_gb=spec.deploy.memory_gb,
                tags=dict(spec.tags),
                description=spec.description,
                auth_enabled=spec.deploy.auth,
            )
        except Exception as exc:  # noqa: BLE001  WebserviceException
            raise TargetError(f"ACI deploy configuration: {common.reason(exc)}") from None


class AksTarget(WebserviceTarget):
    """An Azure Kubernetes Service cluster attached to the workspace (deploy.azureml.compute_target)."""

    name = "aks"
    summary = "an AKS cluster attached to an Azure ML workspace, SDK v1"
    kind = "AKS"
    config_file = "aksconfig.json"
    capabilities = Capabilities(probe_unrecorded=True, rollout=Rollout.IN_PLACE, auth=frozenset({Auth.KEY, Auth.TOKEN}))
    compared = WebserviceTarget.compared + (
        "token_auth_enabled",
        "num_replicas",
        "autoscale_enabled",
        "autoscale_min_replicas",
        "autoscale_max_replicas",
        "autoscale_target_utilization",
        "scoring_timeout_ms",
        "compute_target_name",
    )

    def describe_update(self, record: ServiceRecord | None, spec: Spec) -> str:
        replicas = spec.deploy.settings().get("replicas") or (spec.deploy.settings().get("autoscale") or {}).get(
            "min_replicas", 1
        )
        gap = "" if replicas > 1 else "; with one replica the service is down while its pod is replaced (downtime)"
        return f"in place: AKS rolls the service's pods{gap}"

    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        super().rules(data, add, folder=folder)
        deploy, azure = data["deploy"], data["deploy"]["azureml"]
        if "compute_target" not in azure:
            add(
                ("deploy", "azureml", "compute_target"),
                "required for target 'aks': the name of the attached AKS cluster",
            )
        elif not re.fullmatch(COMPUTE_NAME, azure["compute_target"]):
            add(
                ("deploy", "azureml", "compute_target"),
                f"{azure['compute_target']!r} is not a name Azure ML accepts for a compute target: "
                "2-16 letters, digits and '-', starting with a letter and not ending with '-'",
            )
        if "replicas" in azure and "autoscale" in azure:
            add(
                ("deploy", "azureml", "autoscale"),
                "cannot be combined with deploy.azureml.replicas (a fixed count disables autoscaling)",
            )
        if deploy["auth"] and azure.get("token_auth"):
            add(
                ("deploy", "azureml", "token_auth"),
                "cannot be combined with deploy.auth: AKS allows key auth or token auth, not both",
            )
        scale = azure.get("autoscale")
        if scale and scale.get("min_replicas", 1) > scale.get("max_replicas", 10):
            add(("deploy", "azureml", "autoscale", "min_replicas"), "must not exceed max_replicas")
        if "instance_type" in azure:
            add(("deploy", "azureml", "instance_type"), "not used by target 'aks' (azureml-online only)")

    def template_values(self, spec: Spec) -> dict[str, Any]:
        azure = spec.deploy.settings()
        scale = azure.get("autoscale")
        return {
            "compute_target": azure["compute_target"],
            "replicas": azure.get("replicas"),
            "autoscale": dict(scale) if scale is not None else None,
            "token_auth": bool(azure.get("token_auth")),
        }

    def deployment_config(self, spec: Spec) -> Any:
        self._sdk()
        from azureml.core.webservice import AksWebservice

        azure = spec.deploy.settings()
        scaling: dict[str, Any] = {}
        if azure.get("replicas") is not None:
            scaling = {"autoscale_enabled": False, "num_replicas": azure["replicas"]}
        elif azure.get("autoscale") is not None:
            scale = azure["autoscale"]
            scaling = {
                "autoscale_enabled": True,
                "autoscale_min_replicas": scale["min_replicas"],
                "autoscale_max_replicas": scale["max_replicas"],
                "autoscale_target_utilization": scale["target_utilization"],
            }
        try:
            return AksWebservice.deploy_configuration(
                cpu_cores=spec.deploy.cpu_cores,
                memory_gb=spec.deploy.memory_gb,
                tags=dict(spec.tags),
                description=spec.description,
                auth_enabled=spec.deploy.auth,
                token_auth_enabled=bool(azure.get("token_auth")),
                scoring_timeout_ms=spec.deploy.request_timeout_ms,
                compute_target_name=azure["compute_target"],
                **scaling,
            )
        except Exception as exc:  # noqa: BLE001  WebserviceException
            raise TargetError(f"AKS deploy configuration: {common.reason(exc)}") from None

    def _deployment_target(self, ws: Any, spec: Spec) -> Any:
        name = spec.deploy.settings()["compute_target"]
        try:
            return self.api.compute_target(ws, name)
        except Exception as exc:  # noqa: BLE001  ComputeTargetException
            raise TargetError(
                f"AKS compute target {name} in workspace {getattr(ws, 'name', '?')}: {common.reason(exc)}"
            ) from None

    def _record_extra(self, spec: Spec) -> dict[str, Any]:
        azure = spec.deploy.settings()
        scale = azure.get("autoscale")
        return {
            "compute_target": azure["compute_target"],
            "replicas": azure.get("replicas"),
            "autoscale": dict(scale) if scale is not None else None,
        }
