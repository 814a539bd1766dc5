"""Rolling updates of the local target under load: failed requests, the longest gap, the time to cutover.

Run from the repository root:  .venv/bin/python benchmarks/rollout.py [--updates 3] [--connections 8 32]

In a throw-away copy of the project it runs specs/mnist.yaml once, then for each connection count starts
that many keep-alive clients (benchmarks/loadgen.py) and applies `--updates` tag changes with `run`,
one after the other. For every update it reports the requests that failed (non-200 or a broken
connection), the longest time between two successful answers during the update, and the time from the
start of `run` to the cutover (the moment the new version's workers serve the service's port, from the
service's own log).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.loadgen import Load

ROOT = Path(__file__).resolve().parents[1]
SPEC = "specs/mnist.yaml"
LIVE = re.compile(r"^(\S+) \d+ INFO supervisor \d+: live: ", re.M)


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def _cutovers(log: Path) -> list[float]:
    """Wall-clock times at which a version went live, from the service log's own timestamps."""
    out = []
    for stamp in LIVE.findall(log.read_text(encoding="utf-8", errors="replace")):
        out.append(datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").timestamp())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3, help="tag changes per connection count (default 3)")
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pipeline-rollout-"))
    project = work / "project"
    (project / "specs").mkdir(parents=True)
    (project / ".git").mkdir()  # the project root: state and reports stay inside the copy
    shutil.copytree(ROOT / "examples" / "mnist", project / "examples" / "mnist")
    shutil.copy(ROOT / SPEC, project / SPEC)
    spec = project / SPEC
    rows = []
    try:
        first = _cli(project, "run", SPEC)
        if first.returncode:
            print(first.stdout + first.stderr, file=sys.stderr)
            return 1
        uri = _cli(project, "status", SPEC, "--uri").stdout.strip()
        body = (ROOT / "examples" / "mnist" / "sample.json").read_bytes()
        log = project / ".pipeline" / "sklearn-mnist-svc" / "service" / "service.log"
        version = 0
        for connections in args.connections:
            load = Load(uri, body, connections=connections).start()
            try:
                load.wait_for(500)
                for _ in range(args.updates):
                    version += 1
                    text = spec.read_text()
                    spec.write_text(re.sub(r"method: [^,}]+", f"method: v{version}", text))
                    failed_before, seen = load.figures.failed, len(_cutovers(log))
                    start_wall, start = time.time(), time.monotonic()
                    result = _cli(project, "run", SPEC)
                    stop = time.monotonic()
                    if result.returncode:
                        print(result.stdout + result.stderr, file=sys.stderr)
                        return 1
                    load.wait_for(load.figures.ok + 200)
                    cutover = _cutovers(log)[seen:]
                    rows.append(
                        {
                            "connections": connections,
                            "failed": load.figures.failed - failed_before,
                            "longest_gap_ms": round(load.figures.longest_gap(start, stop) * 1000, 1),
                            "to_cutover_s": round(cutover[0] - start_wall, 2) if cutover else None,
                            "run_s": round(stop - start, 2),
                            "uri_unchanged": _cli(project, "status", SPEC, "--uri").stdout.strip() == uri,
                        }
                    )
            finally:
                figures = load.stop()
            rows.append(
                {
                    "connections": connections,
                    "total_ok": figures.ok,
                    "total_failed": figures.failed,
                    "reconnects": figures.reconnects,
                }
            )
    finally:
        _cli(project, "delete", SPEC)
        shutil.rmtree(work, ignore_errors=True)
    print(
        "| connections | update | failed requests | longest gap (ms) | run to cutover (s) | whole run (s) | address |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    for i, row in enumerate(r for r in rows if "failed" in r):
        print(
            f"| {row['connections']} | {i % args.updates + 1} | {row['failed']} | {row['longest_gap_ms']} | "
            f"{row['to_cutover_s']} | {row['run_s']} | {'unchanged' if row['uri_unchanged'] else 'MOVED'} |"
        )
    for row in (r for r in rows if "total_ok" in r):
        print(
            f"{row['connections']} connections: {row['total_ok']:,} answered, {row['total_failed']} failed, "
            f"{row['reconnects']} reconnects after Connection: close"
        )
    gaps = [r["longest_gap_ms"] for r in rows if "longest_gap_ms" in r]
    if gaps:
        print(f"longest gap, median over updates: {statistics.median(gaps)} ms; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r.get("failed", 0) == 0 and r.get("uri_unchanged", True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
