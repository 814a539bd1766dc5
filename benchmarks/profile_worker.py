"""Where a worker's time goes: py-spy samples one worker of the service while wrk loads it, per body size.

    python benchmarks/profile_worker.py [--seconds 10] [--connections 32] [--native]

Starts pipeline.serve with the score.py that `render` writes for specs/mnist.yaml (two workers, as
cpu_cores: 2), drives it with wrk at 1-image and 30-image bodies, records one worker with py-spy
(`pip install py-spy`; it needs ptrace, as root does) and prints, per load, the functions with the most
samples: self (the function itself) and total (with what it calls), as shares of the worker's samples,
idle time included (py-spy --idle), so "idle" is the time the worker had nothing to do.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve import WRK_SCRIPT, read_idx  # noqa: E402

# run()'s own two parts: a sample with one of these frames in its stack is spent on that part (breakdown())
PARTS = (
    ("parse_rows (score.py)", "run()'s parse: parse_rows()"),
    ("predict_rows (score.py)", "run()'s predict: predict_rows()"),
)


def start(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    from benchmarks.peers import render_script

    model_dir = work / "model"
    model_dir.mkdir()
    shutil.copy(ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl", model_dir)
    ready = work / "ready.json"
    config = {
        "entry_script": str(render_script(work)),
        "model_dir": str(model_dir),
        "workers": 2,
        "ready_file": str(ready),
        "features": 784,
        "memory_limit_mb": 1024,
        "request_timeout_ms": 5000,
    }
    (work / "config.json").write_text(json.dumps(config))
    with open(work / "service.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve", str(work / "config.json")],
            cwd=work,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    until = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > until:
            raise SystemExit(f"the service did not start: {(work / 'service.log').read_text()}")
        time.sleep(0.1)
    return process, json.loads(ready.read_text())


def busiest(pids: list[int]) -> int:
    """The worker that used the most CPU over half a second (one connection reaches only one of them)."""
    import psutil

    def cpu(pid: int) -> float:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)

    before = {pid: cpu(pid) for pid in pids}
    time.sleep(0.5)
    return max(pids, key=lambda pid: cpu(pid) - before[pid])


def record(pid: int, seconds: int, output: Path, native: bool = False) -> None:
    """py-spy's samples of one process, idle time included, as raw (collapsed) stacks in `output`."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "500"]
    command += ["--format", "raw", "--idle", "--output", str(output)]
    # py-spy reads the stacks without stopping the process, except for C frames, which it must stop it to unwind
    command.append("--native" if native else "--nonblocking")
    subprocess.run(command, check=True, capture_output=True)


def stacks(raw: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw stacks as (frames outermost first, named "function (file)"; samples)."""
    out = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        # a function's frame is "name (path:line)"; anything else (a process or thread py-spy names) is left out
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")"
            for f in stack.split(";")
            if " (" in f and f.endswith(")")
        ]
        if frames:
            out.append((frames, int(count)))
    return out


def breakdown(raw: Path) -> dict[str, float]:
    """The worker's time by what it was spent on, as shares of all its samples: run()'s parts (PARTS), writing
    the answer (ScoringApp._answer's own time is its one send() call), the event loop's own time (uvloop in C:
    at one connection, mostly waiting in epoll for the client's next request) and the rest of the host."""
    counts: collections.Counter[str] = collections.Counter()
    for frames, n in stacks(raw):
        part = next((label for frame, label in PARTS if frame in frames), None)
        if part is None:
            leaf = frames[-1]
            if leaf.startswith("Runner.run ("):
                part = "the event loop's own time (waiting for sockets, mostly)"
            elif leaf.startswith("ScoringApp._answer ("):
                part = "writing the answer (its send() call)"
            else:
                part = "the rest of the host (HTTP parsing, checks, batching, headers, log)"
        counts[part] += n
    samples = sum(counts.values()) or 1
    return {part: n / samples for part, n in counts.most_common()}


def summarize(raw: Path, top: int) -> str:
    """py-spy's raw (collapsed) stacks -> the functions with most self and total samples."""
    self_count: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for frames, n in stacks(raw):
        samples += n
        self_count[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples", "", "| self | function |", "|---:|---|"]
    lines += [f"| {n / samples:.1%} | `{name}` |" for name, n in self_count.most_common(top)]
    lines += ["", "| total | function |", "|---:|---|"]
    lines += [f"| {n / samples:.1%} | `{name}` |" for name, n in total.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too (numpy, orjson)")
    args = parser.parse_args()
    for tool in ("wrk", "py-spy"):
        if shutil.which(tool) is None:
            print(f"needs {tool} on PATH", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="profile-worker-"))
    process = None
    try:
        process, ready = start(work)
        url = str(ready["scoring_uri"])
        images = read_idx(ROOT / "examples" / "mnist" / "data" / "test-images.gz", 16).reshape(-1, 784) / 255.0
        rng = np.random.default_rng(42)
        for count in (1, 30):
            body = work / f"body{count}.json"
            body.write_text(json.dumps({"data": images[rng.choice(len(images), count, replace=False)].tolist()}))
            lua = work / f"post{count}.lua"
            lua.write_text(WRK_SCRIPT % body)
            load = subprocess.Popen(
                [
                    "wrk",
                    f"-t{min(2, args.connections)}",
                    f"-c{args.connections}",
                    f"-d{args.seconds + 3}s",
                    "-s",
                    str(lua),
                    url,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)
            worker = busiest([int(pid) for pid in ready["workers"]])  # type: ignore[attr-defined]
            raw = work / f"profile{count}.txt"
            record(worker, args.seconds, raw, args.native)
            out, _ = load.communicate(timeout=120)
            result = next((line for line in out.splitlines() if line.startswith("RESULT ")), "")
            print(f"\n## {count}-image bodies, {args.connections} connections, worker {worker}: {result[7:]}\n")
            print(summarize(raw, args.top))
            print("\n| share | spent on |\n|---:|---|")
            print("\n".join(f"| {share:.1%} | {part} |" for part, share in breakdown(raw).items()))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
