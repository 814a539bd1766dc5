"""Load a spec: read, parse with line numbers, validate against the schema, build frozen records."""

from __future__ import annotations

import copy
import errno
import functools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline import explain, regular, rules, yamlsource
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
        "description": "Deployment target: "
        + ", ".join(f"{name} ({cls.summary})" for name, cls in classes.items())
        + ".",
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
            kind = sub.get("type") or (
                "enum: " + " \\| ".join(map(str, sub["enum"]))
                if "enum" in sub
                else f"`{sub['const']}`"
                if "const" in sub
                else "path or mapping"
            )
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

    backend: str  # local | azureblob
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
    state: StateSpec | None = None  # None: the local .pipeline/ folder at the project root

    @property
    def folder(self) -> Path:
        return self.path.parent


def load(path: str | os.PathLike[str], *, check_files: bool = True, text: str | None = None) -> Spec:
    """Read, parse, validate and build a spec; raise SpecError with every problem at once (at most 20 lines).

    `text` stands in for the file's content (a release's spec as it was deployed), read as if it were at `path`.
    """
    path = Path(path)
    shown = display_path(path)
    text = _read(path, shown) if text is None else text
    try:
        doc = yamlsource.parse(text)
    except yamlsource.YamlSyntaxError as exc:
        raise SpecError(
            explain.format_problems(
                shown, [(exc.line, exc.path, exc.message + explain.syntax_hint(text, exc.line, exc.message))]
            )
        ) from None
    problems = list(doc.problems)
    if not isinstance(doc.data, dict):
        kind = "an empty document" if doc.data is None else f"a {explain.kind(doc.data)}"
        raise SpecError(
            [f"{shown}:1: the spec must be a YAML mapping (apiVersion: pipeline/v1, name: ...), found {kind}"]
        )
    foreign = _not_a_spec(doc)
    if foreign:  # e.g. a symlink to a secrets file: say what it is not, and quote nothing else of it
        raise SpecError(explain.format_problems(shown, [foreign]))
    broken = {path for _, path, _ in doc.problems}  # already reported; the schema would only add noise
    problems += [p for p in _schema_problems(doc) if p[1] not in broken]
    flagged = {p[1] for p in problems}
    problems += [
        (doc.line_of(at), at, f"{value} is out of range") for at, value in _huge(doc.data, ()) if at not in flagged
    ]
    if not problems:
        data = apply_defaults(doc.data, schema())
        # relative paths resolve against the folder the spec really is in, as build() resolves them
        problems += rules.check(data, doc, path.resolve().parent, check_files=check_files)
    if problems:
        raise SpecError(explain.format_problems(shown, problems))
    return build(path.resolve(), data)


def _read(path: Path, shown: str) -> str:
    """The spec's text: a regular file (symlinks followed) of at most 1 MiB, as UTF-8."""
    try:
        raw = regular.read_bounded(path, regular.SPEC_LIMIT)
    except regular.FileTooLarge as exc:
        size = f" ({exc.size:,} bytes)" if exc.size is not None else ""
        raise SpecError(
            [f"{shown}: larger than {regular.SPEC_LIMIT >> 20} MiB{size}, the limit for a spec file"]
        ) from None
    except (FileNotFoundError, NotADirectoryError):
        raise SpecError([f"{shown}: {regular.problem(path) if os.path.islink(path) else 'no such file'}"]) from None
    except regular.NotRegularFile as exc:
        if exc.errno == errno.EISDIR:
            raise SpecError([f"{shown}: is a directory, not a spec file"]) from None
        raise SpecError([f"{shown}: {regular.problem(path) or exc.strerror}; a spec must be a regular file"]) from None
    except OSError as exc:
        raise SpecError([f"{shown}: cannot read: {exc.strerror}"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            [
                f"{shown}:{line}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                f"({exc.reason}); save the file as UTF-8"
            ]
        ) from None


def _not_a_spec(doc: yamlsource.Document) -> tuple[int, tuple, str] | None:
    """A mapping without apiVersion: pipeline/... is some other file: one problem, and nothing of it is quoted."""
    if "apiVersion" not in doc.data:
        return (
            doc.line_of(()),
            ("apiVersion",),
            "required field is missing; a spec starts with apiVersion: pipeline/v1, "
            "and nothing else is checked without it",
        )
    value = doc.data["apiVersion"]
    if isinstance(value, str) and value.startswith("pipeline/"):
        return None  # another version of this format: check it as one, so every problem is reported
    got = explain.got(value) if ("apiVersion",) not in doc.multiline else f"a {explain.kind(value)}"
    return (
        doc.line_of(("apiVersion",)),
        ("apiVersion",),
        f"must be pipeline/v1, got {got}; nothing else is checked in a file that is not a pipeline spec",
    )


def _huge(value: Any, at: tuple) -> Iterator[tuple[tuple, yamlsource.HugeInt]]:
    """Every integer too long to convert, wherever it is: the schema bounds fields, but this must never pass."""
    if isinstance(value, yamlsource.HugeInt):
        yield at, value
    elif isinstance(value, dict):
        for key, sub in value.items():
            yield from _huge(sub, at + (key,))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from _huge(sub, at + (i,))


def _schema_problems(doc: yamlsource.Document) -> list[tuple[int, tuple, str]]:
    from jsonschema import Draft202012Validator  # imported here: only loading needs it

    validator = Draft202012Validator(schema())
    out: list[tuple[int, tuple, str]] = []
    for error in validator.iter_errors(doc.data):
        out.extend(explain.explain(error, doc))
    return out


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
        environment=EnvironmentSpec(
            e["python"], tuple(e["channels"]), tuple(e["conda_packages"]), tuple(e["pip_packages"])
        ),
        scoring=ScoringSpec(s["features"], s["output"], rel(s.get("entry_script"))),
        test=TestSpec(
            (folder / t["images"]).resolve(),
            rel(t.get("labels")),
            t["format"],
            t.get("label_column"),
            float(t["scale"]),
            float(t["min_accuracy"]),
            t["sample_size"],
            t["seed"],
        ),
        deploy=DeploySpec(
            d["target"],
            d["cpu_cores"],
            d["memory_gb"],
            d["auth"],
            d["request_timeout_ms"],
            d["ready_timeout_s"],
            _freeze({k: v for k, v in d.items() if isinstance(v, dict)}),
        ),
        data=_freeze(data),
        state=StateSpec(st["backend"], st.get("url"), st["lease_seconds"]) if st is not None else None,
    )
