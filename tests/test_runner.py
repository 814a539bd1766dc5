"""The runner end to end on a real project folder: plan, run, skip, force, selection, drift, state, lock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SPEC = "specs/mnist.yaml"


def _state(project: Path) -> dict:
    return json.loads((project / ".pipeline" / "sklearn-mnist-svc" / "state.json").read_text())


def _statuses(out: str) -> dict[str, str]:
    stages = ("check", "fetch", "evaluate", "render", "deploy", "smoke", "report")
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in stages and len(parts) > 1:
            found[parts[0]] = parts[1] if parts[1] != "not" else "not run"
    return found


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_full_run_then_noop_then_tag_change(project, run_cli):
    first = run_cli("run", SPEC)
    assert first.code == 0, first.err + first.out
    assert _statuses(first.out) == dict.fromkeys(
        ("check", "fetch", "evaluate", "render", "deploy", "smoke", "report"), "ran"
    )
    assert "accuracy 0.8870" in first.out and "Overall accuracy: 0.8870" in first.out
    service = _state(project)["service"]
    assert service["scoring_uri"].startswith("http://127.0.0.1:")
    assert run_cli("status", SPEC, "--uri").out == service["scoring_uri"] + "\n"

    second = run_cli("run", SPEC)
    assert second.code == 0
    assert set(_statuses(second.out).values()) == {"skipped"}
    assert "healthy at" in second.out
    assert _state(project)["service"]["pid"] == service["pid"]  # nothing was redeployed

    plan = run_cli("plan", SPEC, "--detailed-exitcode")
    assert plan.code == 0 and "No changes" in plan.out

    _edit(project / SPEC, "method: sklearn}", "method: sklearn-v2, owner: ml-team}")
    plan = run_cli("plan", SPEC, "--detailed-exitcode")
    assert plan.code == 2, plan.err
    assert "~ tags.method: 'sklearn' -> 'sklearn-v2'" in plan.out
    assert "+ tags.owner: 'ml-team'" in plan.out
    assert "deploy    update" in plan.out
    changed = [row for row in plan.out.splitlines() if re.match(r"\s+[~+-] [\w.]+: ", row)]
    assert len(changed) == 2, changed  # exactly the two tag fields, nothing else
    steps = {s["stage"]: s["action"] for s in json.loads(run_cli("plan", SPEC, "--json").out)["steps"]}
    assert steps == {
        "check": "skip",
        "fetch": "skip",
        "evaluate": "skip",
        "render": "run",
        "deploy": "run",
        "smoke": "run",
        "report": "run",
    }

    third = run_cli("run", SPEC)
    assert third.code == 0, third.out + third.err
    assert _statuses(third.out)["evaluate"] == "skipped" and _statuses(third.out)["deploy"] == "ran"
    report = json.loads((project / "reports" / "sklearn-mnist-svc" / "report.json").read_text())
    assert report["evaluation"]["accuracy"] == pytest.approx(0.887)
    assert report["smoke"]["agree"] is True
    md = (project / "reports" / "sklearn-mnist-svc" / "report.md").read_text()
    assert "| **5** |" in md and "confusion.png" in md and "samples.png" in md
    assert (project / "reports" / "sklearn-mnist-svc" / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_killed_service_is_replaced_and_delete_is_idempotent(project, run_cli):
    assert run_cli("run", SPEC).code == 0
    pid = _state(project)["service"]["pid"]
    os.killpg(pid, signal.SIGKILL)
    deadline = time.time() + 5
    while time.time() < deadline and run_cli("status", SPEC).out.find("down") < 0:
        time.sleep(0.1)
    plan = run_cli("plan", SPEC, "--detailed-exitcode")
    assert plan.code == 2
    assert "deploy    replace" in plan.out and "not running" in plan.out
    healed = run_cli("run", SPEC)
    assert healed.code == 0
    assert _statuses(healed.out)["deploy"] == "ran" and _statuses(healed.out)["smoke"] == "ran"
    assert _statuses(healed.out)["evaluate"] == "skipped"
    assert "live" in run_cli("status", SPEC).out

    first = run_cli("delete", SPEC)
    assert first.code == 0 and "deleted" in first.out
    second = run_cli("delete", SPEC)
    assert second.code == 0 and "nothing to delete" in second.out
    not_deployed = run_cli("status", SPEC, "--uri")
    assert not_deployed.code == 1 and "is not deployed" in not_deployed.err and not_deployed.out == ""
    assert _state(project)["history"], "delete keeps the history"
    assert run_cli("plan", SPEC, "--json").out.count('"create"') == 1


def test_reordered_yaml_is_no_change_but_a_changed_data_byte_is(project, run_cli):
    assert run_cli("run", SPEC, "--to", "evaluate").code == 0
    spec = project / SPEC
    lines = spec.read_text().split("\n\n")
    # move the test: block to the top (after the header): same content, another key order
    header, rest = lines[0], lines[1:]
    test_block = next(b for b in rest if b.startswith("test:"))
    rest.remove(test_block)
    spec.write_text("\n\n".join([header, test_block] + rest))
    plan = json.loads(run_cli("plan", SPEC, "--to", "evaluate", "--json").out)
    assert [s["action"] for s in plan["steps"][:3]] == ["skip", "skip", "skip"], plan

    labels = project / "examples" / "mnist" / "data" / "test-labels.gz"
    import gzip

    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8] = (raw[8] + 1) % 10  # one label, same file name and size
    labels.write_bytes(gzip.compress(bytes(raw), mtime=0))
    plan = json.loads(run_cli("plan", SPEC, "--to", "evaluate", "--json").out)
    actions = {s["stage"]: s["action"] for s in plan["steps"]}
    assert actions["evaluate"] == "run" and actions["fetch"] == "skip"


def test_force_only_from_to(project, run_cli):
    assert run_cli("run", SPEC, "--to", "render").code == 0
    only = run_cli("run", SPEC, "--only", "evaluate", "--force")
    assert _statuses(only.out)["evaluate"] == "ran"
    assert all(v == "skipped" for k, v in _statuses(only.out).items() if k != "evaluate")
    ranged = run_cli("run", SPEC, "--from", "fetch", "--to", "render", "--force")
    assert [k for k, v in _statuses(ranged.out).items() if v == "ran"] == ["fetch", "evaluate", "render"]
    bad = run_cli("run", SPEC, "--from", "render", "--to", "fetch")
    assert bad.code == 2 and "--from render comes after --to fetch" in bad.err
    assert run_cli("run", SPEC, "--only", "nonsense").code == 2


def test_gate_fails_before_deploy(project, run_cli):
    assert run_cli("run", SPEC, "--to", "evaluate").code == 0
    _edit(project / SPEC, "min_accuracy: 0.85", "min_accuracy: 0.99")
    result = run_cli("run", SPEC)
    assert result.code == 1
    assert "accuracy 0.8870 is below test.min_accuracy 0.99" in result.out
    statuses = _statuses(result.out)
    assert statuses["evaluate"] == "failed" and statuses["deploy"] == "not run" and statuses["report"] == "ran"
    assert _state(project)["service"] is None
    evaluated = project / ".pipeline" / "sklearn-mnist-svc" / "eval"
    assert (evaluated / "failed" / "confusion.png").is_file()
    report = json.loads((project / "reports" / "sklearn-mnist-svc" / "report.json").read_text())
    assert report["evaluation"]["min_accuracy"] == 0.99  # the report shows the failing evaluation

    # back to the reviewed gate: the last success is reused as it was, not the failed run's files
    _edit(project / SPEC, "min_accuracy: 0.99", "min_accuracy: 0.85")
    again = run_cli("run", SPEC, "--to", "evaluate")
    assert again.code == 0 and _statuses(again.out)["evaluate"] == "skipped"
    assert json.loads((evaluated / "evaluation.json").read_text())["min_accuracy"] == 0.85


def test_ready_timeout_and_integral_floats_change_nothing(project, run_cli):
    assert run_cli("run", SPEC).code == 0
    _edit(project / SPEC, "memory_gb: 1\n", "memory_gb: 1.0\n  ready_timeout_s: 900\n")
    plan = run_cli("plan", SPEC, "--detailed-exitcode")
    assert plan.code == 0, plan.out  # the same service: no redeploy, no rotated keys


def test_changed_model_byte_stops_before_loading(project, run_cli):
    model = project / "examples" / "mnist" / "sklearn_mnist_model.pkl"
    data = bytearray(model.read_bytes())
    data[-3] ^= 0xFF
    model.write_bytes(bytes(data))
    plan = run_cli("plan", SPEC)
    assert "fetch     run           will fail: sha256 mismatch" in plan.out
    result = run_cli("run", SPEC)
    assert result.code == 1
    assert _statuses(result.out)["fetch"] == "failed" and _statuses(result.out)["evaluate"] == "not run"
    assert "sha256 mismatch" in result.out and "expected f2ff0eb8" in result.out


def test_unpinned_model_is_refused_before_anything_runs_with_the_digest_to_paste(project, run_cli):
    _edit(project / SPEC, "  sha256: f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4\n", "")
    # validate, plan and run say it in one line at model (where sha256 belongs), in the fetch stage's own words
    words = (
        "model.sha256: not pinned: loading a joblib file runs code stored in it, so review the file and pin its "
        "digest in the spec: sha256: f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4"
    )
    for command in ("validate", "plan", "run"):
        result = run_cli(command, SPEC)
        assert result.code == 2 and f"{SPEC}:7: {words}\n" in result.err, (command, result.err)
    assert not (project / ".pipeline" / "sklearn-mnist-svc" / "models").exists()  # nothing was fetched
    from pipeline import spec as specs
    from pipeline.errors import ModelError
    from pipeline.stages.fetch import check_pin

    loaded = specs.load(SPEC, check_files=False)  # status and delete do not need the pin
    with pytest.raises(ModelError) as err:
        check_pin(loaded, "f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4")
    assert str(err.value) == words


def test_damaged_state_file_is_a_clear_error(project, run_cli):
    state = project / ".pipeline" / "sklearn-mnist-svc" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"version": 1, "stages": {')
    for command in ("plan", "run", "status"):
        result = run_cli(command, SPEC)
        assert result.code == 1
        assert f"state file {state} is damaged" in result.err
        assert "Traceback" not in result.err


def test_second_concurrent_run_fails_at_once_naming_the_holder(project, run_cli):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pipeline import state; "
            "p = state.Paths.for_name('sklearn-mnist-svc')\n"
            "with state.locked(p, 'run specs/mnist.yaml'):\n    print('locked', flush=True); time.sleep(30)",
        ],
        cwd=project,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        result = run_cli("run", SPEC)
        assert time.monotonic() - start < 5
        assert result.code == 1
        assert f"locked by another run (pid {holder.pid}, `run specs/mnist.yaml`" in result.err
    finally:
        holder.kill()
        holder.wait()
    assert run_cli("run", SPEC, "--to", "check").code == 0  # the lock died with its holder


def test_interrupted_run_leaves_consistent_state_and_redoes_the_stage(project, run_cli):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", SPEC],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state_file = project / ".pipeline" / "sklearn-mnist-svc" / "state.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if "fetch" in json.loads(state_file.read_text())["stages"]:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    recorded = set(_state(project)["stages"])
    assert {"check", "fetch"} <= recorded
    if proc.returncode == 130:  # interrupted mid-stage: that stage has no record and runs next time
        assert "interrupted" in err
        assert "deploy" not in recorded
    result = run_cli("run", SPEC)
    assert result.code == 0, result.out + result.err
    assert _statuses(result.out)["fetch"] == "skipped"
    assert _statuses(result.out)["deploy"] == "ran"


def test_cleanup_deletes_after_a_passing_smoke_test(project, run_cli):
    result = run_cli("run", SPEC, "--cleanup", "--quiet")
    assert result.code == 0, result.err
    assert result.out == ""  # --quiet prints only failures
    assert _state(project)["service"] is None
    as_json = run_cli("run", SPEC, "--json", "--cleanup")
    doc = json.loads(as_json.out)
    assert doc["ok"] is True and [s["stage"] for s in doc["stages"]][-1] == "cleanup"


def test_sigterm_during_deploy_leaves_no_unrecorded_service(project, run_cli):
    assert run_cli("run", SPEC, "--to", "render").code == 0
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", SPEC],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    service = project / ".pipeline" / "sklearn-mnist-svc" / "service"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(service.glob("releases/*/config.json")):  # the host is starting
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    recorded = _state(project)["service"]
    running = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).find(str(service)) >= 0]
    if recorded is None:  # interrupted: what was started was stopped again
        assert proc.returncode == 130
        assert running == [], "an interrupted deploy left its service running"
    else:  # the deploy won the race and the service is recorded: the fixture stops it
        assert running


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
