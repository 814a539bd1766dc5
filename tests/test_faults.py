"""Faults: a damaged or full-disk state, two specs of one name, a taken port, and `run` killed -9 anywhere.

Whatever happens, every error is one clean line, and nothing runs that `status` cannot see and `delete`
cannot stop.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.targets import local_host
from tests.conftest import ROOT

SPEC = "specs/mnist.yaml"
NAME = "sklearn-mnist-svc"


def _state_file(project: Path) -> Path:
    return project / ".pipeline" / NAME / "state.json"


def _hosts(project: Path) -> list[int]:
    return local_host.hosts_under(project / ".pipeline" / NAME / "service")


def _clean(result) -> None:
    assert "Traceback" not in result.err + result.out and "internal error" not in result.err, result.err


def test_a_state_file_with_wrong_types_is_a_clean_error_and_delete_still_stops_the_service(project, run_cli):
    assert run_cli("run", SPEC).code == 0
    running = _hosts(project)
    state = json.loads(_state_file(project).read_text())
    state["service"]["pid"] = "abc"
    _state_file(project).write_text(json.dumps(state))
    for command in (("plan", SPEC), ("status", SPEC), ("run", SPEC)):
        result = run_cli(*command)
        _clean(result)
        assert result.code == 1 and "damaged: pid is 'abc'" in result.err, (command, result.err)
    deleted = run_cli("delete", SPEC)
    _clean(deleted)
    assert deleted.code == 0 and "stopped what runs from its folder" in deleted.out, deleted.out + deleted.err
    assert running and _hosts(project) == []


def test_a_stage_record_of_the_wrong_shape_is_a_clean_error(project, run_cli):
    assert run_cli("run", SPEC, "--to", "check").code == 0
    state = json.loads(_state_file(project).read_text())
    state["stages"]["check"]["digest"] = 42
    _state_file(project).write_text(json.dumps(state))
    result = run_cli("plan", SPEC)
    _clean(result)
    assert result.code == 1 and "the record of stage 'check' is not what pipeline writes" in result.err


def test_a_truncated_state_file_does_not_stop_delete(project, run_cli):
    assert run_cli("run", SPEC).code == 0
    assert _hosts(project)
    text = _state_file(project).read_text()
    _state_file(project).write_text(text[: len(text) // 2])
    assert run_cli("status", SPEC).code == 1
    deleted = run_cli("delete", SPEC)
    _clean(deleted)
    assert deleted.code == 0 and "the damaged state was left as it is" in deleted.out
    assert "is damaged" in deleted.err
    assert _hosts(project) == []
    assert _state_file(project).read_text() == text[: len(text) // 2]  # never overwritten


def test_a_full_disk_while_saving_state_keeps_the_old_state(project, run_cli, monkeypatch):
    assert run_cli("run", SPEC, "--to", "check").code == 0
    before = _state_file(project).read_text()
    from pipeline.backends import local

    def full(path: Path, data: bytes, mode: int = 0o644) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(local, "atomic_write", full)
    result = run_cli("run", SPEC, "--to", "fetch")
    _clean(result)
    assert result.code == 1
    assert (
        f"cannot save the state to {_state_file(project)}: No space left on device; the previous state is kept"
        in result.err
    )
    assert _state_file(project).read_text() == before


def test_two_specs_with_one_name_do_not_take_over_each_others_service(project, run_cli):
    assert run_cli("run", SPEC).code == 0
    twin = project / "specs" / "twin.yaml"
    twin.write_text((project / SPEC).read_text().replace("method: sklearn}", "method: twin}"))
    for command in (("plan", twin), ("run", twin), ("status", twin), ("delete", twin)):
        refused = run_cli(*command)
        _clean(refused)
        assert refused.code == 2, (command, refused.out)
        assert f"the service '{NAME}' belongs to specs/mnist.yaml, and specs/twin.yaml has the same name" in refused.err
    assert run_cli("status", SPEC).code == 0  # the owner is untouched
    adopted = run_cli("run", twin, "--adopt")
    assert adopted.code == 0, adopted.out + adopted.err
    assert run_cli("plan", SPEC).code == 2  # now the original is the stranger
    assert run_cli("delete", twin).code == 0


def test_serve_on_a_port_in_use_is_a_clean_error(project, run_cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", SPEC, "--port", str(port))
    _clean(result)
    assert result.code == 1 and f"cannot serve on 127.0.0.1:{port}: Address already in use" in result.err


# -- run killed with SIGKILL at each stage and at several points of deploy ---------------------------------------
def _moments(project: Path) -> dict[str, Callable[[], bool]]:
    service = project / ".pipeline" / NAME / "service"

    def stage_done(name: str) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return name in json.loads(_state_file(project).read_text())["stages"]
            except (OSError, ValueError, KeyError):
                return False

        return check

    def ready(live: bool) -> Callable[[], bool]:
        def check() -> bool:
            for path in service.glob("releases/*/ready.json"):
                try:
                    if json.loads(path.read_text()).get("live") is live:
                        return True
                except (OSError, ValueError):
                    pass
            return False

        return check

    return {
        "fetch": stage_done("check"),
        "evaluate": stage_done("fetch"),
        "render": stage_done("evaluate"),
        "deploy: the version folder made": lambda: bool(list(service.glob("releases/*/config.json"))),
        "deploy: the host starting": lambda: bool(_hosts(project)),
        "deploy: staged, being tested": ready(False),
        "deploy: live": ready(True),
        "smoke": stage_done("deploy"),
        "report": stage_done("smoke"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(_moments(Path("."))))
def test_a_run_killed_at_any_moment_leaves_nothing_delete_does_not_stop(project, run_cli, moment):
    (project / ".pipeline").mkdir(exist_ok=True)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", SPEC],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reached = _moments(project)[moment]
    deadline = time.monotonic() + 120
    while not reached() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    status = run_cli("status", SPEC)
    _clean(status)
    if _hosts(project):  # whatever still runs is visible: a service, or an unfinished deploy's process
        assert "live" in status.out or "still running" in status.out, status.out
    deleted = run_cli("delete", SPEC)
    _clean(deleted)
    assert deleted.code == 0, deleted.out + deleted.err
    assert _hosts(project) == []
    again = run_cli("run", SPEC)  # and the next run finishes the job from whatever was left
    assert again.code == 0, again.out + again.err
    assert len(_hosts(project)) == 1
    shutil.rmtree(project / "reports", ignore_errors=True)
