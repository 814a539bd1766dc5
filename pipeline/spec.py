"""Load a spec: read, parse with line numbers, validate against the schema, build frozen records."""
from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline import rules, yamlsource
from pipeline.errors import SpecError
from pipeline.files import display_path

SCHEMA_DIR = Path(__file__).parent / "schema"
BASE_PATH = SCHEMA_DIR / "spec.base.json"  # the core, edited by hand
SCHEMA_PATH = SCHEMA_DIR / "spec.schema.json"  # the whole schema for editors, written by `pipeline schema`


def schema() -> dict[str, Any]:
    """The JSON Schema of pipeline/v1, the single source of truth for fields and defaults.

    The core comes from spec.base.json; each target adds its name to deploy.target and its settings block
    (as pre-commit's languages feed its config schema), so a new target changes no file but its own.
    """
    from pipeline import targets

    return _assembled(tuple(targets.TARGETS.items()))  # shared: callers read it, never change it


@functools.lru_cache(maxsize=4)
def _assembled(registry: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    from pipeline import targets

    with open(BASE_PATH, encoding="utf-8") as f:
        doc = json.load(f)
    deploy = doc["properties"]["deploy"]["properties"]
    classes = targets.classes()
    deploy["target"] = {
        "description": "Deployment target: " + ", ".join(f"{name} ({cls.summary})" for name, cls in classes.items()) + ".",
        "enum": list(classes),
        "default": deploy["target"]["default"],
    }
    for name, cls in classes.items():
        block = dict(cls.settings_schema)
        if deploy.setdefault(cls.settings_key, block) != block:
            raise AssertionError(f"target {name!r} declares deploy.{cls.settings_key} unlike the targets before it")
    return doc


def schema_text() -> str:
    """The schema as spec.schema.json holds it."""
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def reference() -> str:
    """The spec reference as a Markdown table, generated from the schema so it cannot drift."""
    rows = ["| field | type | default | description |", "|---|---|---|---|"]

    def walk(node: Mapping[str, Any], prefix: str, required: tuple[str, ...]) -> None:
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}.{key}" if prefix else key
            kind = sub.get("type") or ("enum: " + " \\| ".join(map(str, sub["enum"])) if "enum" in sub else
                                       f"`{sub['const']}`" if "const" in sub else "path or mapping")
            default = "required" if key in required else (f"`{json.dumps(sub['default'])}`" if "default" in sub else "")
            rows.append(f"| `{path}` | {kind} | {default} | {sub.get('description', '')} |")
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, path, tuple(sub.get("required", ())))

    walk(schema(), "", tuple(schema().get("required", ())))
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class RegistrySource:
    registry: str
    file: str
    workspace_config: Path | None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int
    source: Path | RegistrySource
    sha256: str | None
    format: str
    trusted_types: tuple[str, ...]

    @property
    def file_name(self) -> str:
        """The model's file name inside the <name>/<version>/ store folder."""
        return self.source.file if isinstance(self.source, RegistrySource) else self.source.name


@dataclass(frozen=True)
class EnvironmentSpec:
    python: str
    channels: tuple[str, ...]
    conda_packages: tuple[str, ...]
    pip_packages: tuple[str, ...]


@dataclass(frozen=True)
class ScoringSpec:
    features: int
    output: str
    entry_script: Path | None


@dataclass(frozen=True)
class TestSpec:
    images: Path
    labels: Path | None
    format: str
    label_column: str | None
    scale: float
    min_accuracy: float
    sample_size: int
    seed: int


@dataclass(frozen=True)
class DeploySpec:
    target: str
    cpu_cores: float
    memory_gb: float
    auth: bool
    request_timeout_ms: int
    ready_timeout_s: int
    blocks: Mapping[str, Mapping[str, Any]]  # every target's settings block, by its key under deploy

    @property
    def settings_key(self) -> str:
        from pipeline import targets

        return targets.target_class(self.target).settings_key

    def settings(self) -> Mapping[str, Any]:
        """The settings block of the chosen target."""
        return self.blocks[self.settings_key]

    def block(self, key: str) -> Mapping[str, Any]:
        """A settings block by its key (deploy.<key>), chosen target or not."""
        return self.blocks[key]


@dataclass(frozen=True)
class StateSpec:
    """Where the state document and the run lock live (the spec's optional `state:` block)."""

    backend: str                 # local | azureblob
    url: str | None
    lease_seconds: int


