"""Scoring-service benchmark: Microsoft's azureml-inference-server-http against pipeline.serve, with wrk.

Run from the repository root:  .venv/bin/python benchmarks/serve.py [--duration 5] [--repeat 3] [--quick] [--json F]

Configurations, two workers each, all on 127.0.0.1, the same model file, measured in interleaved rounds:
  a  Microsoft's server (gunicorn + Flask, its CLI's gunicorn settings) hosting the tutorial's score.py
  b  pipeline.serve hosting the same unchanged tutorial score.py (run() per request)
  c  pipeline.serve hosting the score.py that `render` writes for specs/mnist.yaml
     (parse_rows/predict_rows: micro-batching): the product's own path
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
MNIST = Path(os.environ.get("MNIST_DIR", ROOT / "examples" / "mnist" / "data"))
EXAMPLE_MODEL = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"
WORKERS = 2

WRK_SCRIPT = """
wrk.method = "POST"
local f = io.open("%s", "rb")
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "duration_us": %%d, "non2xx": %%d, '
    .. '"socket_errors": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as handle:
        return np.frombuffer(handle.read(), np.uint8, offset=offset)


def prepare(workdir: Path) -> tuple[Path, dict[int, Path]]:
    """The model (the example's, else a multinomial LogisticRegression trained here) and the bodies."""
    model_dir = workdir / "model"
    model_dir.mkdir()
    images = read_idx(MNIST / "test-images.gz", 16).reshape(-1, 784) / 255.0
    if EXAMPLE_MODEL.exists():
        shutil.copy(EXAMPLE_MODEL, model_dir / "sklearn_mnist_model.pkl")
    else:
        import joblib
        from sklearn.linear_model import LogisticRegression

        train = read_idx(MNIST / "train-images.gz", 16).reshape(-1, 784) / 255.0
        labels = read_idx(MNIST / "train-labels.gz", 8)
        model = LogisticRegression(C=100, solver="lbfgs", max_iter=1000).fit(train, labels)
        joblib.dump(model, model_dir / "sklearn_mnist_model.pkl")
    rng = np.random.default_rng(42)
    bodies = {}
    for count in (1, 30):
        rows = images[rng.choice(len(images), count, replace=False)]
        bodies[count] = workdir / f"body{count}.json"
        bodies[count].write_text(json.dumps({"data": rows.tolist()}))
    return model_dir, bodies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, deadline_s: float = 60) -> None:
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {url} did not come up")


def start_microsoft(script: Path, model_dir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "AZUREML_ENTRY_SCRIPT": str(script),
        "AML_APP_ROOT": str(script.parent),
        "AZUREML_MODEL_DIR": str(model_dir),
    }
    # The settings its own CLI (azmlinfsrv -> amlserver.run) gives gunicorn; its CLI binds 0.0.0.0 only.
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        "-w",
        str(WORKERS),
        "-b",
        f"127.0.0.1:{port}",
        "--timeout",
        "300",
        "--access-logfile",
        "-",
        "--error-logfile",
        "/dev/null",
        "azureml_inference_server_http.server.entry:app",
    ]
    log = open(workdir / "microsoft.log", "wb")  # noqa: SIM115 - the server writes to it until it is stopped
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    wait_http(f"http://127.0.0.1:{port}/")
    time.sleep(1.0)  # the second worker finishes init() a moment after the first answers
    return process, f"http://127.0.0.1:{port}/score"


