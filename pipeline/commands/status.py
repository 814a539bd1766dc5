"""`status SPEC`: live health probe, scoring URI, model, last smoke test, drift; exit 0 only when live and as recorded."""
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
        console.print(f"  last smoke   {verdict} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['at']))}"
                      + (f", sample accuracy {s['sample_accuracy']:.2f}" if s.get("sample_accuracy") is not None else ""))
    for name, key in (out.get("keys") or {}).items():
        console.print(f"  {name:<12} {key}")
    return code
