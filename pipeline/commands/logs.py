"""`logs SPEC`: the tail of the service's own log; --follow keeps printing new lines."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.commands._common import load
from pipeline.console import Console
from pipeline.errors import UsageError


def main(args: argparse.Namespace, console: Console) -> int:
    p = load(args, console, check_files=False)
    svc = p.service
    if svc is None:
        raise UsageError(f"{p.spec.name}: no service is deployed; `run` it first")
    text = svc.get_logs(num_lines=args.tail)
    if text:
        console.always(text)
    if not args.follow:
        return 0
    record = svc.record
    log = Path(str(record.extra.get("log", "")))
    if not record.extra.get("log") or not log.is_file():
        raise UsageError(f"--follow needs a local log file; target {record.target!r} has none")
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            while True:
                chunk = f.read()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
