"""`plan SPEC`: per stage, run or skip and why; for deploy the action and a field-level diff."""
from __future__ import annotations

import argparse
import json

from pipeline import runner
from pipeline.commands._common import context, selection, show
from pipeline.console import Console
from pipeline.records import COLOURS, Plan, StepAction


def main(args: argparse.Namespace, console: Console) -> int:
    ctx = context(args, console)
    facts = runner.gather(ctx)
    the_plan = runner.plan(ctx.spec.name, ctx.state, facts, selection(args))
    if args.json:
        console.always(json.dumps(the_plan.to_dict(), indent=2, default=str))
    else:
        print_plan(console, the_plan, ctx.spec.name, args.spec, ctx.spec.deploy.target)
    if args.detailed_exitcode:
        if the_plan.failures:
            console.error("plan: run would fail: " + "; ".join(the_plan.failures))
            return 1
        return 2 if the_plan.changes else 0
    return 0


def print_plan(console: Console, the_plan: Plan, name: str, path: str, target: str) -> None:
    console.print(f"plan for {console.paint(name, 'bold')} ({path}), target {target}")
    console.print()
    for step in the_plan.steps:
        console.print(f"  {step.stage:<9} {console.paint(f'{step.label:<13}', COLOURS[step.action])} {step.reason}")
        if step.change and step.action is not StepAction.NOT_SELECTED:
            for path_, old, new in step.change.fields:
                if old is None:
                    line = console.paint(f"+ {path_}: {show(new)}", "green")
                elif new is None:
                    line = console.paint(f"- {path_}: {show(old)}", "red")
                else:
                    line = console.paint(f"~ {path_}: {show(old)} -> {show(new)}", "yellow")
                console.print(f"      {line}")
            for _name, diff in step.change.files:
                for line in diff.rstrip("\n").splitlines():
                    console.print("      " + console.paint(line, _diff_colour(line)))
    running = sum(s.action is StepAction.RUN and not s.rebuild for s in the_plan.steps)
    skipped = sum(s.action is StepAction.SKIP for s in the_plan.steps)
    rebuilt = [s.stage for s in the_plan.steps if s.rebuild]
    local = f" {', '.join(rebuilt)} will make their local files again (missing here)." if rebuilt else ""
    console.print()
    console.print(f"Plan: {running} stage(s) to run, {skipped} unchanged.{local}" if running else
                  f"No changes: the service matches the spec.{local}")


def _diff_colour(line: str) -> str:
    return {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "dim")
