"""Deployment targets, one module each, listed in one plain dict (no import-time registration)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.errors import UsageError

if TYPE_CHECKING:
    from pipeline.targets.base import Target

# target name -> module path and the class in it; imported only when used, so the cloud SDKs stay optional
TARGETS: dict[str, tuple[str, str]] = {
    "local": ("pipeline.targets.local", "LocalTarget"),
    "aci": ("pipeline.targets.azureml_v1", "AciTarget"),
    "aks": ("pipeline.targets.azureml_v1", "AksTarget"),
    "azureml-online": ("pipeline.targets.azureml_online", "OnlineTarget"),
    "kubernetes": ("pipeline.targets.kubernetes", "KubernetesTarget"),
}


def get(name: str) -> "Target":
    """The target object for a `deploy.target` value."""
    try:
        module_name, class_name = TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}; known: {', '.join(sorted(TARGETS))}") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(module_name):
            raise UsageError(f"target {name!r} is not available in this version of pipeline") from None
        raise
    return getattr(module, class_name)()
