"""The ray target against the local target on this machine: cold start, req/s, p50/p99 latency, memory.

Run from the repository root (root, with the ray extra installed):
    .venv/bin/python benchmarks/ray_vs_local.py [--duration 10] [--connections 16] [--json results.json]

Each configuration is a fresh throw-away project holding a copy of specs/mnist.yaml with deploy.target and the
resources set, brought up by `python -m pipeline run` (cold start = the deploy stage, and the whole run), loaded
with 1-image and 30-image bodies by two client processes of asyncio keep-alive connections, measured for memory
(PSS and RSS summed over every process of the service), then deleted. Ray binds ports on every interface (each
replica's gRPC server), so the whole benchmark runs inside a loopback-only network namespace (`unshare --net`),
re-executing itself there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NAME = "sklearn-mnist-svc"
CONFIGS = [  # (label, target, cpu_cores, ray settings)
    ("local, 1 worker", "local", 1, None),
    ("ray, 1 replica", "ray", 1, {"replicas": 1}),
    ("local, 2 workers", "local", 2, None),
    ("ray, 2 replicas", "ray", 1, {"replicas": 2}),
]


# -- load ---------------------------------------------------------------------------------------
async def _connection(
    host: str, port: int, request: bytes, until: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(int(head[9:12]))
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def _client(args: tuple[str, int, bytes, float, int], queue: Any) -> None:
    host, port, request, duration, connections = args
    latencies: list[float] = []
    errors: list[int] = []

    async def main() -> None:
        until = time.perf_counter() + duration
        await asyncio.gather(*(_connection(host, port, request, until, latencies, errors) for _ in range(connections)))

    asyncio.run(main())
    queue.put((latencies, errors))


def load(uri: str, body: bytes, duration: float, connections: int, processes: int = 2) -> dict[str, Any]:
    host_port, path = uri.split("//", 1)[1].split("/", 1)
    host, port = host_port.split(":")
    request = (
        f"POST /{path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    queue: Any = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(
            target=_client, args=((host, int(port), request, duration, connections // processes), queue)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=duration + 120) for _ in workers]
    for worker in workers:
        worker.join(30)
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(len(err) for _, err in results)
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / duration, 1),
        "non200": errors,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
    }


# -- one configuration ---------------------------------------------------------------------------
def _service_processes(record: dict[str, Any]) -> list[int]:
    import psutil

    if record["target"] == "ray":
        from pipeline.targets import ray_cluster

        return ray_cluster.processes(ray_cluster.Cluster.of(record["cluster"]))
    parent = psutil.Process(int(record["pid"]))
    return [parent.pid] + [child.pid for child in parent.children(recursive=True)]


def memory(record: dict[str, Any]) -> dict[str, Any]:
    import psutil

    pss = rss = 0
    pids = _service_processes(record)
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
        except psutil.Error:
            continue
        pss += info.pss
        rss += info.rss
    return {"processes": len(pids), "pss_mib": round(pss / 2**20), "rss_mib": round(rss / 2**20)}


def bodies() -> dict[int, bytes]:
    import numpy as np

    from pipeline import data

    dataset = data.load_dataset(
        ROOT / "examples" / "mnist" / "data" / "test-images.gz", ROOT / "examples" / "mnist" / "data" / "test-labels.gz"
    )
    rng = np.random.default_rng(42)
    return {
        n: json.dumps({"data": (dataset.X[rng.choice(len(dataset.X), n, replace=False)] / 255).tolist()}).encode()
        for n in (1, 30)
    }


def measure(
    label: str, target: str, cores: float, ray: dict | None, duration: float, connections: int
) -> dict[str, Any]:
    project = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        (project / "specs").mkdir()
        shutil.copytree(ROOT / "examples" / "mnist", project / "examples" / "mnist")
        text = (ROOT / "specs" / "mnist.yaml").read_text().replace("target: local", f"target: {target}")
        text = text.replace("cpu_cores: 1", f"cpu_cores: {cores}")
        if ray:
            text = text.replace("  local: {port: 0}", f"  local: {{port: 0}}\n  ray: {json.dumps(ray)}")
        spec = project / "specs" / "mnist.yaml"
        spec.write_text(text)
        env = {**os.environ, "PIPELINE_HOME": str(project / ".pipeline"), "NO_COLOR": "1"}
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(spec)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        whole = time.monotonic() - started
        if run.returncode != 0:
            raise SystemExit(f"{label}: run failed\n{run.stdout}\n{run.stderr}")
        deploy_s = float(re.search(r"^deploy\s+ran\s+([\d.]+)s", run.stdout, re.M).group(1))
        record = json.loads((project / ".pipeline" / NAME / "state.json").read_text())["service"]
        result: dict[str, Any] = {"config": label, "cold_start_deploy_s": deploy_s, "run_s": round(whole, 1)}
        result["idle_memory"] = memory(record)
        for n, body in bodies().items():
            load(record["scoring_uri"], body, 2, connections)  # warm-up
            result[f"{n}_image"] = load(record["scoring_uri"], body, duration, connections)
        result["loaded_memory"] = memory(record)
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "pipeline", "delete", str(spec)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        result["delete_s"] = round(time.monotonic() - started, 1)
        return result
    finally:
        shutil.rmtree(project, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per body size")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if os.environ.get("PIPELINE_BENCH_NETNS") != "1":
        if shutil.which("unshare") is None:
            raise SystemExit("needs unshare(1): Ray binds beyond loopback, so this runs in a network namespace only")
        command = " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
        return subprocess.run(
            ["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {command}"],
            env={**os.environ, "PIPELINE_BENCH_NETNS": "1"},
        ).returncode
    results = []
    for label, target, cores, ray in CONFIGS:
        result = measure(label, target, cores, ray, args.duration, args.connections)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(
        "\n| configuration | cold start (deploy) | 1 image req/s | p50 / p99 ms | 30 images req/s | p50 / p99 ms "
        "| memory PSS idle / loaded |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        one, thirty = r["1_image"], r["30_image"]
        idle, loaded = r["idle_memory"], r["loaded_memory"]
        print(
            f"| {r['config']} | {r['cold_start_deploy_s']:.1f} s | {one['rps']:,.0f} "
            f"| {one['p50_ms']} / {one['p99_ms']} "
            f"| {thirty['rps']:,.0f} | {thirty['p50_ms']} / {thirty['p99_ms']} "
            f"| {idle['pss_mib']} / {loaded['pss_mib']} MiB ({idle['processes']} processes) |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
