"""Plan the stages (a pure function of spec, state and live status), then run exactly that plan."""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from pipeline import state as states
from pipeline.context import Context, digest
from pipeline.errors import PipelineError, StageFailed, UsageError
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
        return STAGES[start:stop + 1]


@dataclass(frozen=True)
class Change:
    """For deploy: what happens to the service, and the field-level and file-level differences."""

    action: str                                  # create | update | replace | no-op
    live: str                                    # one line from the probe
    fields: tuple[tuple[str, Any, Any], ...] = ()  # (path, old, new); old/new None = added/removed
    files: tuple[tuple[str, str], ...] = ()        # (file name, unified diff)
    drift: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    stage: str
    action: str             # run | skip | not selected
    reason: str
    digest: str | None
    inputs: Any = None
    change: Change | None = None
    rebuild: bool = False   # runs only to make again local files missing here (a fresh runner): nothing changes


@dataclass(frozen=True)
class Plan:
    spec_name: str
    steps: tuple[Step, ...]

    @property
    def changes(self) -> bool:
        """True when run would change anything (for --detailed-exitcode); rebuilding local files is no change."""
        return any(s.action == "run" and not s.rebuild for s in self.steps)

    @property
    def failures(self) -> list[str]:
        """Stages already known to fail: plan cannot be applied as it stands."""
        return [f"{s.stage}: {s.reason}" for s in self.steps if s.action == "run" and s.reason.startswith("will fail")]

    def to_dict(self) -> dict[str, Any]:
        out = []
        for s in self.steps:
            item: dict[str, Any] = {"stage": s.stage, "action": s.action, "reason": s.reason, "rebuild": s.rebuild}
            if s.change:
                item["deploy"] = {"action": s.change.action, "live": s.change.live, "drift": list(s.change.drift),
                                  "fields": [{"path": p, "old": o, "new": n} for p, o, n in s.change.fields],
                                  "files": {name: diff for name, diff in s.change.files}}
            out.append(item)
        return {"spec": self.spec_name, "changes": self.changes, "steps": out}


@dataclass(frozen=True)
class Result:
    stage: str
    status: str             # ran | skipped | failed | not run
    seconds: float
    detail: str
    outputs: dict[str, Any] = field(default_factory=dict)


def _module(stage: str) -> Any:
    return importlib.import_module(f"pipeline.stages.{stage}")


def gather(ctx: Context) -> dict[str, Any]:
    """Everything plan() needs that touches the world: input digests per stage and the live probe."""
    facts: dict[str, Any] = {"inputs": {}, "errors": {}, "stale": {}}
    for stage in STAGES:
        module = _module(stage)
        try:
            facts["inputs"][stage] = module.inputs(ctx)
        except PipelineError as exc:
            facts["errors"][stage] = str(exc)
            facts["inputs"][stage] = None
        record = ctx.state["stages"].get(stage)
        if record and hasattr(module, "stale"):
            facts["stale"][stage] = module.stale(ctx, record)
    facts["deploy"] = _module("deploy").facts(ctx, facts["inputs"].get("deploy"))
    return facts


def plan(spec_name: str, state: dict[str, Any], facts: dict[str, Any], selection: Selection) -> Plan:
    """Pure: which stages run and why, from the recorded state and the gathered facts."""
    chosen = selection.chosen()
    steps: list[Step] = []
    upstream_runs: list[str] = []
    rebuilds: set[str] = set()
    for stage in STAGES:
        inputs = facts["inputs"].get(stage)
        key = digest(inputs) if inputs is not None else None
        record = state["stages"].get(stage)
        change = _module("deploy").change(state, facts["deploy"], inputs) if stage == "deploy" else None
        if stage not in chosen:
            steps.append(Step(stage, "not selected", "outside --only/--from/--to", key, inputs, change))
            continue
        reason = _why_run(stage, key, record, facts, selection, change, upstream_runs)
        action = "run" if reason else "skip"
        if not reason:
            reason = "inputs unchanged since the last success" + (f" ({_ago(record['at'])})" if record else "")
            if change:
                reason = change.live
        rebuild = action == "run" and _only_rebuilds(stage, key, record, facts, reason, upstream_runs, rebuilds)
        if action == "run":
            upstream_runs.append(stage)
        if rebuild:
            rebuilds.add(stage)
        steps.append(Step(stage, action, reason, key, inputs, change, rebuild))
    return Plan(spec_name, tuple(steps))


def _only_rebuilds(stage: str, key: str | None, record: dict[str, Any] | None, facts: dict[str, Any], reason: str,
                   upstream: list[str], rebuilds: set[str]) -> bool:
    """A stage whose inputs are unchanged runs only because its local outputs are missing (state shared from
    another machine, or files removed), or because only such stages run before it: it changes nothing live."""
    if record is None or key is None or record.get("digest") != key or stage in facts["errors"]:
        return False
    if reason and reason == facts["stale"].get(stage):
        return True
    after = [s for s in getattr(_module(stage), "AFTER", ()) if s in upstream]
    return bool(after) and reason.endswith("will run first") and all(s in rebuilds for s in after)


