"""`rollback SPEC [--to N]`: bring back a kept release (its files and model) by the gated deploy procedure."""

from __future__ import annotations

import argparse
import time

from pipeline import releases
from pipeline import spec as specs
from pipeline import state as states
from pipeline.commands._common import context, lock_options
from pipeline.console import Console
from pipeline.context import Context
from pipeline.errors import PipelineError
from pipeline.stages import deploy
from pipeline.stages.fetch import FetchOutput


def main(args: argparse.Namespace, console: Console) -> int:
    ctx = context(args, console, check_files=False)
    with states.locked(ctx.paths, f"rollback {args.spec}", **lock_options(args, console)):
        ctx.state = states.load(ctx.paths)
        release = releases.choose(ctx, args.to)
        build, model, spec_text = releases.files_of(ctx, release)
        # the spec as it was deployed, read where the spec lives now (its relative paths mean the same)
        then = specs.load(ctx.spec.path, check_files=False, text=spec_text)
        old = Context(spec=then, paths=ctx.paths, state=ctx.state, console=console)
        old.outputs["fetch"] = FetchOutput(str(model), str(model.parent), release.model_sha256 or "")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(release.at))
        console.progress(f"rollback: release {release.n} ({when}) beside the live version")
        started = ctx.clock()
        try:
            record = deploy.roll_back(old, release, build, model)
        except PipelineError as exc:
            _history(ctx, args, started, False, f"rollback to release {release.n} failed: {exc}")
            raise
        _history(ctx, args, started, True, f"rolled back to release {release.n}")
    console.clear_progress()
    console.print(
        f"{ctx.spec.name}: rolled back to release {release.n} (deployed {when}, model {release.model}) "
        f"at {record.scoring_uri}"
    )
    return 0


def _history(ctx: Context, args: argparse.Namespace, started: float, ok: bool, detail: str) -> None:
    ctx.state.setdefault("history", []).append(
        {"at": started, "command": f"rollback {args.spec}", "stages": [], "ok": ok, "detail": detail[:500]}
    )
    states.save(ctx.paths, ctx.state)
