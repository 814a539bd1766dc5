"""YAML with line numbers: parse to plain data plus a map from field path to source line."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

try:  # the C composer is several times faster; fall back when libyaml is missing
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader

Path_ = tuple  # a field path: ('deploy', 'cpu_cores') or ('tags', 'data') or ('channels', 0)


@dataclass
class Document:
    """Parsed YAML: the data, the line of every field path (1-based), and structural problems."""

    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    problems: list[tuple[int, Path_, str]] = field(default_factory=list)

    def line_of(self, path: Path_) -> int:
        """The line of `path`, or of its nearest ancestor that exists in the file."""
        path = tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)


class YamlSyntaxError(Exception):
    """A YAML syntax error with its 1-based line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def parse(text: str) -> Document:
    """Parse one YAML document, keeping lines and reporting duplicate keys instead of dropping them."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        started = exc.context_mark.line + 1 if exc.context_mark is not None else line
        if exc.context and "flow" in exc.context and started != line:
            kind = "mapping {" if "mapping" in exc.context else "list ["
            problem += f" (in the {kind} opened on line {started} and never closed)"
        raise YamlSyntaxError(line, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, f"YAML syntax error: {exc}") from None
    doc = Document(data=None)
    if node is None:
        return doc
    constructor = yaml.SafeLoader("")  # resolves scalars: 1 is int, "1" is str, true is bool
    try:
        doc.data = _build(node, (), doc, constructor)
    finally:
        constructor.dispose()
    return doc


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap")


def _build(node: yaml.Node, path: Path_, doc: Document, constructor: yaml.SafeLoader) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        doc.problems.append((node.start_mark.line + 1, path, f"YAML tag {node.tag!r} is not allowed in specs"))
        return None
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                doc.problems.append((key_node.start_mark.line + 1, path, "YAML merge keys ('<<') are not supported in specs"))
                continue
            key = _scalar(key_node, constructor) if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) or key is None:
                doc.problems.append((line, path, "mapping keys must be plain strings"))
                continue
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                doc.problems.append((line, path + (key,), f"duplicate key (first defined on line {first_line[key]}); YAML would silently keep only the last one"))
                continue
            first_line[key] = line
            doc.lines[path + (key,)] = line
            out[key] = _build(value_node, path + (key,), doc, constructor)
            doc.lines[path + (key,)] = line  # the key's line, not the value's, for nested mappings
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, constructor) for i, item in enumerate(node.value)]
    return _scalar(node, constructor)


def _scalar(node: yaml.Node, constructor: yaml.SafeLoader) -> Any:
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise YamlSyntaxError(node.start_mark.line + 1, f"YAML error: {exc.problem}") from None
