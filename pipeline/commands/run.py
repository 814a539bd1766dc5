"""`run SPEC`: execute the plan; one line per stage as it finishes, then a summary."""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline import runner
from pipeline import state as states
from pipeline.commands._common import context, lock_options, selection
from pipeline.console import Console


def main(args: argparse.Namespace, console: Console) -> int:
    start = time.perf_counter()
    if args.json:  # stdout holds the JSON document alone; a failed stage's lines go to stderr
        console = Console(out=sys.stderr, quiet=True)
    ctx = context(args, console)
    with states.locked(ctx.paths, f"run {args.spec}", **lock_options(args, console)):
        ctx.state = states.load(ctx.paths)  # re-read under the lock
        facts = runner.gather(ctx)
        the_plan = runner.plan(ctx.spec.name, ctx.state, facts, selection(args))
        results = runner.execute(ctx, the_plan, command=f"run {args.spec}", cleanup=args.cleanup)
    code = runner.exit_code(results)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"spec": ctx.spec.name, "ok": code == 0, "seconds": round(seconds, 3),
                                   "service": (ctx.state.get("service") or {}).get("scoring_uri"),
                                   "stages": [{"stage": r.stage, "status": r.status, "seconds": round(r.seconds, 3),
                                               "detail": r.detail} for r in results]}, indent=2, default=str))
        return code
    ran = sum(r.status == "ran" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    service = ctx.state.get("service")
    where = f"; service {service['scoring_uri']}" if service and service.get("scoring_uri") else ""
    if code:
        failed = next(r for r in results if r.status == "failed")
        console.error(console.paint(f"run failed at {failed.stage} after {seconds:.1f} s", "red") + where)
    else:
        console.print(f"done in {seconds:.1f} s: {ran} ran, {skipped} skipped{where}")
    return code
