"""report.md: what a reviewer decides from, as a pull-request comment, from report.json alone.

First the verdict, then what changed (each spec field once, before and after), the stages and why each runs,
the evaluation before and after, the smoke test; the long parts (per-class tables, the confusion matrix,
rendered-file diffs) fold into <details>. The whole stays under GitHub's limit for a comment.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LIMIT = 65_536  # characters GitHub accepts in one comment (and in a job summary step, far more)
DIGEST = 12  # hex digits shown of a sha256


@dataclass
class Fold:
    """A <details> block whose body may be cut to fit the comment."""

    summary: str
    lines: list[str]
    fence: str | None = None  # the code fence's info string ("diff"), or None for Markdown (a table)
    head: int = 0  # lines always kept when cut (a table's header)

    def render(self, budget: int | None = None) -> str:
        body = list(self.lines)
        cut = 0
        if budget is not None:
            while len(body) > self.head and len(self._wrap(body, cut)) > budget:
                body.pop()
                cut += 1
        return self._wrap(body, cut)

    def _wrap(self, body: list[str], cut: int) -> str:
        inner = ([f"```{self.fence}"] + body + ["```"]) if self.fence is not None else body
        note = (
            [f"_… {cut:,} more line(s) cut to keep this comment under {LIMIT:,} characters; report.json has them._"]
            if cut
            else []
        )
        return "\n".join([f"<details><summary>{self.summary}</summary>", "", *inner, *note, "", "</details>"])

    @property
    def size(self) -> int:
        return len(self.render())


Block = str | Fold


def text(value: str) -> str:
    """Free text in Markdown: no HTML (a description cannot close a <details>), no table breaks."""
    return (
        str(value)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("\n", " ")
    )


def code(value: str) -> str:
    """An inline code span that holds any text, even backticks, and stays inside a table cell."""
    value = str(value).replace("\n", " ").replace("|", "\\|")
    if "`" in value:
        return f"`` {value} ``"
    return f"`{value}`"


def shown(value: Any, kind: str = "value") -> str:
    """A field's value in a table: digests shortened, strings as code, lists and numbers as JSON."""
    if value is None:
        return "_(none)_"
    if isinstance(value, str) and (kind == "content" or _is_digest(value)):
        return code(value[:DIGEST] + "…")
    if isinstance(value, str):
        return code(value)
    return code(json.dumps(value))


def _is_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _signed(value: float, digits: int = 4) -> str:
    """A change with its sign; no change is 0, not +0.0000."""
    return "0" if round(value, digits) == 0 else f"{value:+.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# -- sections ------------------------------------------------------------------------------------------


def _verdict(report: dict[str, Any]) -> list[str]:
    outcome = report.get("outcome") or {}
    failed = outcome.get("failed")
    parts = []
    if failed:
        parts.append(f"**Failed at `{failed['stage']}`**: {text(failed['detail'])}.")
    else:
        parts.append(f"**{text(outcome.get('summary') or 'Done')}.**")
    comparison, ev = report.get("comparison"), report.get("evaluation")
    if comparison and _unchanged(comparison):
        pass  # the evaluation section says it: the same scores as before
    elif comparison:
        acc = comparison["accuracy"]
        parts.append(f"Accuracy **{acc['before']:.4f} → {acc['after']:.4f}** ({_signed(acc['change'])}).")
    elif ev and report.get("evaluated"):
        parts.append(f"Accuracy **{ev['accuracy']:.4f}**.")
    elif ev:
        parts.append("The model and its evaluation are unchanged.")
    smoke = report.get("smoke")
    if smoke and report.get("smoked"):
        agreed = len(smoke["indices"]) - sum(a != b for a, b in zip(smoke["answers"], smoke["local"]))
        parts.append(
            f"Smoke test {'passed' if smoke['agree'] else 'FAILED'}: {agreed} of {len(smoke['indices'])} "
            f"answers agree with the local model."
        )
    return [" ".join(parts), ""]


def _changes(report: dict[str, Any]) -> list[Block]:
    changes = report.get("changes") or []
    created = report.get("created") or []
    out: list[Block] = []
    if changes:
        lines = ["### What changed", "", "| field | before | after |", "|---|---|---|"]
        for c in changes:
            if c["kind"] == "rendered":
                lines.append(f"| {code(c['field'])} (rendered; no spec field changed: its template did) | | |")
            else:
                name = code(c["field"]) + (" (file content)" if c["kind"] == "content" else "")
                lines.append(f"| {name} | {shown(c['before'], c['kind'])} | {shown(c['after'], c['kind'])} |")
        out += ["\n".join(lines), ""]
    if created:
        rows = ["| field | value |", "|---|---|"] + [f"| {code(f['path'])} | {shown(f['value'])} |" for f in created]
        out += [Fold(f"The new service: {len(created)} setting(s)", rows, head=2), ""]
    return out


