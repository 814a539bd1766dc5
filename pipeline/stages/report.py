"""Stage report: report.json for machines and report.md for a pull-request comment, plots beside them."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import state as states
from pipeline.files import atomic_write
from pipeline.stages import STAGES, Outcome, Output, Stage
from pipeline.stages.check import CheckOutput
from pipeline.stages.evaluate import EvaluateOutput
from pipeline.stages.smoke import SmokeOutput

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.records import Step

SERVICE_FIELDS = ("target", "scoring_uri", "swagger_uri", "model", "model_sha256", "deployed_at", "workers", "auth")


@dataclass(frozen=True)
class ReportOutput(Output):
    stage = "report"
    dir: str


class Report(Stage):
    name = "report"
    after = STAGES[:-1]  # it reports on every other stage: any of them running changes the report
    always = True  # a failed run is reported too: the report says what failed

    def inputs(self, ctx: Context) -> dict[str, Any]:
        return {"stages": {s: (ctx.state["stages"].get(s) or {}).get("digest") for s in self.after}}

    def stale(self, ctx: Context, record: dict[str, Any]) -> str:
        out = ReportOutput.from_dict(record.get("outputs"))
        if out is None or out.dir != str(folder(ctx)) or not (folder(ctx) / "report.md").is_file():
            return f"{folder(ctx) / 'report.md'} is missing"
        return ""

    def run(self, ctx: Context, step: Step) -> Outcome:
        out = write(ctx)
        return Outcome(f"{out / 'report.md'}", ReportOutput(str(out)))


def folder(ctx: Context) -> Path:
    return states.reports_root(ctx.spec.path) / ctx.spec.name


def collect(ctx: Context) -> dict[str, Any]:
    """Everything a machine needs, from this run and the recorded state; never the keys."""
    evaluation = None
    evaluated = ctx.output(EvaluateOutput)
    if evaluated and Path(evaluated.evaluation).is_file():
        evaluation = json.loads(Path(evaluated.evaluation).read_text())
    service = ctx.state.get("service") or {}
    check, smoke = ctx.output(CheckOutput), ctx.output(SmokeOutput)
    return {
        "spec": ctx.spec.name, "spec_file": str(ctx.spec.path), "generated_at": ctx.clock(),
        "description": ctx.spec.description, "tags": dict(ctx.spec.tags),
        "plan": ctx.plan.to_dict() if ctx.plan is not None else None,
        "stages": [r.to_dict() for r in ctx.results],
        "versions": check.to_dict() if check else {},
        "evaluation": evaluation,
        "smoke": smoke.to_dict() if smoke else None,
        "service": {k: service.get(k) for k in SERVICE_FIELDS if k in service} or None,
    }


def markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    lines = [f"## Deployment report: `{report['spec']}`", ""]
    if report.get("description"):
        lines += [report["description"], ""]
    plan = report.get("plan")
    if plan:
        lines += ["### Plan", "", "| stage | action | why |", "|---|---|---|"]
        for s in plan["steps"]:
            action = s["deploy"]["action"] if s.get("deploy") and s["action"] == "run" else s["action"]
            lines.append(f"| {s['stage']} | {action} | {_cell(s['reason'])} |")
        for s in plan["steps"]:
            if s.get("deploy") and s["deploy"]["fields"]:
                lines += ["", f"**deploy: {s['deploy']['action']}**", "", "| field | before | after |", "|---|---|---|"]
                for f in s["deploy"]["fields"]:
                    lines.append(f"| `{f['path']}` | {_value(f['old'])} | {_value(f['new'])} |")
            if s.get("deploy") and s["deploy"]["files"]:
                for name, diff in s["deploy"]["files"].items():
                    lines += ["", f"<details><summary>{name}</summary>", "", "```diff", diff.rstrip(), "```", "</details>"]
        lines.append("")
    ev = report.get("evaluation")
    if ev:
        lines += ["### Evaluation", "", f"Accuracy **{ev['accuracy']:.4f}** on {ev['n']:,} test images "
                  f"(gate: {ev.get('min_accuracy', 0):g}).", "", "Confusion matrix (rows: true label, columns: predicted):", ""]
        labels = ev["labels"]
        lines.append("| true \\ predicted | " + " | ".join(str(label) for label in labels) + " |")
        lines.append("|---" * (len(labels) + 1) + "|")
        for label, row in zip(labels, ev["confusion"]):
            lines.append(f"| **{label}** | " + " | ".join(str(v) for v in row) + " |")
        lines += ["", "| class | precision | recall | F1 |", "|---|---|---|---|"]
        for label, p, r, f in zip(labels, ev["precision"], ev["recall"], ev["f1"]):
            lines.append(f"| {label} | {p:.3f} | {r:.3f} | {f:.3f} |")
        if "confusion" in plots:
            lines += ["", f"![normalized confusion errors]({plots['confusion']})"]
        lines.append("")
    smoke = report.get("smoke")
    if smoke:
        lat = smoke["latency_ms"]
        acc = f"; sample accuracy {smoke['sample_accuracy']:.2f}" if smoke.get("sample_accuracy") is not None else ""
        lines += ["### Smoke test", "", f"{len(smoke['indices'])} seeded random test images sent to `{smoke['uri']}`: "
                  f"{'**all answers agree** with the local model' if smoke['agree'] else '**answers differ**'}{acc}.",
                  f"Latency over {len(smoke['indices'])}-image requests: p50 {lat['p50']:.1f} ms "
                  f"(min {lat['min']:.1f}, max {lat['max']:.1f}); {smoke['bytes_sent']:,} bytes per request.", ""]
        if "samples" in plots:
            lines += [f"![sampled test images]({plots['samples']})", ""]
    if report.get("stages"):
        lines += ["### Stages", "", "| stage | status | seconds | detail |", "|---|---|---|---|"]
        for s in report["stages"]:
            lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']:.2f} | {_cell(s['detail'].splitlines()[0] if s['detail'] else '')} |")
        lines.append("")
    versions = report.get("versions") or {}
    if versions.get("packages"):
        pkgs = ", ".join(f"{k} {v}" for k, v in sorted(versions["packages"].items()))
        lines += [f"Versions: Python {versions.get('python')}, {pkgs}.", ""]
    service = report.get("service")
    if service:
        lines += [f"Service: `{service.get('scoring_uri')}` on target `{service.get('target')}`, model "
                  f"`{service.get('model')}` (sha256 `{str(service.get('model_sha256'))[:12]}…`).", ""]
    lines.append(f"<sub>generated {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(report['generated_at']))}</sub>")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    return "_(none)_" if value is None else f"`{_cell(json.dumps(value) if not isinstance(value, str) else value)}`"


def write(ctx: Context) -> Path:
    out = folder(ctx)
    out.mkdir(parents=True, exist_ok=True)
    report = collect(ctx)
    plots = {}
    evaluated, smoke = ctx.output(EvaluateOutput), ctx.output(SmokeOutput)
    for key, source in (("confusion", evaluated.confusion_png if evaluated else None),
                        ("samples", smoke.samples_png if smoke else None)):
        if source and Path(source).is_file():
            shutil.copyfile(source, out / Path(source).name)
            plots[key] = Path(source).name
    report["plots"] = plots
    atomic_write(out / "report.json", (json.dumps(report, indent=2, default=str) + "\n").encode())
    atomic_write(out / "report.md", markdown(report, plots).encode())
    return out

