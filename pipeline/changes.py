"""What a plan changes, in the spec's own words: the fields that changed (`tags.method: sklearn -> sgd`), per stage.

A stage's inputs are digests and values (runner.plan compares them); this module reads the same inputs,
as recorded at the stage's last success (Step.recorded) and as they are now (Step.inputs), and names each
difference by the spec field it comes from, or by what else it is: a file's bytes, an installed version,
a rendered file whose template changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.records import DeployAction, Plan, Step, StepAction

VALUE, CONTENT, RUNTIME, RENDERED = "value", "content", "runtime", "rendered"
MODEL = "@model"  # the model's digest: the pin (model.sha256) when there is one, else the file's bytes
SKIP = "@skip"  # follows from another stage (smoke's service is deploy's), said there

_TEST = {
    "test.images": ("test.images", CONTENT),
    "test.labels": ("test.labels", CONTENT),
    "test.format": ("test.format", VALUE),
    "test.label_column": ("test.label_column", VALUE),
    "test.scale": ("test.scale", VALUE),
}
# stage -> {input key (dotted, the longest prefix wins): (spec field or marker, kind)}
FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "check": {
        "python": ("Python", RUNTIME),
        "packages": ("", RUNTIME),
        "target": ("deploy.target", VALUE),
        "format": ("model.format", VALUE),
        "model": (MODEL, CONTENT),
        "features": ("scoring.features", VALUE),
        "output": ("scoring.output", VALUE),
    },
    "fetch": {
        "name": ("model.name", VALUE),
        "version": ("model.version", VALUE),
        "format": ("model.format", VALUE),
        "pin": ("model.sha256", VALUE),
        "source.sha256": ("model.source", CONTENT),
        "source.registry": ("model.source.registry", VALUE),
        "source.file": ("model.source.file", VALUE),
        "source.workspace_config": ("model.source.workspace_config", CONTENT),
    },
    "evaluate": {
        "model": (MODEL, CONTENT),
        "format": ("model.format", VALUE),
        "trusted": ("model.trusted_types", VALUE),
        **_TEST,
        "min_accuracy": ("test.min_accuracy", VALUE),
        "runtime": ("", RUNTIME),
    },
    "smoke": {
        "service": (SKIP, VALUE),
        "model": (MODEL, CONTENT),
        **_TEST,
        "sample_size": ("test.sample_size", VALUE),
        "seed": ("test.seed", VALUE),
        "output": ("scoring.output", VALUE),
        "runtime": ("", RUNTIME),
    },
}
# the deploy stage's inputs and the render stage's template values, where they differ from the spec's field names;
# the model's file name and the environment's name follow from model.source and name, which say it
RENAMED = {"target": "deploy.target", "model.file": SKIP, "environment.name": SKIP}


@dataclass(frozen=True)
class FieldChange:
    """One difference: a spec field (or a file's bytes, an installed version, a rendered file), before and after."""

    field: str
    old: Any
    new: Any
    kind: str = VALUE  # value | content (digests of bytes) | runtime (installed versions) | rendered (a file)
    stages: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "before": self.old,
            "after": self.new,
            "kind": self.kind,
            "stages": list(self.stages),
        }


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {dotted.path: leaf}; lists are leaves (a changed list is one changed field)."""
    if isinstance(value, Mapping) and (value or not prefix):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _differences(old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    a, b = flatten(old or {}), flatten(new or {})
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _name(stage: str, key: str, pinned: bool) -> tuple[str, str]:
    table = FIELDS.get(stage, {})
    for prefix in sorted(table, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "."):
            field, kind = table[prefix]
            if kind == RUNTIME:
                package = field or key.split(".")[-1]
                return f"{'Python' if package == 'python' else package} (installed)", RUNTIME
            if field == MODEL:
                return ("model.sha256", VALUE) if pinned else ("model.source", CONTENT)
            return field, kind
    return f"{stage} input {key}", VALUE  # an input this module does not know yet: named as the stage has it


def _deploy_field(path: str, pinned: bool) -> tuple[str, str]:
    if path == "model.sha256" and not pinned:
        return "model.source", CONTENT
    return RENAMED.get(path, path), VALUE


def step_changes(step: Step, *, pinned: bool, values: Mapping[str, Any] | None = None) -> list[FieldChange]:
    """What changed for one stage since its last success; `values` are the render stage's template values now."""
    if step.recorded is None or step.action is StepAction.NOT_SELECTED:
        return []
    found: list[FieldChange] = []
    if step.stage == "deploy":
        change = step.change
        if change is None or change.action in (DeployAction.CREATE, DeployAction.ADOPT):
            return []
        for path, old, new in change.fields:
            name, kind = _deploy_field(path, pinned)
            found.append(FieldChange(name, old, new, kind))
        if not found:
            found += [FieldChange(name, None, None, RENDERED) for name, _ in change.files]
    elif step.stage == "render":
        old_values = (step.recorded.get("outputs") or {}).get("values")
        if old_values and values is not None:
            for path, old, new in _differences(old_values, values):
                name = RENAMED.get(path, path)
                if name != SKIP:
                    found.append(FieldChange(name, old, new))
        if not found:  # no spec value changed, yet the files did: their templates (or the pipeline's) changed
            old_files = (step.recorded.get("inputs") or {}).get("files") or {}
            new_files = (step.inputs or {}).get("files") or {}
            found += [
                FieldChange(name, None, None, RENDERED)
                for name in sorted(set(old_files) | set(new_files))
                if old_files.get(name) != new_files.get(name)
            ]
    elif step.stage != "report":  # the report's inputs are the other stages' digests: their changes say it
        for key, old, new in _differences(step.recorded.get("inputs"), step.inputs):
            name, kind = _name(step.stage, key, pinned)
            if name != SKIP:
                found.append(FieldChange(name, old, new, kind))
    return _one_each(found)


def _one_each(found: Iterable[FieldChange]) -> list[FieldChange]:
    """A pin and the file it pins changed together are one change: the pin says it."""
    found = list(found)
    pins = {c.new for c in found if c.field == "model.sha256"}
    seen: set[tuple[str, str, str]] = set()
    out = []
    for c in found:
        key = (c.field, repr(c.old), repr(c.new))
        if key in seen or (c.field == "model.source" and c.kind == CONTENT and c.new in pins):
            continue
        seen.add(key)
        out.append(c)
    return out


@dataclass(frozen=True)
class Explained:
    changes: tuple[FieldChange, ...]  # every difference once, with the stages it makes run
    why: Mapping[str, tuple[str, ...]]  # stage -> the fields that make it run


def explain(plan: Plan, *, pinned: bool, values: Mapping[str, Any] | None = None) -> Explained:
    """The plan's differences, each said once (a field read by several stages lists them), and per stage its fields."""
    merged: dict[tuple[str, str, str], FieldChange] = {}
    why: dict[str, tuple[str, ...]] = {}
    for step in plan.steps:
        if step.action is not StepAction.RUN or step.rebuild:
            continue
        found = step_changes(step, pinned=pinned, values=values)
        why[step.stage] = tuple(dict.fromkeys(c.field for c in found))
        for c in found:
            key = (c.field, repr(c.old), repr(c.new))
            had = merged.get(key)
            merged[key] = FieldChange(c.field, c.old, c.new, c.kind, (*(had.stages if had else ()), step.stage))
    return Explained(tuple(merged.values()), why)
