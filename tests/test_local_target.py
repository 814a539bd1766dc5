"""The local target through the CLI: auth keys, logs, a failing init(), a user's own score.py, a lying service."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import ROOT

SPEC = "specs/mnist.yaml"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def _state(project: Path) -> dict:
    return json.loads((project / ".pipeline" / "sklearn-mnist-svc" / "state.json").read_text())


def _post(uri: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(uri, data=body, headers={"Content-Type": "application/json"} | (headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _one_image() -> bytes:
    from pipeline import data

    ds = data.load_dataset(
        ROOT / "examples/mnist/data/test-images.gz", ROOT / "examples/mnist/data/test-labels.gz", scale=255
    )
    return json.dumps({"data": ds.rows(0, 1).tolist()}).encode()


def test_auth_keys_are_0600_masked_and_required(project, run_cli):
    _edit(project / SPEC, "auth: false", "auth: true")
    result = run_cli("run", SPEC)
    assert result.code == 0, result.out + result.err  # the smoke test sends the key itself
    keys_file = project / ".pipeline" / "sklearn-mnist-svc" / "service" / "keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    keys = json.loads(keys_file.read_text())
    uri = _state(project)["service"]["scoring_uri"]

    assert _post(uri, _one_image())[0] == 401
    assert _post(uri, _one_image(), {"Authorization": "Bearer wrong"})[0] == 401
    status, body = _post(uri, _one_image(), {"Authorization": f"Bearer {keys['secondary']}"})
    assert status == 200 and len(json.loads(body)) == 1

    masked = run_cli("status", SPEC)
    assert keys["primary"] not in masked.out and keys["primary"][:4] + "…" in masked.out
    shown = run_cli("status", SPEC, "--show-keys")
    assert keys["primary"] in shown.out and keys["secondary"] in shown.out
    everything = (
        run_cli("logs", SPEC, "-n", "1000").out
        + (project / "reports/sklearn-mnist-svc/report.json").read_text()
        + (project / "reports/sklearn-mnist-svc/report.md").read_text()
        + json.dumps(_state(project))
    )
    assert keys["primary"] not in everything and keys["secondary"] not in everything


def test_failing_init_shows_the_service_log_tail(project, run_cli):
    broken = project / "broken_score.py"
    broken.write_text(
        "def init():\n    raise RuntimeError('cannot find the model: it is on holiday')\n\n"
        "def run(raw_data):\n    return []\n"
    )
    _edit(project / SPEC, "  output: labels", "  output: labels\n  entry_script: ../broken_score.py")
    result = run_cli("run", SPEC)
    assert result.code == 1
    assert "deploy    failed" in result.out
    assert "cannot find the model: it is on holiday" in result.out  # the service's own words, not 'crashed'
    assert _state(project)["service"] is None


def test_users_own_tutorial_score_py_is_hosted_unchanged(project, run_cli):
    (project / "score.py").write_text((ROOT / "tests" / "data" / "score_tutorial.py").read_text())
    _edit(project / SPEC, "  output: labels", "  output: labels\n  entry_script: ../score.py")
    result = run_cli("run", SPEC)
    assert result.code == 0, result.out + result.err
    uri = _state(project)["service"]["scoring_uri"]
    status, body = _post(uri, _one_image())
    assert status == 200
    assert isinstance(json.loads(body), str)  # run() returned json.dumps(...): encoded again, as Azure does
    logs = run_cli("logs", SPEC, "-n", "5")
    assert logs.code == 0 and logs.out.strip()


def test_a_service_that_answers_wrong_digits_never_takes_traffic(project, run_cli):
    liar = project / "liar_score.py"
    liar.write_text(
        (ROOT / "tests" / "data" / "score_tutorial.py")
        .read_text()
        .replace("return json.dumps(y_hat.tolist())", "return json.dumps(((y_hat + 1) % 10).tolist())")
    )
    _edit(project / SPEC, "  output: labels", "  output: labels\n  entry_script: ../liar_score.py")
    result = run_cli("run", SPEC)
    assert result.code == 1
    # the new version is smoke-tested alone before the cutover: it fails there, and is never recorded
    line = next(row for row in result.out.splitlines() if row.startswith("deploy"))
    assert "failed" in line and "the new version failed before it took any traffic" in line
    assert "30 of 30 answers differ" in line  # every digit shifted
    assert _state(project)["service"] is None and not _state(project).get("candidate")
    assert "the single-image request for test image #" in line
    assert "answers differ from the local model's" in line and "test image #" in line
    assert "environment differs from the evaluated one" in line


def test_keys_survive_a_redeploy_and_go_with_delete(project, run_cli):
    _edit(project / SPEC, "auth: false", "auth: true")
    assert run_cli("run", SPEC).code == 0
    keys_file = project / ".pipeline" / "sklearn-mnist-svc" / "service" / "keys.json"
    keys = keys_file.read_text()
    redeployed = run_cli("run", SPEC, "--only", "deploy", "--force")
    assert redeployed.code == 0, redeployed.out
    assert keys_file.read_text() == keys  # clients keep working across a redeploy
    assert run_cli("delete", SPEC).code == 0
    assert not keys_file.exists()


def test_the_service_serves_its_own_copy_of_the_model(project, run_cli):
    assert run_cli("run", SPEC).code == 0
    record = _state(project)["service"]
    served = Path(record["model_file"])
    from pipeline import state as states

    # the state file names it relative to the spec's folder (@state/models/...); loading resolves it here
    assert _state(project)["stages"]["fetch"]["outputs"]["path"].startswith("@state/models/")
    store = Path(states.load(states.Paths.for_name("sklearn-mnist-svc"))["stages"]["fetch"]["outputs"]["path"])
    assert served != store and served.read_bytes() == store.read_bytes()
    # a later fetch replaces the store's file (e.g. a model that then fails the gate): the service's stays
    replacement = store.with_name("incoming")
    replacement.write_bytes(b"not the reviewed model")
    replacement.replace(store)
    assert served.read_bytes() == (ROOT / "examples/mnist/sklearn_mnist_model.pkl").read_bytes()
    assert "live" in run_cli("status", SPEC).out


def test_delete_status_and_logs_work_when_a_data_file_moved(project, run_cli):
    assert run_cli("run", SPEC).code == 0
    labels = project / "examples" / "mnist" / "data" / "test-labels.gz"
    labels.rename(labels.with_suffix(".moved"))
    assert run_cli("status", SPEC).code == 0
    assert run_cli("logs", SPEC).code == 0
    deleted = run_cli("delete", SPEC)
    assert deleted.code == 0 and "deleted" in deleted.out
    assert run_cli("run", SPEC).code == 2  # run still needs every file


def test_a_removed_report_is_written_again(project, run_cli):
    assert run_cli("run", SPEC, "--to", "evaluate").code == 0
    assert run_cli("run", SPEC, "--only", "report").code == 0
    import shutil

    shutil.rmtree(project / "reports")
    plan = json.loads(run_cli("plan", SPEC, "--only", "report", "--json").out)
    assert plan["steps"][-1]["action"] == "run" and "report.md is missing" in plan["steps"][-1]["reason"]
    assert run_cli("run", SPEC, "--only", "report").code == 0
    assert (project / "reports" / "sklearn-mnist-svc" / "report.md").is_file()


def test_serve_runs_the_service_in_the_foreground_until_interrupted(project):
    import os
    import re
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", SPEC, "--port", "0"],
        cwd=project,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        uri = None
        for line in proc.stderr:
            found = re.search(r"ready: \d+ worker\(s\) on (http://127\.0\.0\.1:\d+/score)", line)
            if found:
                uri = found.group(1)
                break
        assert uri, "the service never said it was ready"
        status, body = _post(uri, (ROOT / "examples/mnist/sample.json").read_bytes())
        assert status == 200 and json.loads(body) == [2, 5, 1]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_memory_limit_too_small_fails_the_deploy_as_a_container_would(project, run_cli):
    assert run_cli("run", SPEC).code == 0  # an earlier, healthy deploy writes to the same log
    _edit(project / SPEC, "memory_gb: 1", "memory_gb: 0.05")
    result = run_cli("run", SPEC)
    assert result.code == 1
    failure = result.out[result.out.index("deploy    failed") : result.out.index("smoke ")]
    assert "out of memory: worker" in failure and "limit 51 MB" in failure
    assert failure.count("starting 1 worker(s)") == 1  # only this deploy's lines, not the earlier one's
