"""Stage report: report.json for machines and report.md for a pull-request comment, plots beside them.

Nothing in either is of the machine that wrote them (pipeline.scrub): paths are relative to the repository,
a local service is "the local service", not a port on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import state as states
from pipeline.files import atomic_write
from pipeline.records import DeployAction, Status, StepAction
from pipeline.stages import STAGES, Outcome, Output, Stage
from pipeline.stages.check import CheckOutput
from pipeline.stages.evaluate import EvaluateOutput
from pipeline.stages.smoke import SmokeOutput

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.records import Plan, Step

SERVICE_FIELDS = ("target", "scoring_uri", "swagger_uri", "model", "model_sha256", "deployed_at", "workers", "auth")
SAID = {
    DeployAction.CREATE: "Created",
    DeployAction.UPDATE: "Updated",
    DeployAction.REPLACE: "Replaced",
    DeployAction.ADOPT: "Took over",
    DeployAction.NOOP: "Redeployed",
}


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


def _read(path: str | None) -> dict[str, Any] | None:
    if not path or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _ran(ctx: Context, stage: str) -> bool:
    return any(r.stage == stage and r.status in (Status.RAN, Status.FAILED) for r in ctx.results)


def _explained(ctx: Context) -> Any:
    from pipeline import changes
    from pipeline.stages.render import template_values

    if ctx.plan is None:
        return changes.Explained((), {})
    try:
        values = template_values(ctx)
    except Exception:  # noqa: BLE001  a spec the templates cannot take: render's own row says why
        values = None
    return changes.explain(ctx.plan, pinned=ctx.spec.model.sha256 is not None, values=values)


def _note(step: Step, plan: Plan, fields: tuple[str, ...]) -> str:
    """Why a stage runs when its fields do not say it all: the deploy's rollout, an earlier stage, a first run."""
    from pipeline import stages

    if step.action is not StepAction.RUN:
        return ""
    if step.rebuild:
        return "its local files are missing here: made again"
    if step.error is not None or step.reason == "--force":
        return step.reason
    change = step.change
    if change is not None:
        if change.action is DeployAction.UPDATE:
            return (change.rollout or "") + ("" if change.checked else f"; {change.live}")
        return "" if fields else change.live
    if fields:
        return ""
    ran = [s.stage for s in plan.steps if s.action is StepAction.RUN and s.stage in stages.get(step.stage).after]
    if ran:
        return f"after {', '.join(ran)}"
    return "first run" if step.recorded is None else step.reason


def _stage_rows(ctx: Context, why: Any) -> list[dict[str, Any]]:
    results = {r.stage: r for r in ctx.results}
    rows: list[dict[str, Any]] = []
    if ctx.plan is None:
        return rows
    for step in ctx.plan.steps:
        fields = tuple(why.get(step.stage, ()))
        result = results.get(step.stage)
        rows.append(
            {
                "stage": step.stage,
                "plan": step.label,
                "fields": list(fields),
                "note": _note(step, ctx.plan, fields),
                "reason": step.reason,
                "status": str(result.status) if result else None,
                "seconds": round(result.seconds, 3) if result else 0.0,
                "detail": result.detail if result else "",
            }
        )
    return rows


def _outcome(ctx: Context) -> dict[str, Any]:
    failed = next((r for r in ctx.results if r.status is Status.FAILED), None)
    deployed = next((s for s in ctx.plan.steps if s.change is not None), None) if ctx.plan is not None else None
    if failed is not None:
        summary = "Failed"
    elif deployed is not None and _ran(ctx, deployed.stage) and deployed.change is not None:
        summary = f"{SAID[deployed.change.action]} the service"
    elif deployed is not None and deployed.action is StepAction.SKIP:
        summary = "No change to the service"
    else:
        summary = "Not deployed in this run"
    return {
        "ok": failed is None,
        "summary": summary,
        "failed": {"stage": failed.stage, "detail": failed.detail.split("\n", 1)[0]} if failed else None,
    }


def _created(deploy: Step | None) -> list[dict[str, Any]]:
    """A first deployment's settings, each once (the deploy inputs hold the target twice)."""
    from pipeline.changes import RENAMED

    if (
        deploy is None
        or deploy.change is None
        or deploy.action is not StepAction.RUN
        or deploy.change.action not in (DeployAction.CREATE, DeployAction.ADOPT)
    ):
        return []
    fields = {RENAMED.get(path, path): new for path, _, new in deploy.change.fields}
    return [{"path": path, "value": value} for path, value in sorted(fields.items())]


def collect(ctx: Context) -> dict[str, Any]:
    """Everything a machine needs, from this run and the recorded state; never the keys, never this machine."""
    from pipeline import __version__, comparison, scrub

    evaluated, check, smoke = ctx.output(EvaluateOutput), ctx.output(CheckOutput), ctx.output(SmokeOutput)
    evaluation = _read(evaluated.evaluation) if evaluated else None
    baseline = _read(evaluated.baseline) if evaluated else None
    explained = _explained(ctx)
    model_changed = _ran(ctx, "evaluate") or any(
        c.field in ("model.sha256", "model.source") and "deploy" in c.stages for c in explained.changes
    )
    compared = comparison.compare(baseline, evaluation) if evaluation and baseline and model_changed else None
    deploy = next((s for s in ctx.plan.steps if s.change is not None), None) if ctx.plan is not None else None
    created = _created(deploy)
    service = ctx.state.get("service") or {}
    report = {
        "spec": ctx.spec.name,
        "spec_file": str(ctx.spec.path),
        "generated_at": ctx.clock(),
        "pipeline": __version__,
        "description": ctx.spec.description,
        "tags": dict(ctx.spec.tags),
        "target": ctx.spec.deploy.target,
        "outcome": _outcome(ctx),
        "changes": [c.to_dict() for c in explained.changes],
        "created": created,
        "plan": ctx.plan.to_dict() if ctx.plan is not None else None,
        "stages": _stage_rows(ctx, explained.why),
        "versions": check.to_dict() if check else {},
        "evaluation": evaluation,
        "evaluated": _ran(ctx, "evaluate"),
        "baseline": baseline if compared else None,
        "comparison": compared,
        "smoke": smoke.to_dict() if smoke else None,
        "smoked": _ran(ctx, "smoke"),
        "service": {k: service.get(k) for k in SERVICE_FIELDS if k in service} or None,
    }
    scrubbed: dict[str, Any] = scrub.for_spec(ctx.spec.path).data(report)
    return scrubbed


def compose(ctx: Context) -> tuple[dict[str, Any], str]:
    """The report of this run and its Markdown, without writing anything (for a run that did not reach report)."""
    from pipeline import reportmd

    report = collect(ctx)
    report["plots"] = {}
    return report, reportmd.markdown(report)


def write(ctx: Context) -> Path:
    from pipeline import reportmd

    out = folder(ctx)
    out.mkdir(parents=True, exist_ok=True)
    report = collect(ctx)
    plots = {}
    evaluated, smoke = ctx.output(EvaluateOutput), ctx.output(SmokeOutput)
    for key, source in (
        ("confusion", evaluated.confusion_png if evaluated else None),
        ("samples", smoke.samples_png if smoke and report["smoked"] else None),
    ):
        if source and Path(source).is_file():
            shutil.copyfile(source, out / Path(source).name)
            plots[key] = Path(source).name
        else:
            (out / f"{key}.png").unlink(missing_ok=True)  # never a plot of another run beside this report
    report["plots"] = plots
    atomic_write(out / "report.json", (json.dumps(report, indent=2, default=str) + "\n").encode())
    atomic_write(out / "report.md", reportmd.markdown(report).encode())
    return out
