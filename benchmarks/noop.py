"""Wall time of `run` with nothing changed (a no-op that still probes the service), and of validate and plan.

    python benchmarks/noop.py [SPEC] [--repeat N]

Brings the spec's service up once (outside the timing), then times whole commands as a user runs
them: a fresh interpreter each time, so imports count.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(args: list[str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", *args], check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="specs/mnist.yaml")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "pipeline", "run", args.spec, "--quiet"], check=True)
    print(f"{'command':<34} {'min':>7} {'median':>7} {'max':>7}  (seconds, {args.repeat} runs)")
    for label, command in (
        ("run (nothing changed)", ["run", args.spec, "--quiet"]),
        ("plan", ["plan", args.spec]),
        ("validate", ["validate", args.spec]),
    ):
        t = timed(command, args.repeat)
        print(f"{label:<34} {min(t):7.3f} {statistics.median(t):7.3f} {max(t):7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
