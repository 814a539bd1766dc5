"""`plan SPEC`: per stage, run or skip and why; for deploy the action and a field-level diff."""

from __future__ import annotations

import argparse
import json

from pipeline import planview
from pipeline.commands._common import load, stages
from pipeline.console import Console
from pipeline.records import COLOURS, Plan, StepAction


def main(args: argparse.Namespace, console: Console) -> int:
    p = load(args, console)
    the_plan = p.plan(**stages(args), console=console)
    if args.json:
        console.always(json.dumps(the_plan.to_dict(), indent=2, default=str))
    else:
        print_plan(console, the_plan, p.spec.name, args.spec, p.spec.deploy.target)
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
                line, colour = planview.field_line(path_, old, new)
                console.print(f"      {console.paint(line, colour)}")
            for _name, diff in step.change.files:
                for line in diff.rstrip("\n").splitlines():
                    console.print("      " + console.paint(line, _diff_colour(line)))
    console.print()
    console.print(planview.summary(the_plan))


def _diff_colour(line: str) -> str:
    return {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "dim")
