"""`validate SPEC...`: every problem of every file at once, fast enough for a pre-commit hook."""

from __future__ import annotations

import argparse
import json

from pipeline import api
from pipeline.console import Console
from pipeline.errors import SpecError


def main(args: argparse.Namespace, console: Console) -> int:
    results = []
    for path in args.specs:
        try:
            valid = api.validate(path)
        except SpecError as exc:
            results.append({"spec": path, "valid": False, "errors": exc.messages})
            if not args.json:
                for message in exc.messages:
                    console.error(message)
            continue
        results.append(valid.to_dict())
        if not args.json:
            console.print(f"{console.paint('ok', 'green')}  {path}  ({valid.name}, target {valid.target})")
    if args.json:
        console.always(json.dumps(results, indent=2))
    invalid = sum(not r["valid"] for r in results)
    if invalid and not args.json:
        console.error(f"{invalid} of {len(results)} spec(s) invalid")
    return 2 if invalid else 0
