"""Checks beyond the schema: files that must exist, sizes that must agree; each target adds its own limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import regular, yamlsource
from pipeline.files import display_path
from pipeline.targets.base import AddProblem, Auth

Problem = tuple[int, tuple[Any, ...], str]


def check(data: dict[str, Any], doc: yamlsource.Document, folder: Path, *, check_files: bool = True) -> list[Problem]:
    """Every problem the schema cannot see, as (line, field path, message)."""
    problems: list[Problem] = []

    def add(path: tuple[Any, ...], message: str) -> None:
        problems.append((doc.line_of(path), path, message))

    if check_files:  # commands that only touch the service (status, delete) need neither the files nor the pin
        _check_files(data, folder, add)
        _check_pin(data, folder, add)
    _check_test(data, folder, add, check_files)
    _check_target(data, add, folder if check_files else None)
    _check_state(data, add)
    return problems


def _check_state(data: dict[str, Any], add: AddProblem) -> None:
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


def exists(folder: Path, value: str, add: AddProblem, path: tuple[Any, ...], *, kind: str = "file") -> bool:
    """Is `value`, relative to the spec's folder, a regular file (or a folder)? If not, say what it is at `path`."""
    target = folder / value
    if kind == "folder":
        why = None if target.is_dir() else "not found" if not target.exists() else "is not a folder"
    else:
        why = regular.problem(target)  # a FIFO or a device would hang or exhaust whoever reads it
    if why is None:
        return True
    where = (
        "" if Path(value).is_absolute() else f" (resolved against the spec's folder: {display_path(target.resolve())})"
    )
    add(path, f"{kind} not found: {value}{where}" if why == "not found" else f"{value} {why}{where}")
    return False


def _check_pin(data: dict[str, Any], folder: Path, add: AddProblem) -> None:
    """The fetch stage's pin rule, before anything runs; with the digest to paste when the file is here."""
    from pipeline import models

    model = data["model"]
    source = model["source"]
    local = folder / source if isinstance(source, str) else None
    needs_digest = models.pin_problem(model["format"], model.get("sha256"), None) is not None
    actual = models.sha256_file(local) if needs_digest and local and regular.problem(local) is None else None
    problem = models.pin_problem(model["format"], model.get("sha256"), actual)
    if problem:
        add(("model", "sha256"), problem)


def _check_files(data: dict[str, Any], folder: Path, add: AddProblem) -> None:
    model = data["model"]
    if isinstance(model["source"], str):
        exists(folder, model["source"], add, ("model", "source"))
    elif "workspace_config" in model["source"]:
        exists(folder, model["source"]["workspace_config"], add, ("model", "source", "workspace_config"))
    if "templates" in data:
        exists(folder, data["templates"], add, ("templates",), kind="folder")
    if "entry_script" in data["scoring"]:
        exists(folder, data["scoring"]["entry_script"], add, ("scoring", "entry_script"))


def _test_format(test: dict[str, Any]) -> str:
    if test["format"] != "auto":
        return test["format"]
    suffix = Path(test["images"]).suffix.lower()
    return {".npz": "npz", ".csv": "csv"}.get(suffix, "idx")


def _check_test(data: dict[str, Any], folder: Path, add: AddProblem, check_files: bool) -> None:
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
    images_ok = exists(folder, test["images"], add, ("test", "images"))
    labels_ok = "labels" not in test or exists(folder, test["labels"], add, ("test", "labels"))
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
        add(
            ("test", "sample_size"),
            f"{test['sample_size']} is larger than the test set ({rows} rows in {test['images']})",
        )


def _check_target(data: dict[str, Any], add: AddProblem, folder: Path | None) -> None:
    """The chosen target's own rules, and what its capabilities rule out."""
    from pipeline import targets

    target = targets.get(data["deploy"]["target"])
    if data["deploy"]["auth"] and Auth.KEY not in target.capabilities.auth:
        add(("deploy", "auth"), f"target {target.name!r} does not support key auth")
    target.rules(data, add, folder=folder)