def _stages(report: dict[str, Any]) -> list[Block]:
    rows = [s for s in report.get("stages") or [] if s["stage"] != "report"]
    if not rows:
        return []
    lines = ["### Stages", "", "| stage | plan | why | result | seconds |", "|---|---|---|---|---|"]
    for s in rows:
        why = ", ".join(code(f) for f in s.get("fields") or [])
        note = text(s.get("note") or "")
        why = "; ".join(p for p in (why, note) if p)
        seconds = f"{s['seconds']:.2f}" if s.get("status") in ("ran", "failed") else ""
        lines.append(f"| {s['stage']} | {text(s.get('plan') or '')} | {why} | {s.get('status') or ''} | {seconds} |")
    return ["\n".join(lines), ""]


def _matrix(ev: dict[str, Any]) -> list[str]:
    labels = ev["labels"]
    lines = ["| true \\ predicted | " + " | ".join(str(v) for v in labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [
        f"| **{label}** | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(labels, ev["confusion"])
    ]
    return lines


def _unchanged(cmp: dict[str, Any]) -> bool:
    """The same scores as before (a new gate, the same model evaluated again): nothing to compare."""
    return not cmp["cells_changed"] and cmp["accuracy"]["change"] == 0 and cmp["n"]["before"] == cmp["n"]["after"]


def _evaluation(report: dict[str, Any]) -> list[Block]:
    ev, cmp = report.get("evaluation"), report.get("comparison")
    if not ev:
        return []
    if cmp and _unchanged(cmp):
        cmp, report = (
            None,
            {**report, "evaluation": {**ev, "note": "the same scores as the last successful evaluation."}},
        )
    gate = ev.get("min_accuracy", 0)
    passed = ev["accuracy"] >= gate
    out: list[Block] = ["### Evaluation" + ("" if report.get("evaluated") else " (the last successful one)"), ""]
    if cmp:
        acc, correct, n, gates = cmp["accuracy"], cmp["correct"], cmp["n"], cmp["min_accuracy"]
        lines = [
            "| | before | after | change |",
            "|---|---|---|---|",
            f"| accuracy | {acc['before']:.4f} | **{acc['after']:.4f}** | {_signed(acc['change'])} |",
            f"| correct | {correct['before']:,} of {n['before']:,} | {correct['after']:,} of {n['after']:,} | "
            f"{_signed(correct['change'], 0)} |",
        ]
        if gates["before"] != gates["after"]:
            lines.append(f"| gate `test.min_accuracy` | {gates['before']:g} | {gates['after']:g} | |")
        same = f" of the same model, {shown(ev.get('model_sha256'))}" if cmp["same_model"] else ""
        out += [
            "\n".join(lines),
            "",
            f"Before: the last successful evaluation; after: this run's{same}. Gate {gate:g}: "
            f"**{'passed' if passed else 'failed'}**.",
            "",
        ]
        if cmp["moved"]:
            moved = [
                f"Errors that moved most (the confusion matrix's off-diagonal cells; {cmp['cells_changed']} changed):",
                "",
                "| true label | predicted as | before | after | change |",
                "|---|---|---|---|---|",
            ]
            moved += [
                f"| {c['true']} | {c['predicted']} | {c['before']} | {c['after']} | {_signed(c['change'], 0)} |"
                for c in cmp["moved"]
            ]
            out += ["\n".join(moved), ""]
        else:
            out += ["No cell of the confusion matrix moved.", ""]
        rows = [
            "| class | precision before | after | change | recall before | after | change |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in cmp["per_class"]:
            p, r = c["precision"], c["recall"]
            rows.append(
                f"| {c['label']} | {_pct(p['before'])} | {_pct(p['after'])} | "
                f"{'' if p['change'] is None else _signed(p['change'], 3)} | {_pct(r['before'])} | "
                f"{_pct(r['after'])} | {'' if r['change'] is None else _signed(r['change'], 3)} |"
            )
        out += [Fold("Precision and recall per class, before and after", rows, head=2), ""]
    else:
        note = report["evaluation"].get("note")
        out += [
            f"Accuracy **{ev['accuracy']:.4f}** on {ev['n']:,} test images; gate {gate:g}: "
            f"**{'passed' if passed else 'failed'}**" + (f"; {note}" if note else "."),
            "",
        ]
        rows = ["| class | precision | recall | F1 |", "|---|---|---|---|"]
        rows += [
            f"| {label} | {p:.3f} | {r:.3f} | {f:.3f} |"
            for label, p, r, f in zip(ev["labels"], ev["precision"], ev["recall"], ev["f1"])
        ]
        out += [Fold("Precision, recall and F1 per class", rows, head=2), ""]
    out += [Fold("Confusion matrix (rows: true label, columns: predicted)", _matrix(ev), head=2), ""]
    return out


def _smoke(report: dict[str, Any]) -> list[Block]:
    smoke = report.get("smoke")
    if not smoke or not report.get("smoked"):
        return []
    lat = smoke["latency_ms"]
    acc = f"; sample accuracy {smoke['sample_accuracy']:.2f}" if smoke.get("sample_accuracy") is not None else ""
    verdict = "all answers agree with the local model" if smoke["agree"] else "**answers differ** from the local model"
    line = (
        f"{len(smoke['indices'])} seeded random test images sent to {text(smoke['uri'])}: {verdict}{acc}. "
        f"Latency of a {len(smoke['indices'])}-image request: p50 {lat['p50']:.1f} ms (min {lat['min']:.1f}, "
        f"max {lat['max']:.1f}); {smoke['bytes_sent']:,} bytes."
    )
    return ["### Smoke test", "", line, ""]


def _plots(report: dict[str, Any]) -> list[Block]:
    plots = report.get("plots") or {}
    what = {
        "confusion": "the tutorial's normalized error plot",
        "samples": "the sampled test images, misclassified ones in red",
    }
    named = [f"[{name}]({name}) ({what.get(key, key)})" for key, name in plots.items()]
    return [f"Plots beside this report (in CI: the workflow run's artifacts): {', '.join(named)}.", ""] if named else []


def _files(report: dict[str, Any]) -> list[Block]:
    out: list[Block] = []
    for step in (report.get("plan") or {}).get("steps", []):
        deploy = step.get("deploy")
        if not deploy or step["action"] != "run" or deploy["action"] in ("create", "adopt"):
            continue
        for name, diff in deploy["files"].items():
            out += [
                Fold(
                    f"{text(name)}: the rendered file against the deployed one",
                    diff.rstrip("\n").splitlines(),
                    fence="diff",
                ),
                "",
            ]
    return out


def _footer(report: dict[str, Any]) -> list[Block]:
    versions = report.get("versions") or {}
    lines: list[Block] = []
    if versions.get("packages"):
        pkgs = ", ".join(f"{k} {v}" for k, v in sorted(versions["packages"].items()))
        lines += [f"Versions: Python {versions.get('python')}, {pkgs}.", ""]
    service = report.get("service")
    if service:
        lines += [
            f"Service: {text(service.get('scoring_uri') or '')} on target `{service.get('target')}`, model "
            f"{code(str(service.get('model')))} (sha256 {shown(service.get('model_sha256'))}).",
            "",
        ]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report["generated_at"]))
    lines.append(f"<sub>pipeline {report.get('pipeline', '')}, {when}</sub>")
    return lines


def markdown(report: dict[str, Any], *, limit: int = LIMIT) -> str:
    """The report as Markdown, at most `limit` characters: the folded parts are cut first, with a note."""
    header = [f"## Deployment report: {code(report['spec'])}", ""]
    about = [text(report["description"]) + " · " if report.get("description") else ""]
    about[0] += f"spec {code(report.get('spec_file') or '')} · target {code(report.get('target') or '')}"
    blocks: list[Block] = [
        *header,
        *about,
        "",
        *_verdict(report),
        *_changes(report),
        *_stages(report),
        *_evaluation(report),
        *_smoke(report),
        *_plots(report),
        *_files(report),
        *_footer(report),
    ]
    return fit(blocks, limit)


def fit(blocks: Sequence[Block], limit: int) -> str:
    """Join the blocks; when too long, cut the folds (the largest last to be kept), then the text itself."""
    full = "\n".join(b if isinstance(b, str) else b.render() for b in blocks) + "\n"
    if len(full) <= limit:
        return full
    note = (
        f"\n_This report was cut to stay under GitHub's {LIMIT:,}-character limit for a comment; "
        f"report.json beside it has everything._\n"
    )
    fixed = sum(len(b) + 1 for b in blocks if isinstance(b, str)) + len(note)
    folds = sorted((b for b in blocks if isinstance(b, Fold)), key=lambda f: f.size)
    budget = limit - fixed - sum(1 for b in blocks if isinstance(b, Fold))
    shares: dict[int, int] = {}
    for i, fold in enumerate(folds):  # the smallest first get what they need; the rest share what is left
        share = max(0, budget // (len(folds) - i))
        shares[id(fold)] = min(fold.size, share)
        budget -= shares[id(fold)]
    parts = []
    for b in blocks:
        if isinstance(b, str):
            parts.append(b)
        elif shares[id(b)] > len(b.render(0)):
            parts.append(b.render(shares[id(b)]))
    out = "\n".join(parts).rstrip("\n") + "\n" + note
    if len(out) > limit:  # the fixed parts alone are too long (a spec with huge values): a hard cut
        out = out[: limit - len(note) - 1].rsplit("\n", 1)[0] + "\n" + note
    return out
