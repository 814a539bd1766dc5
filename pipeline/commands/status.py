"""`status SPEC`: live health probe, scoring URI, model, last smoke test, drift; exit 0 only when live and as recorded."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pipeline import releases
from pipeline.commands._common import context
from pipeline.console import Console
from pipeline.errors import StageFailed
from pipeline.records import COLOURS
from pipeline.targets import keys as keyfile


def _mask(key: str) -> str:
    return key[:4] + "…" + f" ({len(key)} characters; --show-keys prints it)"


def main(args: argparse.Namespace, console: Console) -> int:
    ctx = context(args, console, check_files=False)
    record = ctx.service
    if args.uri:
        if record is None or not record.scoring_uri:
            raise StageFailed(f"{ctx.spec.name} is not deployed; `python -m pipeline run {args.spec}` deploys it")
        console.always(record.scoring_uri)
        return 0
    out: dict[str, Any] = {"spec": ctx.spec.name, "target": ctx.spec.deploy.target, "deployed": record is not None,
                           "state": "not deployed"}
    if record is None:
        orphans = ctx.target.orphans(ctx.paths.service)
        if orphans:  # a run killed before it recorded what it started: say so, delete stops it
            out |= {"state": "orphaned", "orphans": orphans}
    if record is not None:
        from pipeline import targets
        from pipeline.stages.smoke import SmokeOutput

        live = targets.get(record.target).probe(record, ctx.spec)
        out |= {"state": live.state, "detail": live.detail, "drift": list(live.drift),
                "scoring_uri": record.scoring_uri, "swagger_uri": record.swagger_uri, "model": record.model,
                "model_sha256": record.model_sha256, "deployed_at": record.deployed_at}
        smoke = ctx.output(SmokeOutput)
        if smoke is not None:
            out["last_smoke"] = {"at": ctx.state["stages"]["smoke"].get("at"), "agree": smoke.agree,
                                 "sample_accuracy": smoke.sample_accuracy, "latency_ms": smoke.latency_ms}
        if record.auth:
            keys = keyfile.read(ctx.paths.service)
            out["keys"] = keys if args.show_keys else {k: _mask(v) for k, v in keys.items()}
    kept = releases.listed(ctx)
    if kept:
        live_digest = record.digest if record else None
        out["releases"] = [{"n": r.n, "at": r.at, "model": r.model, "model_sha256": r.model_sha256,
                            "live": r.digest == live_digest} for r in reversed(kept)]
    history = ctx.state.get("history") or []
    if history:
        out["last_run"] = {"at": history[-1]["at"], "command": history[-1]["command"], "ok": history[-1]["ok"]}
    # for scripts: 0 only for a healthy service that matches its record; down, drifted, unknown, not deployed: 1
    code = 0 if out["state"] == "live" else 1
    out["ok"] = code == 0
    if args.json:
        console.always(json.dumps(out, indent=2, default=str))
        return code
    if not record:
        console.print(f"{ctx.spec.name}: not deployed (target {ctx.spec.deploy.target})")
        for line in out.get("orphans", []):
            console.print(f"  still running {line}: an unfinished deploy's; `run` or `delete` stops it")
        return code
    console.print(f"{ctx.spec.name}: {console.paint(out['state'], COLOURS[out['state']])} - {out['detail']}")
    console.print(f"  scoring URI  {out['scoring_uri']}")
    if out.get("swagger_uri"):
        console.print(f"  swagger      {out['swagger_uri']}")
    console.print(f"  model        {out['model']} sha256 {str(out['model_sha256'])[:16]}…")
    console.print(f"  deployed     {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(out['deployed_at']))}")
    for line in out["drift"]:
        console.print(f"  drift        {line}")
    if "last_smoke" in out:
        s = out["last_smoke"]
        verdict = "passed" if s["agree"] else "FAILED"
        console.print(f"  last smoke   {verdict} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['at']))}"
                      + (f", sample accuracy {s['sample_accuracy']:.2f}" if s.get("sample_accuracy") is not None else ""))
    for name, key in (out.get("keys") or {}).items():
        console.print(f"  {name:<12} {key}")
    for i, r in enumerate(out.get("releases") or []):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"]))
        now = " (live)" if r["live"] else ""
        console.print(f"  {'releases' if i == 0 else '':<12} #{r['n']} {when} model {r['model']} "
                      f"sha256 {str(r['model_sha256'])[:12]}…{now}")
    if out.get("releases") and len(out["releases"]) > 1:
        console.print(f"  (`python -m pipeline rollback {args.spec} --to N` brings one back)")
    return code