def _why_run(stage: str, key: str | None, record: dict[str, Any] | None, facts: dict[str, Any],
             selection: Selection, change: Change | None, upstream: list[str]) -> str:
    if stage in facts["errors"]:
        return f"will fail: {facts['errors'][stage]}"
    if selection.force:
        return "--force"
    if stage == "deploy" and change is not None:
        if change.action != "no-op":
            return {"create": change.live, "update": "inputs changed" + (f" ({change.live})" if change.live.startswith("cannot") else ""),
                    "replace": change.live}.get(change.action, change.action)
        return ""
    after = [s for s in getattr(_module(stage), "AFTER", ()) if s in upstream]
    if after:
        return f"{', '.join(after)} will run first"
    if key is None:
        return f"inputs depend on {', '.join(upstream) or 'an earlier stage'}, which will run"
    if record is None:
        return "never ran successfully"
    if record["digest"] != key:
        return "inputs changed: " + ", ".join(_changed_keys(record.get("inputs"), facts["inputs"][stage]))
    stale = facts["stale"].get(stage)
    if stale:
        return stale
    return ""


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
    try:
        for step in the_plan.steps:
            if failed and not (step.stage == "report" and step.action == "run"):
                results.append(Result(step.stage, "not run", 0.0, "an earlier stage failed"))
                yield_result(ctx, results[-1])
                continue
            if step.action != "run":
                results.append(Result(step.stage, "skipped", 0.0, step.reason if step.action == "skip" else "not selected"))
                yield_result(ctx, results[-1])
                continue
            ctx.console.progress(f"{step.stage}: running")
            t0 = time.perf_counter()
            module = _module(step.stage)
            try:
                # inputs again, now that earlier stages ran: what this stage records is what it used
                fresh = module.inputs(ctx) if (step.inputs is None or hasattr(module, "AFTER")) else step.inputs
                outcome: Outcome = module.run(ctx, step)
            except (PipelineError, OSError) as exc:
                ctx.console.clear_progress()
                if isinstance(exc, StageFailed) and exc.outputs:
                    ctx.outputs[step.stage] = exc.outputs  # what the failed stage saw goes into this run's report
                detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
                results.append(Result(step.stage, "failed", time.perf_counter() - t0, detail))
                yield_result(ctx, results[-1])
                failed = True
                continue
            seconds = time.perf_counter() - t0
            ctx.outputs[step.stage] = outcome.outputs
            used = outcome.inputs if outcome.inputs is not None else fresh
            ctx.state["stages"][step.stage] = {"digest": outcome.digest or digest(used), "inputs": used,
                                               "outputs": outcome.outputs, "at": ctx.clock(), "seconds": round(seconds, 3)}
            states.save(ctx.paths, ctx.state)
            results.append(Result(step.stage, "ran", seconds, outcome.detail, outcome.outputs))
            yield_result(ctx, results[-1])
        if cleanup and not failed and ctx.state.get("service"):
            detail = _module("deploy").remove(ctx)
            results.append(Result("cleanup", "ran", 0.0, detail))
            yield_result(ctx, results[-1])
    finally:
        _record_history(ctx, command, started, results)
    return results


def yield_result(ctx: Context, result: Result) -> None:
    """Print one line per stage as it finishes."""
    console = ctx.console
    console.clear_progress()
    colour = {"ran": "green", "skipped": "dim", "failed": "red", "not run": "dim"}.get(result.status, "bold")
    status = console.paint(f"{result.status:<8}", colour)
    seconds = f"{result.seconds:6.2f}s" if result.status in ("ran", "failed") else "       "
    first, _, rest = result.detail.partition("\n")
    line = f"{result.stage:<9} {status} {seconds}  {first}"
    rest = "\n".join("    " + l for l in rest.splitlines())
    if result.status == "failed":
        console.always(line + ("\n" + rest if rest else ""))
    else:
        console.print(line + ("\n" + rest if rest else ""))


def _record_history(ctx: Context, command: str, started: float, results: Sequence[Result]) -> None:
    if not results:
        return
    entry = {"at": started, "command": command,
             "stages": [{"stage": r.stage, "status": r.status, "seconds": round(r.seconds, 3), "detail": r.detail[:500]}
                        for r in results],
             "ok": not any(r.status == "failed" for r in results)}
    ctx.state.setdefault("history", []).append(entry)
    states.save(ctx.paths, ctx.state)


def exit_code(results: Sequence[Result]) -> int:
    return 1 if any(r.status == "failed" for r in results) else 0