@dataclass(frozen=True)
class Spec:
    """A validated spec. `data` is the validated document with defaults, for digests and diffs."""

    path: Path
    name: str
    description: str
    tags: Mapping[str, str]
    templates: Path | None
    model: ModelSpec
    environment: EnvironmentSpec
    scoring: ScoringSpec
    test: TestSpec
    deploy: DeploySpec
    data: Mapping[str, Any] = field(repr=False, compare=False)
    state: StateSpec | None = None   # None: the local .pipeline/ folder at the project root

    @property
    def folder(self) -> Path:
        return self.path.parent


def load(path: str | os.PathLike[str], *, check_files: bool = True) -> Spec:
    """Read, parse, validate and build a spec; raise SpecError with every problem at once."""
    path = Path(path)
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{shown}: no such file"]) from None
    except IsADirectoryError:
        raise SpecError([f"{shown}: is a directory, not a spec file"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise SpecError([f"{shown}:{line}: not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start} "
                         f"({exc.reason}); save the file as UTF-8"]) from None
    except OSError as exc:
        raise SpecError([f"{shown}: cannot read: {exc.strerror}"]) from None
    try:
        doc = yamlsource.parse(text)
    except yamlsource.YamlSyntaxError as exc:
        raise SpecError([f"{shown}:{exc.line}: {exc.message}{_syntax_hint(text, exc.line, exc.message)}"]) from None
    problems = list(doc.problems)
    if not isinstance(doc.data, dict):
        kind = "an empty document" if doc.data is None else f"a {_kind(doc.data)}"
        raise SpecError([f"{shown}:1: the spec must be a YAML mapping (apiVersion: pipeline/v1, name: ...), found {kind}"])
    broken = {path for _, path, _ in doc.problems}  # already reported; the schema would only add noise
    problems += [p for p in _schema_problems(doc) if p[1] not in broken]
    if not problems:
        data = apply_defaults(doc.data, schema())
        problems += rules.check(data, doc, path.parent.resolve(), check_files=check_files)
    if problems:
        raise SpecError(format_problems(shown, problems))
    return build(path.resolve(), data)


def format_problems(shown: str, problems: list[tuple[int, tuple, str]]) -> list[str]:
    """Sorted `file:line: field.path: message` lines, duplicates removed."""
    lines = sorted({(line, _dotted(p), msg) for line, p, msg in problems})
    return [f"{shown}:{line}: {dotted}: {msg}" if dotted else f"{shown}:{line}: {msg}" for line, dotted, msg in lines]


def _syntax_hint(text: str, line: int, message: str) -> str:
    # PyYAML's words name the parser's state, not the usual cause; add the cause for the two commonest.
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in source[:len(source) - len(source.lstrip())]:
        return " (a tab in the indentation: YAML indents with spaces only)"
    if "mapping values are not allowed" in message:
        return " (a value containing ': ' must be quoted)"
    return ""


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_problems(doc: yamlsource.Document) -> list[tuple[int, tuple, str]]:
    from jsonschema import Draft202012Validator  # imported here: only loading needs it

    validator = Draft202012Validator(schema())
    out: list[tuple[int, tuple, str]] = []
    for error in validator.iter_errors(doc.data):
        out.extend(_explain(error, doc))
    return out


def _explain(error: Any, doc: yamlsource.Document) -> list[tuple[int, tuple, str]]:
    """Turn one jsonschema error into user-facing (line, path, message) triples."""
    path = tuple(error.absolute_path)
    kind = error.validator
    sub = error.schema if isinstance(error.schema, dict) else {}
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(sub.get("properties", {}))
        extra = [k for k in error.instance if k not in sub.get("properties", {})]
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return [(doc.line_of(path + (k,)), path + (k,), f"unknown key{hint}") for k in extra]
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else str(error.message)
        return [(doc.line_of(path), path + (missing,), "required field is missing")]
    line = doc.line_of(path)
    if kind == "oneOf" and path[-1:] == ("source",):
        # Explain the branch the user evidently meant: a path (string) or a registry mapping.
        branch = 0 if isinstance(error.instance, str) else 1 if isinstance(error.instance, dict) else None
        meant = [e for e in error.context if e.relative_schema_path[0] == branch]
        if meant:
            return [problem for e in meant for problem in _explain(e, doc)]
        return [(line, path, f"expected a file path or a mapping {{registry: azureml, file: ...}}, got {_got(error.instance)}")]
    if "errorMessage" in sub and kind in ("pattern", "type", "minLength", "maxLength"):
        if kind == "pattern":
            return [(line, path, f"{_show(error.instance)} {sub['errorMessage']}")]
        if kind != "type":
            return [(line, path, sub["errorMessage"])]
        hint = "" if "quote" in sub["errorMessage"] else _quote_hint(error)
        return [(line, path, f"{sub['errorMessage']}, got {_got(error.instance)}{hint}")]
    if kind == "type":
        expected = error.validator_value
        names = [_TYPE_NAMES.get(t, str(t)) for t in (expected if isinstance(expected, list) else [expected])]
        article = "an" if names[0][0] in "aeiou" else "a"
        return [(line, path, f"expected {article} {' or '.join(names)}, got {_got(error.instance)}{_quote_hint(error)}")]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return [(line, path, f"must be {op} {error.validator_value}, got {_show(error.instance)}")]
    if kind == "const":
        return [(line, path, f"must be {error.validator_value}, got {_show(error.instance)}")]
    if kind == "enum":
        options = ", ".join(repr(v) for v in error.validator_value)
        return [(line, path, f"{_show(error.instance)} is not one of [{options}]")]
    if kind in ("minLength", "maxLength"):
        limit = error.validator_value
        message = "must not be empty" if kind == "minLength" and limit == 1 else f"length must be {'>=' if kind == 'minLength' else '<='} {limit}, got {len(error.instance)}"
        if "propertyNames" in error.schema_path:  # the error is about a key of this mapping, not its value
            message = "keys must not be empty" if error.instance == "" else f"key {_show(error.instance)}: {message}"
        return [(line, path, message)]
    return [(line, path, error.message)]


# JSON Schema's type names in the words of YAML, which is what the user wrote.
_TYPE_NAMES = {"object": "mapping", "array": "list"}


def _quote_hint(error: Any) -> str:
    # YAML reads unquoted yes/no/true, 1.10 and all-digit hashes as booleans and numbers.
    wanted_string = error.validator_value == "string"
    return "; quote it to make it a string" if wanted_string and isinstance(error.instance, (bool, int, float)) else ""


def _got(value: Any) -> str:
    return "null (an empty value)" if value is None else f"{_kind(value)} {_show(value)}"


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    # YAML's spelling for true/false/null and collections; repr() for strings and numbers.
    text = repr(value) if not isinstance(value, (dict, list, bool)) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) <= 60:
        return text
    return text[:56] + "…" + (text[-1] if text[-1] in "'\"]}" else "")  # keep the closing quote or bracket


def apply_defaults(data: Any, node: Mapping[str, Any]) -> Any:
    """A copy of `data` with the schema's defaults filled in, recursively, for object properties."""
    if not isinstance(data, dict) or node.get("type") != "object":
        return copy.deepcopy(data)
    properties = node.get("properties", {})
    out = {key: copy.deepcopy(value) for key, value in data.items() if key not in properties}  # e.g. tags
    for key, sub in properties.items():
        if key in data:
            out[key] = apply_defaults(data[key], sub)
        elif "default" in sub:
            out[key] = apply_defaults(copy.deepcopy(sub["default"]), sub)
    return out


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def build(path: Path, data: dict[str, Any]) -> Spec:
    """The typed, frozen spec from validated data; relative paths resolve against the spec's folder."""
    folder = path.parent

    def rel(value: str | None) -> Path | None:
        return None if value is None else (folder / value).resolve()

    m, e, s, t, d = data["model"], data["environment"], data["scoring"], data["test"], data["deploy"]
    st = data.get("state")
    source: Path | RegistrySource
    if isinstance(m["source"], dict):
        source = RegistrySource(m["source"]["registry"], m["source"]["file"], rel(m["source"].get("workspace_config")))
    else:
        source = rel(m["source"])  # type: ignore[assignment]
    return Spec(
        path=path,
        name=data["name"],
        description=data["description"],
        tags=_freeze(data["tags"]),
        templates=rel(data.get("templates")),
        model=ModelSpec(m["name"], m["version"], source, m.get("sha256"), m["format"], tuple(m["trusted_types"])),
        environment=EnvironmentSpec(e["python"], tuple(e["channels"]), tuple(e["conda_packages"]), tuple(e["pip_packages"])),
        scoring=ScoringSpec(s["features"], s["output"], rel(s.get("entry_script"))),
        test=TestSpec((folder / t["images"]).resolve(), rel(t.get("labels")), t["format"], t.get("label_column"), float(t["scale"]),
                      float(t["min_accuracy"]), t["sample_size"], t["seed"]),
        deploy=DeploySpec(d["target"], d["cpu_cores"], d["memory_gb"], d["auth"], d["request_timeout_ms"],
                          d["ready_timeout_s"], _freeze({k: v for k, v in d.items() if isinstance(v, dict)})),
        data=_freeze(data),
        state=StateSpec(st["backend"], st.get("url"), st["lease_seconds"]) if st is not None else None,
    )
