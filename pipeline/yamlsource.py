"""YAML with line numbers: parse to plain data plus a map from field path to source line, within fixed bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

try:  # the C composer is several times faster; fall back when libyaml is missing
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader

Path_ = tuple  # a field path: ('deploy', 'cpu_cores') or ('tags', 'data') or ('channels', 0)

# Bounds that keep a hostile file from costing more than its size: a "billion laughs" needs aliases that
# add 10**9 values, a spec's own fields nest 4 deep, and no field of a spec holds a 100-digit number.
MAX_ALIAS_VALUES = 1000  # values that aliases may add to a document, in all
MAX_VALUES = 10_000  # values in a document, aliases expanded: a spec holds a few hundred
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_INT_LITERAL = 100  # characters of an integer literal that are turned into an int

_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class HugeInt(int):
    """An integer literal too long to convert (a 5,000-digit number): a stand-in above any bound, shown by its size.

    Converting it would cost time quadratic in its length and raise ValueError past Python's 4,300-digit
    limit; the stand-in lets the schema report it as the out-of-range integer it is.
    """

    digits: int

    def __new__(cls, literal: str) -> HugeInt:
        text = literal.strip().replace("_", "")
        self = super().__new__(cls, -(10**MAX_INT_LITERAL) if text.startswith("-") else 10**MAX_INT_LITERAL)
        digits = text.lstrip("+-")
        self.digits = len(digits[2:] if digits[:2].lower() in ("0x", "0o", "0b") else digits)
        return self

    def __repr__(self) -> str:
        return f"{'a negative' if self < 0 else 'an'} integer of {self.digits:,} digits"

    __str__ = __repr__


@dataclass
class Document:
    """Parsed YAML: the data, the line of every field path (1-based), and structural problems."""

    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    problems: list[tuple[int, Path_, str]] = field(default_factory=list)
    multiline: set[Path_] = field(default_factory=set)  # values written over several lines: never quoted

    def line_of(self, path: Path_) -> int:
        """The line of `path`, or of its nearest ancestor that exists in the file."""
        path = tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)


class YamlSyntaxError(Exception):
    """A YAML syntax error with its 1-based line."""

    def __init__(self, line: int, message: str, path: Path_ = ()) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.path = path  # the field it is about, when known


def parse(text: str) -> Document:
    """Parse one YAML document, keeping lines and reporting duplicate keys instead of dropping them."""
    try:
        _prescan(text)
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
    except RecursionError:  # pragma: no cover - the pure-Python composer, without libyaml's own depth limit
        raise YamlSyntaxError(1, f"YAML nested more than {MAX_DEPTH} levels deep") from None
    doc = Document(data=None)
    if node is None:
        return doc
    constructor = yaml.SafeLoader("")  # resolves scalars: 1 is int, "1" is str, true is bool
    try:
        doc.data = _build(node, (), doc, constructor)
    finally:
        constructor.dispose()
    return doc


@dataclass
class _Open:
    """A mapping or list being read by the prescan."""

    path: Path_
    line: int
    anchor: str | None
    mapping: bool
    children: int = 0  # events inside it (a mapping's keys and values both count)
    values: int = 1  # the values it stands for, itself included, as an anchor
    key: Any = None  # a mapping's last key, and its line
    key_line: int = 0


def _prescan(text: str) -> None:
    """Refuse, before anything is built, a recursive alias, aliases that add more than MAX_ALIAS_VALUES values,
    and a document of more than MAX_VALUES values, each at its line.

    Composing keeps an alias as a second reference to one node, so the node graph stays as small as the file;
    it is building plain data from it that multiplies. And resolving and validating cost per value, so a
    1 MiB file of 200,000 tiny values would take seconds: the event stream counts them for a tenth of that.
    """
    stack = [_Open((), 1, None, False)]
    sizes: dict[str, int] = {}  # anchor -> the values it stands for
    added = total = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1
        top = stack[-1]
        is_key = False
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
            is_key = top.mapping and top.children % 2 == 0
            top.children += 1
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in (o.anchor for o in stack):
                raise YamlSyntaxError(
                    line, f"YAML alias *{event.anchor} is inside its own anchor &{event.anchor} (a recursive alias)"
                )
            size = sizes.get(event.anchor or "")
            if size is None:
                continue  # an undefined alias: composing reports it
            added += size
            if added > MAX_ALIAS_VALUES:
                raise YamlSyntaxError(
                    line,
                    f"YAML aliases expand to more than {MAX_ALIAS_VALUES:,} values "
                    f"(at *{event.anchor}); write the values out",
                )
            top.values += size
            total += size
        elif isinstance(event, yaml.ScalarEvent):
            if is_key:
                top.key, top.key_line = event.value, line
            top.values += 1
            total += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(stack) == 1:  # the document itself
                path, where = (), line
            elif top.mapping:  # a key's value (or, rarely, a collection as a key)
                path, where = top.path + (top.key if not is_key else "?",), top.key_line if not is_key else line
            else:
                path, where = top.path + (top.children - 1,), line
            stack.append(_Open(path, where, event.anchor, isinstance(event, yaml.MappingStartEvent)))
            total += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            stack[-1].values += done.values
            if done.anchor:
                sizes[done.anchor] = done.values
        if total > MAX_VALUES:
            flood = max(stack[1:] or stack, key=lambda o: o.children)  # the collection that holds most of them
            raise YamlSyntaxError(
                flood.line,
                f"more than {MAX_VALUES:,} values, far more than a spec holds; nothing else was checked",
                flood.path,
            )


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap")


def _build(node: yaml.Node, path: Path_, doc: Document, constructor: yaml.SafeLoader) -> Any:
    line = node.start_mark.line + 1
    doc.lines.setdefault(path, line)
    if _spans_lines(node):
        doc.multiline.add(path)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if node.tag not in _PLAIN_TAGS:
            doc.problems.append((line, path, f"YAML tag {node.tag!r} is not allowed in specs"))
            return None
        if len(path) >= MAX_DEPTH:  # libyaml stops at 1,000 levels; building and validating recurse per level
            raise YamlSyntaxError(line, f"YAML nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                doc.problems.append(
                    (key_node.start_mark.line + 1, path, "YAML merge keys ('<<') are not supported in specs")
                )
                continue
            key = _scalar(key_node, path, doc, constructor) if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) or key is None:
                doc.problems.append((line, path, "mapping keys must be plain strings"))
                continue
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                doc.problems.append(
                    (
                        line,
                        path + (key,),
                        f"duplicate key (first defined on line {first_line[key]}); "
                        "YAML would silently keep only the last one",
                    )
                )
                continue
            first_line[key] = line
            doc.lines[path + (key,)] = line
            out[key] = _build(value_node, path + (key,), doc, constructor)
            doc.lines[path + (key,)] = line  # the key's line, not the value's, for nested mappings
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, constructor) for i, item in enumerate(node.value)]
    return _scalar(node, path, doc, constructor)


def _spans_lines(node: yaml.Node) -> bool:
    # A block collection ends where the next token starts, so its end mark says nothing: count it as several lines.
    if isinstance(node, yaml.ScalarNode) or node.flow_style:
        return bool(node.end_mark.line > node.start_mark.line)
    return True


def _scalar(node: yaml.Node, path: Path_, doc: Document, constructor: yaml.SafeLoader) -> Any:
    line = node.start_mark.line + 1
    if node.tag == _INT_TAG and len(node.value) > MAX_INT_LITERAL:
        return HugeInt(node.value)
    try:
        value = constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise YamlSyntaxError(line, f"YAML error: {exc.problem}") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date that does not exist: 2024-13-45
        kind = node.tag.rsplit(":", 1)[-1]
        raise YamlSyntaxError(
            line, f"YAML error: cannot read this {kind}: {exc}; quote it to make it a string"
        ) from None
    if node.tag == _FLOAT_TAG and isinstance(value, float) and not math.isfinite(value):
        doc.problems.append((line, path, f"expected a finite number, got {node.value[:20]}"))
    return value
