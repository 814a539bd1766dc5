"""A Plan as people read it: the field lines and summary the CLI prints, and Markdown and HTML for Jupyter."""

from __future__ import annotations

from html import escape
from typing import Any

from pipeline.records import Plan, StepAction


def show(value: Any) -> str:
    """A field value in a diff line: strings quoted, booleans as YAML writes them, None as (none)."""
    if value is None:
        return "(none)"
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def field_line(path: str, old: Any, new: Any) -> tuple[str, str]:
    """One changed field as `+ path: new`, `- path: old` or `~ path: old -> new`, with its colour."""
    if old is None:
        return f"+ {path}: {show(new)}", "green"
    if new is None:
        return f"- {path}: {show(old)}", "red"
    return f"~ {path}: {show(old)} -> {show(new)}", "yellow"


def summary(plan: Plan) -> str:
    """The plan's last line: how many stages run, or that nothing changes."""
    running = sum(s.action is StepAction.RUN and not s.rebuild for s in plan.steps)
    skipped = sum(s.action is StepAction.SKIP for s in plan.steps)
    rebuilt = [s.stage for s in plan.steps if s.rebuild]
    local = f" {', '.join(rebuilt)} will make their local files again (missing here)." if rebuilt else ""
    return (
        f"Plan: {running} stage(s) to run, {skipped} unchanged.{local}"
        if running
        else f"No changes: the service matches the spec.{local}"
    )


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(plan: Plan) -> str:
    lines = [f"**plan for `{plan.spec_name}`**", "", "| stage | action | why |", "|---|---|---|"]
    lines += [f"| {s.stage} | {s.label} | {_cell(s.reason)} |" for s in plan.steps]
    for s in plan.steps:
        if s.change is None or s.action is StepAction.NOT_SELECTED:
            continue
        if s.change.fields:
            lines += ["", f"{s.stage} ({s.label}):", "", "```diff"]
            lines += [field_line(*f)[0] for f in s.change.fields]
            lines.append("```")
        for name, diff in s.change.files:
            lines += [
                "",
                f"<details><summary>{escape(name)}</summary>",
                "",
                "```diff",
                diff.rstrip("\n"),
                "```",
                "",
                "</details>",
            ]
    lines += ["", summary(plan)]
    return "\n".join(lines) + "\n"


def html_table(plan: Plan) -> str:
    rows = "".join(
        f"<tr><td>{escape(s.stage)}</td><td>{escape(s.label)}</td><td>{escape(s.reason)}</td></tr>" for s in plan.steps
    )
    return f"<table><thead><tr><th>stage</th><th>action</th><th>why</th></tr></thead><tbody>{rows}</tbody></table>"


def html(plan: Plan) -> str:
    parts = [f"<p><b>plan for <code>{escape(plan.spec_name)}</code></b></p>", html_table(plan)]
    for s in plan.steps:
        if s.change is None or s.action is StepAction.NOT_SELECTED:
            continue
        if s.change.fields:
            body = "\n".join(escape(field_line(*f)[0]) for f in s.change.fields)
            parts.append(f"<p>{escape(s.stage)} ({escape(s.label)}):</p><pre>{body}</pre>")
        for name, diff in s.change.files:
            parts.append(f"<details><summary>{escape(name)}</summary><pre>{escape(diff)}</pre></details>")
    parts.append(f"<p>{escape(summary(plan))}</p>")
    return "\n".join(parts)
