"""`delete SPEC`: the tutorial's service.delete(): stop and remove the service, keep the history."""
from __future__ import annotations

import argparse

from pipeline.commands._common import load
from pipeline.console import Console


def main(args: argparse.Namespace, console: Console) -> int:
    p = load(args, console, check_files=False)
    detail = p.delete(lock_timeout=args.lock_timeout or 0.0)
    if detail is None:
        console.print(f"{p.spec.name}: no service is deployed; nothing to delete")
    else:
        console.print(f"{p.spec.name}: deleted ({detail})")
    return 0
