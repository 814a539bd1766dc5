"""Checks beyond the schema: files that must exist, sizes that must agree, each target's own limits."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from pipeline import yamlsource
from pipeline.files import display_path

Problem = tuple[int, tuple, str]

# Azure Container Instances: the largest container group a standard Linux region offers.
ACI_MAX_CPU_CORES = 4
ACI_MAX_MEMORY_GB = 16
AZURE_TARGETS = ("aci", "aks", "azureml-online")
# Azure ML compute target names (azureml.core.compute checks the same pattern).
COMPUTE_NAME = r"[A-Za-z][A-Za-z0-9-]{0,14}[A-Za-z0-9]"
# Azure Resource Manager tags: at most 50 per resource, and these characters are rejected in names.
ARM_MAX_TAGS = 50
ARM_TAG_FORBIDDEN = "<>%&\\?/"


def check(data: dict[str, Any], doc: yamlsource.Document, folder: Path, *, check_files: bool = True) -> list[Problem]:
    """Every problem the schema cannot see, as (line, field path, message)."""
    problems: list[Problem] = []

    def add(path: tuple, message: str) -> None:
        problems.append((doc.line_of(path), path, message))

    if check_files:
        _check_files(data, folder, add)
    _check_test(data, folder, add, check_files)
    _check_target(data, add)
    _check_state(data, add)
    return problems


def _check_state(data: dict[str, Any], add: Callable[[tuple, str], None]) -> None:
    state = data.get("state")
    if state is None:
        return
    if state["backend"] == "azureblob" and "url" not in state:
        add(("state", "url"), "required with backend azureblob: azureblob://<account>/<container>/<prefix>")
    elif state["backend"] != "azureblob" and "url" in state:
        add(("state", "url"), f"only used with backend azureblob (backend is {state['backend']!r})")
    elif "url" in state:
        from pipeline.backends.azureblob import parse
        from pipeline.errors import UsageError

        try:
            parse(state["url"])
        except UsageError as exc:
            add(("state", "url"), str(exc).split(": ", 1)[-1])


def _exists(folder: Path, value: str, add: Callable[[tuple, str], None], path: tuple, *, kind: str = "file") -> bool:
    target = folder / value
    if kind == "folder":
        ok = target.is_dir()
    else:
        ok = target.is_file()
    if not ok:
        add(path, f"{kind} not found: {value} (resolved against the spec's folder: {display_path(target.resolve())})")
    return ok


def _check_files(data: dict[str, Any], folder: Path, add: Callable[[tuple, str], None]) -> None:
    model = data["model"]
    if isinstance(model["source"], str):
        _exists(folder, model["source"], add, ("model", "source"))
    elif "workspace_config" in model["source"]:
        _exists(folder, model["source"]["workspace_config"], add, ("model", "source", "workspace_config"))
    if "templates" in data:
        _exists(folder, data["templates"], add, ("templates",), kind="folder")
    if "entry_script" in data["scoring"]:
        _exists(folder, data["scoring"]["entry_script"], add, ("scoring", "entry_script"))
    workspace = data["deploy"]["azureml"].get("workspace_config")
    if workspace is not None and data["deploy"]["target"] in AZURE_TARGETS:
        _exists(folder, workspace, add, ("deploy", "azureml", "workspace_config"))


def _test_format(test: dict[str, Any]) -> str:
    if test["format"] != "auto":
        return test["format"]
    suffix = Path(test["images"]).suffix.lower()
    return {".npz": "npz", ".csv": "csv"}.get(suffix, "idx")


def _check_test(data: dict[str, Any], folder: Path, add: Callable[[tuple, str], None], check_files: bool) -> None:
    test = data["test"]
    fmt = _test_format(test)
    if fmt == "idx" and "labels" not in test:
        add(("test", "labels"), "required with IDX images: the labels file (e.g. test-labels.gz)")
    if fmt == "csv" and "label_column" not in test:
        add(("test", "label_column"), "required with CSV test data: the name of the label column")
    if fmt != "idx" and "labels" in test:
        add(("test", "labels"), f"only used with IDX images; {fmt} files carry their labels")
    if not check_files:
        return
    images_ok = _exists(folder, test["images"], add, ("test", "images"))
    labels_ok = "labels" not in test or _exists(folder, test["labels"], add, ("test", "labels"))
    if not (images_ok and labels_ok):
        return
    from pipeline import data as datafiles  # header-only reads; no numpy on this path
    from pipeline.errors import DataError

    images = folder / test["images"]
    try:
        rows = datafiles.count_rows(images, format=fmt)
    except DataError as exc:
        # the field already names the file: drop DataError's own "<absolute path>: " prefix
        add(("test", "images"), str(exc).removeprefix(f"{images}: "))
        return
    if test["sample_size"] > rows:
        add(("test", "sample_size"), f"{test['sample_size']} is larger than the test set ({rows} rows in {test['images']})")


def _check_target(data: dict[str, Any], add: Callable[[tuple, str], None]) -> None:
    deploy = data["deploy"]
    target = deploy["target"]
    azure = deploy["azureml"]
    if target == "aci":
        if deploy["cpu_cores"] > ACI_MAX_CPU_CORES:
            add(("deploy", "cpu_cores"), f"Azure Container Instances allows at most {ACI_MAX_CPU_CORES} cores, got {deploy['cpu_cores']}")
        if deploy["memory_gb"] > ACI_MAX_MEMORY_GB:
            add(("deploy", "memory_gb"), f"Azure Container Instances allows at most {ACI_MAX_MEMORY_GB} GB, got {deploy['memory_gb']}")
        for key in ("compute_target", "replicas", "autoscale", "instance_type"):
            if key in azure:
                add(("deploy", "azureml", key), f"not used by target 'aci' ({'azureml-online' if key == 'instance_type' else 'aks'} only)")
        if azure.get("token_auth"):
            add(("deploy", "azureml", "token_auth"), "Azure Container Instances supports key auth only (deploy.auth)")
    elif target == "aks":
        if "compute_target" not in azure:
            add(("deploy", "azureml", "compute_target"), "required for target 'aks': the name of the attached AKS cluster")
        elif not re.fullmatch(COMPUTE_NAME, azure["compute_target"]):
            add(("deploy", "azureml", "compute_target"), f"{azure['compute_target']!r} is not a name Azure ML accepts for a compute target: "
                "2-16 letters, digits and '-', starting with a letter and not ending with '-'")
        if "replicas" in azure and "autoscale" in azure:
            add(("deploy", "azureml", "autoscale"), "cannot be combined with deploy.azureml.replicas (a fixed count disables autoscaling)")
        if deploy["auth"] and azure.get("token_auth"):
            add(("deploy", "azureml", "token_auth"), "cannot be combined with deploy.auth: AKS allows key auth or token auth, not both")
        scale = azure.get("autoscale")
        if scale and scale.get("min_replicas", 1) > scale.get("max_replicas", 10):
            add(("deploy", "azureml", "autoscale", "min_replicas"), "must not exceed max_replicas")
        if "instance_type" in azure:
            add(("deploy", "azureml", "instance_type"), "not used by target 'aks' (azureml-online only)")
    elif target == "azureml-online":
        for key in ("compute_target", "autoscale"):
            if key in azure:
                add(("deploy", "azureml", key), "not used by target 'azureml-online'")
        if deploy["auth"] and azure.get("token_auth"):
            add(("deploy", "azureml", "token_auth"), "cannot be combined with deploy.auth: an endpoint uses key or token auth, not both")
        if deploy["request_timeout_ms"] > 180000:
            add(("deploy", "request_timeout_ms"), f"managed online endpoints allow at most 180000 ms, got {deploy['request_timeout_ms']}")
        if not deploy["auth"] and not azure.get("token_auth"):
            add(("deploy", "auth"), "managed online endpoints always authenticate: set deploy.auth: true (key auth) "
                "or deploy.azureml.token_auth: true (Azure ML tokens)")
        if "instance_type" not in azure:
            from pipeline.targets.azureml_common import choose_instance_type  # the table lives with the target

            if choose_instance_type(deploy["cpu_cores"], deploy["memory_gb"]) is None:
                add(("deploy", "cpu_cores"), f"no VM size in the instance_type table has {deploy['cpu_cores']} cores and "
                    f"{deploy['memory_gb']} GB; set deploy.azureml.instance_type")
        # An endpoint is an Azure Resource Manager resource: ARM's tag rules apply.
        if len(data["tags"]) > ARM_MAX_TAGS:
            add(("tags",), f"Azure resources allow at most {ARM_MAX_TAGS} tags, got {len(data['tags'])}")
        for key in data["tags"]:
            bad = sorted(set(key) & set(ARM_TAG_FORBIDDEN))
            if bad:
                add(("tags", key), f"Azure rejects tag names containing {' '.join(bad)}")
    elif target == "kubernetes":
        add(("deploy", "target"), "'kubernetes' is not available in this version of pipeline; "
            "use local, aci, aks or azureml-online")
        k8s = deploy["kubernetes"]
        if "max_replicas" in k8s and k8s["max_replicas"] < k8s["replicas"]:
            add(("deploy", "kubernetes", "max_replicas"), f"must be >= replicas ({k8s['replicas']})")
