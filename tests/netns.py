"""Tests that run a real Ray cluster run inside a loopback-only network namespace, re-executed under `unshare --net`.

Ray binds some ports on every interface (each Serve replica's gRPC server), so such tests never run on the
machine's own network: the outer test re-runs pytest on its module under `unshare --net` with `lo` up (nothing
can reach in or out), where PIPELINE_TEST_NETNS=1 lets the inner tests run, and reports the inner run as one test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

INSIDE = os.environ.get("PIPELINE_TEST_NETNS") == "1"
inside_only = pytest.mark.skipif(
    not INSIDE,
    reason="runs inside a loopback-only network namespace, started by "
    "the module's *_in_a_loopback_only_network_namespace test",
)


def problem() -> str | None:
    """Why a loopback-only network namespace cannot be made here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8) for a loopback-only network namespace"
    probe = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here (unshare --net: {probe.stderr.strip() or probe.returncode})"
    return None


def rerun_inside(module: str, select: str, timeout_s: float = 1200) -> str:
    """Run `pytest MODULE -k SELECT` in a new loopback-only network namespace; fail with its output if it fails."""
    pytest.importorskip("ray.serve", reason="needs the ray extra: pip install '.[ray]'")
    why = problem()
    if why:
        pytest.skip(why)
    inner = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        str(Path(module).resolve().relative_to(ROOT)),
        "-k",
        select,
    ]
    script = "ip link set lo up && exec " + " ".join(f"'{a}'" for a in inner)
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PIPELINE_TEST_NETNS": "1"},
        timeout=timeout_s,
    )
    print(result.stdout[-20000:], result.stderr[-5000:])
    assert result.returncode == 0, (
        f"the tests inside the namespace failed:\n{result.stdout[-8000:]}\n{result.stderr[-3000:]}"
    )
    last = result.stdout.strip().splitlines()[-1]
    assert " passed" in last and "skipped" not in last, last  # every inner test ran
    return result.stdout
