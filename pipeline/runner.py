"""Plan the stages (a pure function of spec, state and live status), then run exactly that plan."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import service as services
from pipeline import stages as all_stages
from pipeline import state as states
from pipeline.context import Context, digest
from pipeline.errors import PipelineError, StageFailed, UsageError
from pipeline.records import COLOURS, Change, DeployAction, Facts, Plan, Result, Status, Step, StepAction
from pipeline.stages import STAGES, Outcome


@dataclass(frozen=True)
class Selection:
    force: bool = False
    only: str | None = None
    from_stage: str | None = None
    to_stage: str | None = None

    def chosen(self) -> tuple[str, ...]:
        if self.only:
            return (self.only,)
        start = STAGES.index(self.from_stage) if self.from_stage else 0
        stop = STAGES.index(self.to_stage) if self.to_stage else len(STAGES) - 1
        if start > stop:
            raise UsageError(f"--from {self.from_stage} comes after --to {self.to_stage}")
        return STAGES[start : stop + 1]


def gather(ctx: Context) -> Facts:
    """Everything plan() needs that touches the world: input digests per stage and the live probes."""
    facts = Facts()
    for stage in all_stages.all_stages():
        try:
            facts.inputs[stage.name] = stage.inputs(ctx)
        except PipelineError as exc:
            facts.errors[stage.name] = str(exc)
            facts.inputs[stage.name] = None
        record = ctx.state["stages"].get(stage.name)
        if record:
            facts.stale[stage.name] = stage.stale(ctx, record)
        live = stage.live(ctx)
        if live is not None:
            facts.live[stage.name] = live
    return facts


def plan(spec_name: str, state: dict[str, Any], facts: Facts, selection: Selection) -> Plan:
    """Pure: which stages run and why, from the recorded state and the gathered facts."""
    chosen = selection.chosen()
    steps: list[Step] = []
    upstream_runs: list[str] = []
    rebuilds: set[str] = set()
    for stage in all_stages.all_stages():
        name = stage.name
        inputs = facts.inputs.get(name)
        key = digest(inputs) if inputs is not None else None
        record = state["stages"].get(name)
        change = stage.change(state, facts.live[name], inputs) if name in facts.live else None
        error = facts.errors.get(name) or (change.refusal if change is not None else None)
        if name not in chosen:
            steps.append(Step(name, StepAction.NOT_SELECTED, "outside --only/--from/--to", key, inputs, change, error))
            continue
        reason = _why_run(stage, key, record, facts, selection, change, upstream_runs)
        action = StepAction.RUN if reason else StepAction.SKIP
        if not reason:
            reason = "inputs unchanged since the last success" + (f" ({_ago(record['at'])})" if record else "")
            if change:
                reason = change.live
        rebuild = action is StepAction.RUN and _only_rebuilds(
            stage, key, record, facts, reason, upstream_runs, rebuilds
        )
        if action is StepAction.RUN:
            upstream_runs.append(name)
        if rebuild:
            rebuilds.add(name)
        steps.append(Step(name, action, reason, key, inputs, change, error, rebuild, recorded=record))
    return Plan(spec_name, tuple(_adopted_rebuilds(steps)))


def _adopted_rebuilds(steps: list[Step]) -> list[Step]:
    """A runner with no record of a live service that carries this spec's stamp (deploy: an adopted no-op) only
    remakes its local files and records: the stages that never ran here change nothing live."""
    if not any(
        s.change is not None
        and s.change.adopted is not None
        and s.change.action is DeployAction.NOOP
        and s.action is StepAction.SKIP
        for s in steps
    ):
        return steps
    return [
        dataclasses.replace(s, rebuild=True)
        if s.action is StepAction.RUN and s.recorded is None and s.error is None
        else s
        for s in steps
    ]


def _only_rebuilds(
    stage: all_stages.Stage,
    key: str | None,
    record: dict[str, Any] | None,
    facts: Facts,
    reason: str,
    upstream: list[str],
    rebuilds: set[str],
) -> bool:
    """A stage whose inputs are unchanged runs only because its local outputs are missing (state shared from
    another machine, or files removed), or because only such stages run before it: it changes nothing live."""
    if record is None or key is None or record.get("digest") != key or stage.name in facts.errors:
        return False
    if reason and reason == facts.stale.get(stage.name):
        return True
    after = [s for s in stage.after if s in upstream]
    return bool(after) and reason.endswith("will run first") and all(s in rebuilds for s in after)


def _why_run(
    stage: all_stages.Stage,
    key: str | None,
    record: dict[str, Any] | None,
    facts: Facts,
    selection: Selection,
    change: Change | None,
    upstream: list[str],
) -> str:
    name = stage.name
    if name in facts.errors:
        return f"will fail: {facts.errors[name]}"
    if selection.force:
        return "--force"
    if change is not None and change.refusal and change.action is not DeployAction.NOOP:
        return f"will fail: {change.refusal}"
    if change is not None:
        if change.action is DeployAction.NOOP:
            return ""
        if change.action is DeployAction.UPDATE:
            how = f"({change.rollout})" if change.rollout else "inputs changed"
            return how + ("" if change.checked else f"; {change.live}")
        return change.live
    after = [s for s in stage.after if s in upstream]
    if after:
        return f"{', '.join(after)} will run first"
    if key is None:
        return f"inputs depend on {', '.join(upstream) or 'an earlier stage'}, which will run"
    if record is None:
        return "never ran successfully"
    if record["digest"] != key:
        return "inputs changed: " + ", ".join(_changed_keys(record.get("inputs"), facts.inputs[name]))
    return facts.stale.get(name, "")


def _changed_keys(old: Any, new: Any) -> list[str]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ["(unrecorded)"]
    keys = sorted(k for k in set(old) | set(new) if digest(old.get(k)) != digest(new.get(k)))
    return keys or ["(format)"]


def _ago(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def execute(ctx: Context, the_plan: Plan, *, command: str, cleanup: bool = False) -> list[Result]:
    """Run the planned stages in order; record each success at once, so an interruption loses only its stage."""
    results: list[Result] = []
    ctx.plan, ctx.results = the_plan, results
    failed = False
    started = ctx.clock()
    for step in the_plan.steps:  # a live service found by its stamp is recorded here, as plan saw it
        if step.change is not None and step.change.adopted is not None and ctx.service is None:
            from pipeline.targets.base import ServiceRecord

            ctx.service = ServiceRecord.from_dict(dict(step.change.adopted))
            states.save(ctx.paths, ctx.state)
    try:
        for step in the_plan.steps:
            stage = all_stages.get(step.stage)
            if failed and not (stage.always and step.action is StepAction.RUN):
                _finish(ctx, Result(step.stage, Status.NOT_RUN, 0.0, "an earlier stage failed"))
                continue
            if step.action is not StepAction.RUN:
                detail = step.reason if step.action is StepAction.SKIP else "not selected"
                _finish(ctx, Result(step.stage, Status.SKIPPED, 0.0, detail))
                continue
            ctx.console.progress(f"{step.stage}: running")
            t0 = time.perf_counter()
            try:
                # inputs again, now that earlier stages ran: what this stage records is what it used
                fresh = stage.inputs(ctx) if (step.inputs is None or stage.after) else step.inputs
                outcome: Outcome = stage.run(ctx, step)
            except (PipelineError, OSError) as exc:
                ctx.console.clear_progress()
                if isinstance(exc, StageFailed) and exc.outputs is not None:
                    ctx.outputs[step.stage] = exc.outputs  # what the failed stage saw goes into this run's report
                detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
                _finish(ctx, Result(step.stage, Status.FAILED, time.perf_counter() - t0, detail))
                failed = True
                continue
            seconds = time.perf_counter() - t0
            if outcome.outputs is not None:
                ctx.outputs[step.stage] = outcome.outputs
            used = outcome.inputs if outcome.inputs is not None else fresh
            ctx.state["stages"][step.stage] = {
                "digest": outcome.digest or digest(used),
                "inputs": used,
                "outputs": outcome.outputs.to_dict() if outcome.outputs is not None else {},
                "at": ctx.clock(),
                "seconds": round(seconds, 3),
            }
            states.save(ctx.paths, ctx.state)
            _finish(ctx, Result(step.stage, Status.RAN, seconds, outcome.detail, outcome.outputs))
        if cleanup and not failed and ctx.service is not None:
            _finish(ctx, Result("cleanup", Status.RAN, 0.0, services.remove(ctx)))
    finally:
        _record_history(ctx, command, started, results)
    return results


def _finish(ctx: Context, result: Result) -> None:
    ctx.results.append(result)
    print_result(ctx, result)


def print_result(ctx: Context, result: Result) -> None:
    """Print one line per stage as it finishes."""
    console = ctx.console
    console.clear_progress()
    status = console.paint(f"{result.status:<8}", COLOURS.get(result.status, "bold"))
    seconds = f"{result.seconds:6.2f}s" if result.status in (Status.RAN, Status.FAILED) else "       "
    first, _, rest = result.detail.partition("\n")
    line = f"{result.stage:<9} {status} {seconds}  {first}"
    rest = "\n".join("    " + part for part in rest.splitlines())
    if result.status is Status.FAILED:
        console.always(line + ("\n" + rest if rest else ""))
    else:
        console.print(line + ("\n" + rest if rest else ""))


def _record_history(ctx: Context, command: str, started: float, results: Sequence[Result]) -> None:
    if not results:
        return
    entry = {
        "at": started,
        "command": command,
        "stages": [r.to_dict() | {"detail": r.detail[:500]} for r in results],
        "ok": not any(r.status is Status.FAILED for r in results),
    }
    ctx.state.setdefault("history", []).append(entry)
    states.save(ctx.paths, ctx.state)


def exit_code(results: Sequence[Result]) -> int:
    return 1 if any(r.status is Status.FAILED for r in results) else 0
