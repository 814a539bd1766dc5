"""Render score.py, myenv.yml and target configs from jinja2 templates: to strings first, files later."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import RenderError
from pipeline.files import atomic_write
from pipeline.spec import Spec


class Escaped(str):
    """A string that went through an escaping filter and may be printed into a template."""


def builtin_templates() -> Path:
    """The shipped templates: package data when installed, the repository's templates/ in a checkout."""
    installed = Path(__file__).parent / "templates"
    return installed if installed.is_dir() else Path(__file__).parent.parent / "templates"


_SURROGATE_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _py(value: Any) -> Escaped:
    """A Python literal for `value`: repr() of plain data is always one safe expression."""
    return Escaped(repr(_plain(value)))


def _yaml(value: Any) -> Escaped:
    """A YAML flow value: JSON (ASCII-escaped) is valid YAML, so quotes, '#', ': ' and newlines stay inside it.

    JSON writes a character above U+FFFF as a surrogate pair, which YAML does not join: use YAML's \\U escape.
    """
    text = json.dumps(_plain(value), ensure_ascii=True, sort_keys=True)
    return Escaped(
        _SURROGATE_PAIR.sub(
            lambda m: "\\U%08x" % (0x10000 + ((int(m[1], 16) - 0xD800) << 10) + int(m[2], 16) - 0xDC00), text
        )
    )


def _json(value: Any) -> Escaped:
    """A JSON value (ASCII-escaped), for templates of JSON files."""
    return Escaped(json.dumps(_plain(value), ensure_ascii=True, sort_keys=True))


def _plain(value: Any) -> Any:
    from jinja2 import Undefined

    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # StrictUndefined: raises UndefinedError naming the variable
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _finalize(value: Any) -> Any:
    # Every printed string must have been escaped: a raw spec string in Python, YAML or JSON is an injection.
    if isinstance(value, str) and not isinstance(value, Escaped):
        raise RenderError(f"template printed the raw string {value[:40]!r}; pass it through |py, |yaml or |json")
    return value


def environment(override: Path | None = None, target_templates: Path | None = None) -> Any:
    """The one jinja2 environment: sandboxed, strict about undefined names, trailing newline kept.

    Templates are looked up in the spec's own folder first, then the shipped ones, then a target's own
    folder (for a target that ships outside this package).
    """
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    search = [str(override)] if override else []
    search.append(str(builtin_templates()))
    if target_templates is not None:
        search.append(str(target_templates))
    env = SandboxedEnvironment(
        loader=FileSystemLoader(search),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_finalize,
    )
    env.filters["py"] = _py
    env.filters["yaml"] = _yaml
    env.filters["json"] = _json
    env.globals["contract"] = contract_source()
    return env


def contract_source() -> Escaped:
    """The input rules of pipeline/contract.py, as code for score.py: our own source, not a spec value.

    Read as text, not imported: importing it would import numpy (and start its threads) in every render.
    """
    text = (Path(__file__).parent / "contract.py").read_text(encoding="utf-8")
    return Escaped(text.split("# --- contract ---\n", 1)[1])


def context(spec: Spec) -> dict[str, Any]:
    """The values templates see; plain data only, never the raw YAML."""
    return {
        "name": spec.name,
        "description": spec.description,
        "tags": dict(spec.tags),
        "model": {
            "name": spec.model.name,
            "version": spec.model.version,
            "file": spec.model.file_name,
            "format": spec.model.format,
            "sha256": spec.model.sha256,
            "trusted_types": list(spec.model.trusted_types),
        },
        "environment": {
            "name": f"{spec.name}-env",
            "python": spec.environment.python,
            "channels": list(spec.environment.channels),
            "conda_packages": list(spec.environment.conda_packages),
            "pip_packages": list(spec.environment.pip_packages),
        },
        "scoring": {"features": spec.scoring.features, "output": spec.scoring.output},
        "deploy": {
            "target": spec.deploy.target,
            "cpu_cores": spec.deploy.cpu_cores,
            "memory_gb": spec.deploy.memory_gb,
            "auth": spec.deploy.auth,
            "request_timeout_ms": spec.deploy.request_timeout_ms,
        },
    }


def render_template(env: Any, name: str, values: Mapping[str, Any]) -> str:
    from jinja2 import TemplateError

    try:
        return env.get_template(name).render(**values)
    except RenderError as exc:
        raise RenderError(f"template {name}: {exc}") from None
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)  # TemplateSyntaxError and a few others know where
        where = f" line {line}" if line else ""
        raise RenderError(f"template {name}{where}: {exc.message or exc}") from None


def render_all(spec: Spec) -> dict[str, str]:
    """score.py, myenv.yml and the target's own configs as {file name: text}; deterministic, nothing written."""
    from pipeline import targets

    target = targets.get(spec.deploy.target)
    env = environment(spec.templates, target.template_dir)
    files = render(spec, extra_pip=target.extra_pip_packages(spec), env=env)
    for name, text in target.render(spec, env, context(spec)).items():
        if name in files:
            raise RenderError(f"target {spec.deploy.target!r} renders {name}, which is already rendered")
        files[name] = text
    return dict(sorted(files.items()))


def render(spec: Spec, extra_pip: list[str] | tuple[str, ...] = (), env: Any = None) -> dict[str, str]:
    """score.py and myenv.yml of a spec as {file name: text}; deterministic, nothing written."""
    env = env or environment(spec.templates)
    values = context(spec)
    pip = values["environment"]["pip_packages"]
    pip.extend(p for p in extra_pip if p not in pip)
    files: dict[str, str] = {}
    if spec.scoring.entry_script is not None:
        try:
            files["score.py"] = spec.scoring.entry_script.read_text(encoding="utf-8")
        except OSError as exc:
            raise RenderError(f"scoring.entry_script {spec.scoring.entry_script}: {exc.strerror}") from None
    else:
        files["score.py"] = render_template(env, "score.py.j2", values)
    files["myenv.yml"] = render_template(env, "myenv.yml.j2", values)
    check_python(files["score.py"], "score.py")
    check_yaml(files["myenv.yml"], "myenv.yml")
    return files


def check_python(text: str, name: str) -> None:
    """Reject a rendered Python file that does not parse or lacks init() and run()."""
    try:
        tree = ast.parse(text, filename=name)
    except SyntaxError as exc:
        raise RenderError(f"rendered {name} is not valid Python: line {exc.lineno}: {exc.msg}") from None
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    missing = [f for f in ("init", "run") if f not in functions]
    if missing:
        raise RenderError(f"{name} must define {' and '.join(f + '()' for f in missing)} (Azure's scoring contract)")


def check_yaml(text: str, name: str) -> Any:
    """Reject a rendered YAML file that does not parse."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RenderError(f"rendered {name} is not valid YAML: {exc}") from None


def write_files(folder: Path, files: Mapping[str, str]) -> list[Path]:
    """Write each file atomically (temp file, fsync, rename) so a reader never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(files.items()):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, text.encode("utf-8"))
        written.append(target)
    return written
