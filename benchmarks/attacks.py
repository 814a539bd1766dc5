"""Good requests under hostile clients: how long a well-behaved client waits while the service is attacked.

    python benchmarks/attacks.py [--seconds 15] [--idle 42000]

Starts pipeline.serve as `run` configures it for specs/mnist.yaml with cpu_cores: 2 (two workers,
memory_gb: 1 as the hard limit, deploy.local's default timeouts and connection cap) and, for each attack,
sends one good 1-image request on a new connection every 50 ms while the attack runs, then prints the
good requests' latency (median, 99th percentile, worst), how many failed, the service's peak memory and
what its events file counted. Every socket goes to 127.0.0.x; nothing leaves the machine.

  idle       N connections that never send a byte (from 127.0.0.2-127.0.0.9: more than one source
             address's ephemeral ports), opened as fast as the machine allows
  slowloris  2,000 connections sending their headers a byte a second
  slow-body  2,000 connections that send headers for a 1 MB body, then a byte a second
  large      bodies of the largest accepted size, [[], [], ...] (the costliest to parse), six at a time
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peers import render_script  # noqa: E402


def start(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    from pipeline import spec as specs
    from pipeline.targets import local

    model_dir = work / "model"
    model_dir.mkdir()
    shutil.copy(ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl", model_dir)
    spec = specs.load(ROOT / "specs" / "mnist.yaml")
    config = local.service_config(spec, render_script(work).parent, model_dir, None, work / "ready.json", 0)
    config["workers"] = 2  # cpu_cores: 2
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
    while not (work / "ready.json").exists():
        if process.poll() is not None or time.monotonic() > until:
            raise SystemExit(f"the service did not start: {(work / 'service.log').read_text()}")
        time.sleep(0.1)
    return process, json.loads((work / "ready.json").read_text())


class Prober(threading.Thread):
    """A good client: one request on a new connection every 50 ms, each timed."""

    def __init__(self, port: int, body: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.request = (
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(self.request)
                    answer = b""
                    while chunk := sock.recv(65536):
                        answer += chunk
                if not answer.startswith(b"HTTP/1.1 200"):
                    self.failures.append(answer[:60].decode(errors="replace"))
                else:
                    self.latencies.append(time.perf_counter() - started)
            except OSError as exc:
                self.failures.append(type(exc).__name__)
            time.sleep(0.05)


def open_idle(port: int, count: int, stop: threading.Event, held: list[socket.socket]) -> None:
    for i in range(count):
        if stop.is_set():
            return
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((f"127.0.0.{2 + i % 8}", 0))
            sock.connect_ex(("127.0.0.1", port))
        except OSError:
            sock.close()
            time.sleep(0.01)
            continue
        held.append(sock)


def trickle(port: int, count: int, first: bytes, drip: bytes, stop: threading.Event, held: list[socket.socket]) -> None:
    """`count` connections that send `first`, then one byte of `drip` a second until closed or stopped."""
    for _ in range(count):
        sock = socket.socket()
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(first)
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        held.append(sock)
    while not stop.is_set():
        for sock in list(held):
            try:
                sock.send(drip[:1])
            except OSError:
                held.remove(sock)
                sock.close()
        stop.wait(1.0)


def peak_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--idle", type=int, default=42000)
    parser.add_argument("--only", default="idle,slowloris,slow-body,large")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle + 10000
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        args.idle = min(args.idle, hard - 5000)
    work = Path(tempfile.mkdtemp(prefix="attacks-"))
    process = None
    try:
        process, ready = start(work)
        port = int(ready["port"])
        good = json.dumps({"data": [[0.0] * 784]}).encode()
        limit = max(int(n) for n in re.findall(r"bodies up to (\d+) bytes", (work / "service.log").read_text()))
        costly = b'{"data": [' + b",".join([b"[]"] * ((limit - 20) // 3)) + b"]}"
        print(
            f"| attack ({args.seconds:g} s) | good requests | p50 | p99 | worst | failed | peak RSS, all "
            "processes | events counted |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for attack in args.only.split(","):
            stop = threading.Event()
            held: list[socket.socket] = []
            if attack == "idle":
                attacker = threading.Thread(target=open_idle, args=(port, args.idle, stop, held), daemon=True)
            elif attack == "slowloris":
                attacker = threading.Thread(
                    target=trickle, args=(port, 2000, b"POST /score HTTP/1.1\r\n", b"X", stop, held), daemon=True
                )
            elif attack == "slow-body":
                head = b'POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{"data": [['
                attacker = threading.Thread(target=trickle, args=(port, 2000, head, b"0", stop, held), daemon=True)
            else:

                def large(stop: threading.Event = stop) -> None:
                    import concurrent.futures
                    import urllib.request

                    def post() -> None:
                        request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=costly)
                        try:
                            urllib.request.urlopen(request, timeout=120).read()
                        except OSError:
                            pass

                    with concurrent.futures.ThreadPoolExecutor(6) as pool:
                        while not stop.is_set():
                            list(pool.map(lambda _: post(), range(6)))

                attacker = threading.Thread(target=large, daemon=True)
            before = json.loads((work / "ready.events.json").read_text())["counts"]
            pids = [process.pid, *ready["workers"]]
            for pid in pids:
                try:
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
                except OSError:
                    pass
            attacker.start()
            time.sleep(1.0)
            prober = Prober(port, good)
            prober.start()
            time.sleep(args.seconds)
            prober.stop.set()
            prober.join()
            stop.set()
            attacker.join(timeout=30)
            for sock in held:
                sock.close()
            time.sleep(1.5)  # the events of the last second reach the file
            after = json.loads((work / "ready.events.json").read_text())["counts"]
            counted = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
            ms = sorted(1000 * t for t in prober.latencies) or [float("nan")]
            p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
            print(
                f"| {attack} | {len(ms)} | {statistics.median(ms):.1f} ms | {p99:.1f} ms | {ms[-1]:.1f} ms "
                f"| {len(prober.failures)} | {peak_mb(pids):.0f} MB | "
                f"{', '.join(f'{k} {v}' for k, v in sorted(counted.items())) or '-'} |",
                flush=True,
            )
            ready = json.loads((work / "ready.json").read_text())
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
        if os.environ.get("ATTACKS_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
