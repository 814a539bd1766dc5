"""Deployment targets, one module each, listed in one plain dict (no import-time registration)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.errors import UsageError

if TYPE_CHECKING:
    from pipeline.targets.base import Target

# target name -> "module:Class"; a cloud SDK is imported only when the target uses it, so the extras stay optional
TARGETS: dict[str, str] = {
    "local": "pipeline.targets.local:LocalTarget",
    "aci": "pipeline.targets.azureml_v1:AciTarget",
    "aks": "pipeline.targets.azureml_v1:AksTarget",
    "azureml-online": "pipeline.targets.azureml_online:OnlineTarget",
    "ray": "pipeline.targets.ray:RayTarget",
    "kubernetes": "pipeline.targets.kubernetes:KubernetesTarget",
}


def target_class(name: str) -> type[Target]:
    """The class of a `deploy.target` value (its settings, rules and capabilities), without instantiating it."""
    try:
        module_name, _, class_name = TARGETS[name].partition(":")
    except KeyError:
        raise UsageError(f"unknown target {name!r}; known: {', '.join(TARGETS)}") from None
    cls: type[Target] = getattr(importlib.import_module(module_name), class_name)
    return cls


def get(name: str) -> Target:
    """The target object for a `deploy.target` value."""
    return target_class(name)()


def classes() -> dict[str, type[Target]]:
    """Every target's class, in TARGETS order: what the schema and the docs are assembled from."""
    return {name: target_class(name) for name in TARGETS}
