"""`run SPEC`: execute the plan; one line per stage as it finishes, then a summary (and --summary, for CI)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.commands._common import load, stages
from pipeline.console import Console
from pipeline.records import Status


def main(args: argparse.Namespace, console: Console) -> int:
    if args.json:  # stdout holds the JSON document alone; a failed stage's lines go to stderr
        console = Console(out=sys.stderr, quiet=True)
    p = load(args, console)
    result = p.run(
        **stages(args),
        cleanup=args.cleanup,
        lock_timeout=args.lock_timeout or 0.0,
        check=False,
        adopt=args.adopt,
        console=console,
    )
    code = result.exit_code
    summary = args.summary or os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            append_summary(Path(summary), result.markdown())
        except OSError as exc:  # the run happened: say what was not written, and fail, without hiding its result
            console.error(f"error: --summary {summary}: cannot write: {exc.strerror}")
            code = 1
    service = result.context.service
    if args.json:
        print(
            json.dumps(
                {
                    "spec": p.spec.name,
                    "ok": code == 0,
                    "seconds": round(result.seconds, 3),
                    "service": service.scoring_uri if service else None,
                    "stages": [r.to_dict() for r in result.stages],
                },
                indent=2,
                default=str,
            )
        )
        return code
    ran = sum(r.status is Status.RAN for r in result.stages)
    skipped = sum(r.status is Status.SKIPPED for r in result.stages)
    where = f"; service {service.scoring_uri}" if service and service.scoring_uri else ""
    if result.failed is not None:
        console.error(console.paint(f"run failed at {result.failed.stage} after {result.seconds:.1f} s", "red") + where)
    else:
        console.print(f"done in {result.seconds:.1f} s: {ran} ran, {skipped} skipped{where}")
    return code


def append_summary(path: Path, markdown: str) -> None:
    """Append the report to a job summary (GITHUB_STEP_SUMMARY is appended to, one step after another), in one
    write, so summaries of runs side by side never interleave."""
    data = (markdown if markdown.endswith("\n") else markdown + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