def start_ours(script: Path, model_dir: Path, workdir: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    ready = workdir / f"{name}.ready.json"
    config = {
        "entry_script": str(script),
        "model_dir": str(model_dir),
        "workers": WORKERS,
        "port": 0,
        "ready_file": str(ready),
    }
    (workdir / f"{name}.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - the server writes to it until it is stopped
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.serve", str(workdir / f"{name}.json")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    until = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > until:
            raise SystemExit(f"pipeline.serve did not start; see {workdir / f'{name}.log'}")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())["scoring_uri"]


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tree_rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def run_wrk(url: str, lua: Path, connections: int, duration: int) -> dict[str, Any]:
    command = [
        "wrk",
        "-t",
        str(min(2, connections)),
        "-c",
        str(connections),
        "-d",
        f"{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk failed against {url}: {done.stdout}{done.stderr}")
    result = json.loads(line[len("RESULT ") :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


# the tutorial's script, and (set in main) the product's rendered one, under the names the tables use
SCRIPTS: dict[str, Path] = {
    "score_tutorial": DATA / "score_tutorial.py",
    "score_rendered": DATA / "score_fast.py",
}  # replaced by the rendered one in main


def render_product_script(workdir: Path) -> Path:
    """score.py exactly as `python -m pipeline render specs/mnist.yaml` writes it."""
    from pipeline import render, spec

    folder = workdir / "rendered"
    render.write_files(folder, render.render(spec.load(ROOT / "specs" / "mnist.yaml")))
    return folder / "score.py"


def in_process_timings(model_dir: Path, bodies: dict[int, Path]) -> dict[str, float]:
    """Median run() time in this process, the floor an HTTP host adds its overhead to (ms)."""
    import importlib.util

    os.environ["AZUREML_MODEL_DIR"] = str(model_dir)
    timings = {}
    for name in ("score_tutorial", "score_rendered"):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS[name])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.init()
        for count, path in bodies.items():
            raw = path.read_text()
            samples = []
            for _ in range(300 if count == 1 else 100):
                started = time.perf_counter()
                module.run(raw)
                samples.append((time.perf_counter() - started) * 1000)
            timings[f"{name} {count}"] = statistics.median(samples)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each cell reports its median (default 3)")
    parser.add_argument("--quick", action="store_true", help="2 s per run, one round")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("benchmarks/serve.py needs wrk on PATH", file=sys.stderr)
        return 2
    duration, repeat = (2, 1) if args.quick else (args.duration, args.repeat)
    workdir = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        model_dir, bodies = prepare(workdir)
        luas = {}
        for count, body in bodies.items():
            luas[count] = workdir / f"post{count}.lua"
            luas[count].write_text(WRK_SCRIPT % body)
        timing_rounds: list[dict[str, float]] = []
        # All three run at once (idle ones cost nothing) so each cell's a, b and c are measured
        # seconds apart, in rounds: on a shared machine, noise then hits them alike.
        SCRIPTS["score_rendered"] = render_product_script(workdir)
        servers["a"] = start_microsoft(SCRIPTS["score_tutorial"], model_dir, workdir)
        servers["b"] = start_ours(SCRIPTS["score_tutorial"], model_dir, workdir, "ours-tutorial")
        servers["c"] = start_ours(SCRIPTS["score_rendered"], model_dir, workdir, "ours-rendered")
        results: dict[str, Any] = {"runs": {}, "rss_mb": {}, "duration_s": duration, "repeat": repeat}
        for key, (process, _url) in servers.items():
            results["rss_mb"][key] = {"idle": tree_rss_mb(process.pid)}
        samples: dict[str, list[dict[str, Any]]] = {}
        for round_index in range(repeat):
            timing_rounds.append(in_process_timings(model_dir, bodies))  # measured in rounds too: same noise
            for count in (1, 30):
                for connections in (1, 8, 32):
                    for key, (_process, url) in servers.items():
                        run = run_wrk(url, luas[count], connections, duration)
                        samples.setdefault(f"{key} {count} {connections}", []).append(run)
                        print(
                            f"  round {round_index + 1}: {key} {count:>2} img {connections:>2} conn: "
                            f"{run['rps']:8.0f} req/s",
                            file=sys.stderr,
                        )
        for cell, runs in samples.items():
            median = sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]
            results["runs"][cell] = {
                **median,
                "all_rps": [round(run["rps"]) for run in runs],
                "non2xx": sum(run["non2xx"] for run in runs),
                "socket_errors": sum(run["socket_errors"] for run in runs),
            }
        for key, (process, _url) in servers.items():
            results["rss_mb"][key]["after_load"] = tree_rss_mb(process.pid)
        results["timings_ms"] = {name: statistics.median(t[name] for t in timing_rounds) for name in timing_rounds[0]}
        print(format_table(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        for process, _url in servers.values():
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def format_table(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = [
        "| body | conns | a: MS + tutorial req/s | b: ours + tutorial req/s | c: ours + rendered req/s | b/a | c/a "
        "| p50 a / b / c (ms) | p99 a / b / c (ms) | non-2xx a/b/c |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for count in (1, 30):
        for connections in (1, 8, 32):
            a, b, c = (runs[f"{key} {count} {connections}"] for key in "abc")
            p50 = " / ".join(f"{r['p50_us'] / 1000:.2f}" for r in (a, b, c))
            p99 = " / ".join(f"{r['p99_us'] / 1000:.2f}" for r in (a, b, c))
            errors = "/".join(str(r["non2xx"] + r["socket_errors"]) for r in (a, b, c))
            lines.append(
                f"| {count} img | {connections} | {a['rps']:.0f} | {b['rps']:.0f} | {c['rps']:.0f} "
                f"| {b['rps'] / a['rps']:.2f}x | {c['rps'] / a['rps']:.2f}x | {p50} | {p99} | {errors} |"
            )
    rss = results["rss_mb"]
    lines += ["", "| server process tree RSS (MB) | a | b | c |", "|---|---|---|---|"]
    for phase in ("idle", "after_load"):
        lines.append(f"| {phase} | " + " | ".join(f"{rss[key][phase]:.0f}" for key in "abc") + " |")
    t = results["timings_ms"]
    lines += ["", "| in-process run() median (ms) | 1 img | 30 img |", "|---|---|---|"]
    for name in ("score_tutorial", "score_rendered"):
        lines.append(f"| {name}.py | {t[f'{name} 1']:.3f} | {t[f'{name} 30']:.3f} |")
    # What the host adds to run() for one client: HTTP, the body's transfer, JSON encoding.
    for key, name in (("a", "score_tutorial"), ("b", "score_tutorial"), ("c", "score_rendered")):
        extra = [runs[f"{key} {count} 1"]["p50_us"] / 1000 - t[f"{name} {count}"] for count in (1, 30)]
        lines.append(f"| {key}: p50 at 1 conn minus {name}.py run() | {extra[0]:+.3f} | {extra[1]:+.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
