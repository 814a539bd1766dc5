"""`status SPEC`: live health probe, scoring URI, model, last smoke test, drift."""
from __future__ import annotations

import argparse
import json
import time

from pipeline.commands._common import context
from pipeline.console import Console
from pipeline.errors import StageFailed


def _mask(key: str) -> str:
    return key[:4] + "…" + f" ({len(key)} characters; --show-keys prints it)"


def main(args: argparse.Namespace, console: Console) -> int:
    ctx = context(args, console, check_files=False)
    record = ctx.state.get("service")
    if args.uri:
        if not record:
            raise StageFailed(f"{ctx.spec.name} is not deployed; `python -m pipeline run {args.spec}` deploys it")
        console.always(record["scoring_uri"])
        return 0
    smoke = (ctx.state["stages"].get("smoke") or {})
    out: dict = {"spec": ctx.spec.name, "target": ctx.spec.deploy.target, "deployed": bool(record)}
    if record:
        from pipeline import targets

        live = targets.get(record.get("target", ctx.spec.deploy.target)).probe(record, ctx.spec)
        state = "live" if live.healthy and not live.drift else "drifted" if live.healthy else "down" if live.reachable else "unknown"
        out |= {"state": state, "detail": live.detail, "drift": list(live.drift), "scoring_uri": record.get("scoring_uri"),
                "swagger_uri": record.get("swagger_uri"), "model": record.get("model"), "model_sha256": record.get("model_sha256"),
                "deployed_at": record.get("deployed_at")}
        if smoke:
            so = smoke.get("outputs", {})
            out["last_smoke"] = {"at": smoke.get("at"), "agree": so.get("agree"), "sample_accuracy": so.get("sample_accuracy"),
                                 "latency_ms": so.get("latency_ms")}
        if record.get("auth"):
            keys_file = ctx.paths.service / "keys.json"
            try:
                keys = json.loads(keys_file.read_text())
            except (OSError, ValueError):
                keys = {}
            out["keys"] = keys if args.show_keys else {k: _mask(v) for k, v in keys.items()}
    history = ctx.state.get("history") or []
    if history:
        out["last_run"] = {"at": history[-1]["at"], "command": history[-1]["command"], "ok": history[-1]["ok"]}
    if args.json:
        console.always(json.dumps(out, indent=2, default=str))
        return 0
    if not record:
        console.print(f"{ctx.spec.name}: not deployed (target {ctx.spec.deploy.target})")
        return 0
    colour = {"live": "green", "drifted": "yellow", "down": "red"}.get(out["state"], "yellow")
    console.print(f"{ctx.spec.name}: {console.paint(out['state'], colour)} - {out['detail']}")
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
    return 0
