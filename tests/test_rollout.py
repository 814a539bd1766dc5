"""Safe rollouts of the local target, under a real load of 8 keep-alive connections.

Every update starts the new version beside the old on the same port, smoke-tests it alone, then cuts
over while the old one drains: no request fails, the address never moves, and a bad update leaves the
old version serving. A run killed with SIGKILL in the middle leaves nothing `delete` cannot stop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.loadgen import Load
from pipeline.targets import local_host
from tests.conftest import EXAMPLE_DATA, ROOT

SPEC = "specs/mnist.yaml"
SERVICE = Path(".pipeline") / "sklearn-mnist-svc" / "service"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The example model retrained with another C (the tutorial's --reg 0.01): a real new model."""
    out = tmp_path_factory.mktemp("model") / "sklearn_mnist_model.pkl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mnist" / "train.py"), "--reg", "0.01", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout.split("sha256 ")[1].split()[0]


def _disagreeing_body(old: Path, new: Path) -> tuple[bytes, bytes, bytes]:
    """A request whose answer tells the two models apart, and what each answers."""
    import joblib
    import numpy as np

    from pipeline import data

    ds = data.load_dataset(EXAMPLE_DATA / "test-images.gz", EXAMPLE_DATA / "test-labels.gz", scale=255)
    X = ds.rows(0, ds.n)
    a, b = joblib.load(old).predict(X), joblib.load(new).predict(X)
    rows = np.flatnonzero(a != b)[:3]
    assert len(rows) == 3
    body = json.dumps({"data": X[rows].tolist()}).encode()
    return (
        body,
        json.dumps(a[rows].tolist()).replace(" ", "").encode(),
        json.dumps(b[rows].tolist()).replace(" ", "").encode(),
    )


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def _hosts(project: Path) -> list[int]:
    return local_host.hosts_under(project / SERVICE)


def test_updates_never_drop_a_request_nor_move_the_address_and_a_bad_one_keeps_the_old(project, run_cli, retrained):
    assert run_cli("run", SPEC).code == 0
    uri = run_cli("status", SPEC, "--uri").out.strip()
    new_model, new_sha = retrained
    body, old_answer, new_answer = _disagreeing_body(project / "examples/mnist/sklearn_mnist_model.pkl", new_model)
    load = Load(uri, body, connections=8).start()
    try:
        load.wait_for(200)
        spec = project / SPEC
        steps = []

        _edit(spec, "method: sklearn}", "method: sklearn, owner: ml-team}")  # a tag
        plan = run_cli("plan", SPEC)
        assert "(rolling: new workers beside the old, then cutover; address unchanged)" in plan.out
        steps.append(("tag", run_cli("run", SPEC)))
        _edit(spec, "memory_gb: 1", "memory_gb: 2")  # the resources
        steps.append(("memory_gb", run_cli("run", SPEC)))
        (project / "examples/retrained").mkdir()  # a new model, under the file name the tutorial's score.py loads
        shutil.copy(new_model, project / "examples/retrained/sklearn_mnist_model.pkl")
        _edit(
            spec,
            "source: ../examples/mnist/sklearn_mnist_model.pkl",
            "source: ../examples/retrained/sklearn_mnist_model.pkl",
        )
        _edit(spec, "sha256: f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4", f"sha256: {new_sha}")
        before_cutover = time.monotonic()
        steps.append(("model", run_cli("run", SPEC)))
        after_cutover = time.monotonic()
        for name, result in steps:
            assert result.code == 0, (name, result.out + result.err)
            assert "deploy    ran" in result.out, name
            assert run_cli("status", SPEC, "--uri").out.strip() == uri, name  # the address never moved

        # two bad updates: workers that cannot start, and a version that fails its smoke test
        _edit(spec, "memory_gb: 2", "memory_gb: 0.1")
        starved = run_cli("run", SPEC)
        assert starved.code == 1 and "previous version is still serving" in starved.out, starved.out
        _edit(spec, "memory_gb: 0.1", "memory_gb: 2")
        liar = project / "liar_score.py"
        liar.write_text(
            (ROOT / "tests/data/score_tutorial.py")
            .read_text()
            .replace("return json.dumps(y_hat.tolist())", "return json.dumps(((y_hat + 1) % 10).tolist())")
        )
        _edit(spec, "  output: labels", "  output: labels\n  entry_script: ../liar_score.py")
        lying = run_cli("run", SPEC)
        assert lying.code == 1 and "answers differ from the local model's" in lying.out, lying.out
        assert run_cli("status", SPEC, "--uri").out.strip() == uri
        load.wait_for(load.figures.ok + 200)  # still answering, with the last good version
        last = load.figures.answers[-1][1]
    finally:
        figures = load.stop()
    assert figures.failed == 0, dict(figures.errors)
    assert set(figures.bodies()) <= {old_answer, new_answer}
    assert last == new_answer  # the last good version: the retrained model
    assert all(b == old_answer for t, b in figures.answers if t < before_cutover)
    assert all(b == new_answer for t, b in figures.answers if t > after_cutover)
    assert len(_hosts(project)) == 1  # the rejected versions were stopped
    assert figures.reconnects > 0  # old versions told their clients to reconnect, to the new one


