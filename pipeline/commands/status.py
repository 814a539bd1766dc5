"""`status SPEC`: health probe, scoring URI, model, last smoke test, drift; exit 0 only when live and as recorded."""

from __future__ import annotations

import argparse
import json
import time

from pipeline import webservice
from pipeline.commands._common import load
from pipeline.console import Console
from pipeline.records import COLOURS


def main(args: argparse.Namespace, console: Console) -> int:
    p = load(args, console, check_files=False)
    if args.uri:
        console.always(webservice.scoring_uri(p))
        return 0
    out = p.status(show_keys=args.show_keys)
    code = 0 if out["ok"] else 1  # for scripts: down, drifted, unknown, not deployed: 1
    if args.json:
        console.always(json.dumps(out, indent=2, default=str))
        return code
    if not out["deployed"]:
        console.print(f"{out['spec']}: not deployed (target {out['target']})")
        for line in out.get("orphans", []):
            console.print(f"  still running {line}: an unfinished deploy's; `run` or `delete` stops it")
        return code
    console.print(f"{out['spec']}: {console.paint(out['state'], COLOURS[out['state']])} - {out['detail']}")
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
        console.print(
            f"  last smoke   {verdict} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['at']))}"
            + (f", sample accuracy {s['sample_accuracy']:.2f}" if s.get("sample_accuracy") is not None else "")
        )
    for name, key in (out.get("keys") or {}).items():
        console.print(f"  {name:<12} {key}")
    for i, r in enumerate(out.get("releases") or []):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"]))
        now = " (live)" if r["live"] else ""
        console.print(
            f"  {'releases' if i == 0 else '':<12} #{r['n']} {when} model {r['model']} "
            f"sha256 {str(r['model_sha256'])[:12]}…{now}"
        )
    if len(out.get("releases") or []) > 1:
        console.print(f"  (`python -m pipeline rollback {args.spec} --to N` brings one back)")
    return code
