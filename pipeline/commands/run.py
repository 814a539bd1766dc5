"""`run SPEC`: execute the plan; one line per stage as it finishes, then a summary."""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline import runner
from pipeline import service as services
from pipeline import state as states
from pipeline.commands._common import context, lock_options, selection
from pipeline.console import Console
from pipeline.records import Status


def main(args: argparse.Namespace, console: Console) -> int:
    start = time.perf_counter()
    if args.json:  # stdout holds the JSON document alone; a failed stage's lines go to stderr
        console = Console(out=sys.stderr, quiet=True)
    ctx = context(args, console)
    with states.locked(ctx.paths, f"run {args.spec}", **lock_options(args, console)):
        ctx.state = states.load(ctx.paths)  # re-read under the lock
        services.check_owner(ctx, adopt=args.adopt)
        services.claim(ctx)
        facts = runner.gather(ctx)
        the_plan = runner.plan(ctx.spec.name, ctx.state, facts, selection(args))
        results = runner.execute(ctx, the_plan, command=f"run {args.spec}", cleanup=args.cleanup)
    code = runner.exit_code(results)
    seconds = time.perf_counter() - start
    service = ctx.service
    if args.json:
        print(json.dumps({"spec": ctx.spec.name, "ok": code == 0, "seconds": round(seconds, 3),
                          "service": service.scoring_uri if service else None,
                          "stages": [r.to_dict() for r in results]}, indent=2, default=str))
        return code
    ran = sum(r.status is Status.RAN for r in results)
    skipped = sum(r.status is Status.SKIPPED for r in results)
    where = f"; service {service.scoring_uri}" if service and service.scoring_uri else ""
    if code:
        failed = next(r for r in results if r.status is Status.FAILED)
        console.error(console.paint(f"run failed at {failed.stage} after {seconds:.1f} s", "red") + where)
    else:
        console.print(f"done in {seconds:.1f} s: {ran} ran, {skipped} skipped{where}")
    return code
