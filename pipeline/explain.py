"""Problems in the user's words: jsonschema errors explained, one line each, sorted, capped, never quoting the file."""

from __future__ import annotations

import datetime
import json
from typing import Any

from pipeline import yamlsource

MAX_MESSAGES = 20  # per file: a file that is not a spec at all must not flood a CI log with its own lines
Problem = tuple[int, tuple, str]  # (line, field path, message)


def format_problems(shown: str, problems: list[Problem]) -> list[str]:
    """Sorted `file:line: field.path: message` lines, duplicates removed, each one line; at most MAX_MESSAGES."""
    lines = sorted({(line, _dotted(p), msg) for line, p, msg in problems})
    out = [
        _one_line(f"{shown}:{line}: {dotted}: {msg}" if dotted else f"{shown}:{line}: {msg}")
        for line, dotted, msg in lines
    ]
    if len(out) > MAX_MESSAGES:
        out = out[:MAX_MESSAGES] + [_one_line(f"{shown}: ... and {len(out) - MAX_MESSAGES:,} more problems")]
    return out


def _one_line(text: str) -> str:
    # A key or value may hold a newline or a terminal escape: shown escaped, so one message is one line.
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def syntax_hint(text: str, line: int, message: str) -> str:
    # PyYAML's words name the parser's state, not the usual cause; add the cause for the two commonest.
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in source[: len(source) - len(source.lstrip())]:
        return " (a tab in the indentation: YAML indents with spaces only)"
    if "mapping values are not allowed" in message:
        return " (a value containing ': ' must be quoted)"
    return ""


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        part = part if not isinstance(part, str) or len(part) <= 60 else part[:56] + "…"  # a key is a name, not a text
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def explain(error: Any, doc: yamlsource.Document) -> list[Problem]:
    """Turn one jsonschema error into user-facing (line, path, message) triples."""
    path = tuple(error.absolute_path)
    rule = error.validator
    sub = error.schema if isinstance(error.schema, dict) else {}
    if rule == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(sub.get("properties", {}))
        extra = [k for k in error.instance if k not in sub.get("properties", {})]
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return [(doc.line_of(path + (k,)), path + (k,), f"unknown key{hint}") for k in extra]
    if rule == "required":
        missing = error.message.split("'")[1] if "'" in error.message else str(error.message)
        return [(doc.line_of(path), path + (missing,), "required field is missing")]
    line = doc.line_of(path)
    # A value is quoted only when it sits on the one line the message points at.
    one_line = path not in doc.multiline
    shown = _show(error.instance) if one_line else "the value"
    found = got(error.instance, one_line)
    if rule == "oneOf" and path[-1:] == ("source",):
        # Explain the branch the user evidently meant: a path (string) or a registry mapping.
        branch = 0 if isinstance(error.instance, str) else 1 if isinstance(error.instance, dict) else None
        meant = [e for e in error.context if e.relative_schema_path[0] == branch]
        if meant:
            return [problem for e in meant for problem in explain(e, doc)]
        return [(line, path, f"expected a file path or a mapping {{registry: azureml, file: ...}}, got {found}")]
    if "errorMessage" in sub and rule in ("pattern", "type", "minLength"):
        if rule == "pattern":
            return [(line, path, f"{shown} {sub['errorMessage']}")]
        if rule != "type":
            return [(line, path, sub["errorMessage"])]
        hint = "" if "quote" in sub["errorMessage"] else _quote_hint(error)
        return [(line, path, f"{sub['errorMessage']}, got {found}{hint}")]
    if rule == "type":
        expected = error.validator_value
        names = [_TYPE_NAMES.get(t, str(t)) for t in (expected if isinstance(expected, list) else [expected])]
        article = "an" if names[0][0] in "aeiou" else "a"
        return [(line, path, f"expected {article} {' or '.join(names)}, got {found}{_quote_hint(error)}")]
    if rule in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[rule]
        return [(line, path, f"must be {op} {error.validator_value}, got {shown}")]
    if rule == "const":
        return [(line, path, f"must be {error.validator_value}, got {shown}")]
    if rule == "enum":
        options = ", ".join(repr(v) for v in error.validator_value)
        return [(line, path, f"{shown} is not one of [{options}]")]
    if rule in ("maxProperties", "minProperties", "maxItems", "minItems"):
        what = "entries" if rule.endswith("Properties") else "items"
        bound = "at most" if rule.startswith("max") else "at least"
        return [(line, path, f"{bound} {error.validator_value} {what} allowed, got {len(error.instance)}")]
    if rule in ("minLength", "maxLength"):
        limit = error.validator_value
        message = (
            "must not be empty"
            if rule == "minLength" and limit == 1
            else f"length must be {'>=' if rule == 'minLength' else '<='} {limit}, got {len(error.instance)}"
        )
        if "propertyNames" in error.schema_path:  # the error is about a key of this mapping, not its value
            key = _show(error.instance)
            message = "keys must not be empty" if error.instance == "" else f"key {key}: {message}"
        return [(line, path, message)]
    # jsonschema's own words quote the whole instance, which may be most of the file: name the rule instead
    return [(line, path, f"does not satisfy the schema's {rule!r} rule")]


# JSON Schema's type names in the words of YAML, which is what the user wrote.
_TYPE_NAMES = {"object": "mapping", "array": "list"}


def _quote_hint(error: Any) -> str:
    # YAML reads unquoted yes/no/true, 1.10, dates and all-digit hashes as booleans, numbers and dates.
    wanted_string = error.validator_value == "string"
    unquoted = (bool, int, float, datetime.date)
    return "; quote it to make it a string" if wanted_string and isinstance(error.instance, unquoted) else ""


def got(value: Any, one_line: bool = True) -> str:
    if value is None:
        return "null (an empty value)"
    if isinstance(value, yamlsource.HugeInt):
        return str(value)
    if one_line:
        return f"{kind(value)} {_show(value)}"
    if isinstance(value, (dict, list)):
        count = f"{len(value):,} {'entries' if isinstance(value, dict) else 'items'}"
        return f"a {kind(value)} of {count}"
    return f"a {kind(value)} written over several lines"


def kind(value: Any) -> str:
    kinds = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
        type(None): "null",
        datetime.date: "date",
        datetime.datetime: "timestamp",
        bytes: "binary value",
    }
    return kinds.get(type(value), "integer" if isinstance(value, int) else type(value).__name__)


def _show(value: Any) -> str:
    # YAML's spelling for true/false/null and collections; repr() for strings and numbers.
    if isinstance(value, yamlsource.HugeInt):
        return str(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    text = (
        repr(value) if not isinstance(value, (dict, list, bool)) else json.dumps(value, default=str, ensure_ascii=False)
    )
    if len(text) <= 60:
        return text
    return text[:56] + "…" + (text[-1] if text[-1] in "'\"]}" else "")  # keep the closing quote or bracket