def _run_detached(project: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", SPEC],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("moment", ["staged", "both live"])
def test_a_run_killed_during_the_overlap_leaves_nothing_delete_cannot_stop(project, run_cli, moment):
    assert run_cli("run", SPEC).code == 0
    first = _hosts(project)
    _edit(project / SPEC, "method: sklearn}", "method: changed}")
    proc = _run_detached(project)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = [pid for pid in _hosts(project) if pid not in first]
        ready = [
            json.loads(p.read_text())
            for p in (project / SERVICE).glob("releases/*/ready.json")
            if p.read_text().strip()
        ]
        if new and moment == "staged" and any(r["pid"] in new and not r["live"] for r in ready):
            break
        if (
            new
            and moment == "both live"
            and any(r["pid"] in new and r["live"] for r in ready)
            and all(pid in _hosts(project) for pid in first)
        ):
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail(f"the rollout never reached '{moment}'")
    proc.kill()  # SIGKILL: no cleanup of any kind runs
    proc.wait(10)
    assert len(_hosts(project)) == 2  # old and new both run, whatever the state says
    status = run_cli("status", SPEC)
    assert "process(es) of an unfinished deploy still run" in status.out or moment == "both live", status.out
    deleted = run_cli("delete", SPEC)
    assert deleted.code == 0, deleted.out + deleted.err
    assert _hosts(project) == []  # every process the killed run started is stopped


def test_after_a_killed_run_the_next_run_finishes_the_job(project, run_cli):
    assert run_cli("run", SPEC).code == 0
    _edit(project / SPEC, "method: sklearn}", "method: changed}")
    proc = _run_detached(project)
    deadline = time.monotonic() + 60
    while len(_hosts(project)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    again = run_cli("run", SPEC)
    assert again.code == 0, again.out + again.err
    assert len(_hosts(project)) == 1  # the stray from the killed run was stopped, the new version serves
    assert "healthy" in run_cli("status", SPEC).out


def test_rollback_brings_back_the_previous_release_without_dropping_a_request(project, run_cli):
    assert run_cli("rollback", SPEC).code == 2  # nothing deployed, nothing kept
    assert run_cli("run", SPEC).code == 0
    refused = run_cli("rollback", SPEC)
    assert refused.code == 2 and "no earlier release to roll back to (the live one is release 1)" in refused.err
    _edit(project / SPEC, "method: sklearn}", "method: sklearn-v2}")
    assert run_cli("run", SPEC).code == 0
    uri = run_cli("status", SPEC, "--uri").out.strip()
    status = run_cli("status", SPEC, "--json")
    assert [(r["n"], r["live"]) for r in json.loads(status.out)["releases"]] == [(2, True), (1, False)]
    body = (ROOT / "examples" / "mnist" / "sample.json").read_bytes()
    load = Load(uri, body, connections=8).start()
    try:
        load.wait_for(200)
        back = run_cli("rollback", SPEC)
        assert back.code == 0, back.out + back.err
        assert "rolled back to release 1" in back.out
        load.wait_for(load.figures.ok + 200)
    finally:
        figures = load.stop()
    assert figures.failed == 0, dict(figures.errors)
    assert run_cli("status", SPEC, "--uri").out.strip() == uri
    state = json.loads((project / ".pipeline" / "sklearn-mnist-svc" / "state.json").read_text())
    assert state["service"]["digest"] == state["releases"][0]["digest"]  # release 1 runs again
    assert state["service"]["inputs"]["tags"]["method"] == "sklearn"
    plan = run_cli("plan", SPEC)
    assert "~ tags.method: 'sklearn' -> 'sklearn-v2'" in plan.out  # the spec in git still says v2
    forward = run_cli("rollback", SPEC, "--to", "2")
    assert forward.code == 0 and "rolled back to release 2" in forward.out
    steps = {s["stage"]: s for s in json.loads(run_cli("plan", SPEC, "--json").out)["steps"]}
    assert steps["deploy"]["deploy"]["action"] == "no-op"  # the live service is what the spec says again
    assert steps["smoke"]["action"] == "run"  # and the smoke stage tests it once more on the next run
    assert run_cli("rollback", SPEC, "--to", "9").code == 2
    shutil.rmtree(project / ".pipeline" / "sklearn-mnist-svc" / "releases" / "1")
    gone = run_cli("rollback", SPEC, "--to", "1")
    assert gone.code == 2 and "release 1's files are not on this machine" in gone.err
    assert len(_hosts(project)) == 1
