"""GitOps from CI: two fresh clones of one repository sharing state in Azurite, as two CI runners would."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.backends.azureblob import AzureBlobBackend
from tests.conftest import ROOT, _stop_strays

pytestmark = pytest.mark.slow
SPEC = "specs/mnist.yaml"
NAME = "sklearn-mnist-svc"
FIELD_LINE = re.compile(r"^\s+[~+-] [\w.]+: ", re.M)


@dataclass
class Clones:
    a: Path
    b: Path
    url: str
    env: dict[str, str]

    def backend(self) -> AzureBlobBackend:
        return AzureBlobBackend.from_url(self.url, environ=self.env)

    def run(self, clone: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            cwd=clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, clone: Path, *args: str, lease: int | None = None) -> subprocess.Popen[str]:
        """`lease`: the seconds this run leases the lock for (the fixture's URL says 15)."""
        env = self.env if lease is None else self.env | {"PIPELINE_STATE": self.url.replace("=15", f"={lease}")}
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def document(self) -> dict | None:
        """The shared state as it is now; it must parse whenever it is read: old or new, never half."""
        raw, _ = self.backend().read(NAME)
        return None if raw is None else json.loads(raw)


@pytest.fixture
def clones(tmp_path: Path, shared_state: str, azurite) -> Clones:
    """A repository with the tutorial's spec, cloned twice with git; PIPELINE_STATE points both at Azurite."""
    origin = tmp_path / "origin"
    (origin / "specs").mkdir(parents=True)

    shutil.copytree(
        ROOT / "examples" / "mnist", origin / "examples" / "mnist", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "specs" / "mnist.yaml", origin / "specs" / "mnist.yaml")
    (origin / ".gitignore").write_text(".pipeline/\nreports/\n")
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(origin)], check=True)
    subprocess.run([*git, "-C", str(origin), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(origin), "commit", "-qm", "the tutorial"], check=True)
    for name in ("a", "b"):
        subprocess.run(["git", "clone", "-q", str(origin), str(tmp_path / name)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_HOME", "PIPELINE_REPORTS")}
    env |= {
        "PIPELINE_STATE": shared_state,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "NO_COLOR": "1",
        "PYTHONPATH": str(ROOT),
    }
    yield Clones(tmp_path / "a", tmp_path / "b", shared_state, env)
    _stop_strays(tmp_path)  # every service either clone started, by PID


def _stage_lines(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0] in ("check", "fetch", "evaluate", "render", "deploy", "smoke", "report"):
            found[parts[0]] = parts[1]
    return found


def _wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_fresh_clone_plans_no_op_and_a_tag_change_as_exactly_that_field(clones: Clones) -> None:
    first = clones.run(clones.a, "run", SPEC)
    assert first.returncode == 0, first.stdout + first.stderr
    uri = clones.document()["service"]["scoring_uri"]

    plan = clones.run(clones.b, "plan", SPEC, "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    lines = _stage_lines(plan.stdout)
    assert lines["deploy"] == "no-op" and f"healthy at {uri}" in plan.stdout
    assert {lines[s] for s in ("fetch", "evaluate", "render", "report")} == {"rebuild"}  # B's files, made again
    assert lines["check"] == lines["smoke"] == "skip"
    assert "No changes: the service matches the spec." in plan.stdout
    steps = {s["stage"]: s for s in json.loads(clones.run(clones.b, "plan", SPEC, "--json").stdout)["steps"]}
    assert steps["deploy"]["deploy"]["action"] == "no-op" and steps["fetch"]["rebuild"] is True

    _edit(clones.b / SPEC, "method: sklearn}", "method: sklearn-v2}")
    changed = clones.run(clones.b, "plan", SPEC, "--detailed-exitcode")
    assert changed.returncode == 2, changed.stdout + changed.stderr
    assert FIELD_LINE.findall(changed.stdout) == ["      ~ tags.method: "]  # exactly that one field
    assert "~ tags.method: 'sklearn' -> 'sklearn-v2'" in changed.stdout
    assert "deploy    update" in changed.stdout
    # and the rendered file that carries it, diffed against what A deployed (kept in the shared state)
    assert '-    "method": "sklearn"\n' in changed.stdout and '+    "method": "sklearn-v2"\n' in changed.stdout

    status = clones.run(clones.b, "status", SPEC)
    assert status.returncode == 0 and status.stdout.startswith(f"{NAME}: live") and uri in status.stdout


def test_two_runs_at_once_deploy_once(clones: Clones) -> None:
    runs = [clones.start(clone, "run", SPEC, "--lock-timeout", "5m") for clone in (clones.a, clones.b)]
    results = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in runs]
    for _pid, out, err, code in results:
        assert code == 0, out + err
    deploys = sorted(_stage_lines(out)["deploy"] for _, out, _, _ in results)
    assert deploys == ["ran", "skipped"], results
    (first, waited) = sorted(results, key=lambda r: _stage_lines(r[1])["deploy"] != "ran")
    assert f"waiting up to 5m for the lock held by pid {first[0]}, `run {SPEC}`" in waited[2]
    assert "healthy at" in waited[1]  # it found A's service live: no second deploy
    state = clones.document()
    assert [h["ok"] for h in state["history"]] == [True, True]
    configs = {
        m
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        for m in re.findall(rb"\S+/service/releases/[0-9]+/config\.json", _cmdline(p))
        if str(clones.a.parent).encode() in m
    }
    assert len(configs) == 1, configs  # one service, not two


def test_a_second_runner_fails_at_once_naming_the_holder(clones: Clones) -> None:
    holder = clones.start(clones.a, "run", SPEC, lease=60)
    try:
        _wait_for(lambda: clones.backend().inspect(NAME).locked, what="the first run to take the lease")
        os.kill(holder.pid, signal.SIGSTOP)  # held still, so it cannot finish before B asks, on a busy machine too
        start = time.monotonic()
        refused = clones.run(clones.b, "run", SPEC)
        assert time.monotonic() - start < 15
        assert refused.returncode == 1
        assert re.search(
            rf"error: {NAME} is locked by another run \(pid {holder.pid}, `run {SPEC}`, on host \S+ since "
            rf"[^)]+\) in {re.escape(clones.url)}; wait for it to finish, or wait for it with "
            rf"--lock-timeout",
            refused.stderr,
        ), refused.stderr
        assert "force-unlock specs/mnist.yaml" in refused.stderr
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        out, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, out + err


def test_a_killed_runner_frees_its_lock_when_the_lease_expires_and_the_state_stays_whole(clones: Clones) -> None:
    # 30 s: long enough that the lease still holds while B starts on a busy machine, short enough to wait for
    victim = clones.start(clones.a, "run", SPEC, lease=30)
    seen: list[set[str]] = []

    def evaluated() -> bool:
        doc = clones.document()  # json.loads: a half-written blob would fail here
        seen.append(set(doc["stages"]) if doc else set())
        return "evaluate" in seen[-1]

    try:
        _wait_for(evaluated, what="the first run to record evaluate")
    finally:
        victim.send_signal(signal.SIGKILL)  # no finally, no release: a runner lost mid-run
        victim.communicate(timeout=30)
    assert seen[-1] >= {"check", "fetch", "evaluate"}
    info = clones.backend().inspect(NAME)
    assert info.locked and info.holder.pid == victim.pid  # the lease outlives its holder, for at most 30 s

    refused = clones.run(clones.b, "run", SPEC)
    assert refused.returncode == 1 and f"pid {victim.pid}, `run {SPEC}`" in refused.stderr
    start = time.monotonic()
    healed = clones.start(clones.b, "run", SPEC, "--lock-timeout", "1m")
    while healed.poll() is None:
        clones.document()  # whole at every read while B writes
        time.sleep(0.05)
    out, err = healed.communicate()
    assert healed.returncode == 0, out + err
    assert time.monotonic() - start < 60
    assert f"waiting up to 1m for the lock held by pid {victim.pid}" in err
    state = clones.document()
    assert set(state["stages"]) == {"check", "fetch", "evaluate", "render", "deploy", "smoke", "report"}
    assert state["history"][-1]["ok"] is True
    shown = json.loads(clones.run(clones.b, "state", "show", SPEC, "--json").stdout)
    assert shown["lock"]["locked"] is False and shown["service"]["scoring_uri"] == state["service"]["scoring_uri"]


def test_force_unlock_names_the_holder_and_the_holder_then_cannot_write(clones: Clones) -> None:
    holder = clones.start(clones.a, "run", SPEC, "--to", "evaluate", lease=60)  # it must not expire by itself
    try:
        _wait_for(lambda: "check" in ((clones.document() or {}).get("stages") or {}), what="a recorded stage")
        os.kill(holder.pid, signal.SIGSTOP)  # a runner that hangs, lease and all
        before = clones.document()
        locked = json.loads(clones.run(clones.b, "state", "show", SPEC, "--json").stdout)["lock"]
        assert locked["locked"] is True and locked["holder"]["pid"] == holder.pid
        broken = clones.run(clones.b, "force-unlock", SPEC)
        assert broken.returncode == 0, broken.stderr
        assert f"broke the lock held by pid {holder.pid}, `run {SPEC}`, on host" in broken.stdout
        shown = clones.run(clones.b, "state", "show", SPEC)
        assert "not locked (the lease of pid" in shown.stdout and "was broken)" in shown.stdout
        again = clones.run(clones.b, "force-unlock", SPEC)
        assert again.returncode == 0 and "not locked" in again.stdout
        taken = clones.run(clones.b, "run", SPEC, "--to", "check", "--force")
        assert taken.returncode == 0, taken.stderr
        after_b = clones.document()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        out, err = holder.communicate(timeout=120)
    assert holder.returncode == 1 and "was lost" in err and "nothing more is written" in err, out + err
    assert clones.document() == after_b != before  # the old holder wrote nothing after the break


def test_state_push_moves_local_state_and_the_clones_share_it(clones: Clones) -> None:
    local = clones.run(clones.a, "run", SPEC, "--state", "local")
    assert local.returncode == 0, local.stderr
    assert (clones.a / ".pipeline" / NAME / "state.json").is_file()  # found at the clone's root, by its .git
    assert clones.document() is None

    pushed = clones.run(clones.a, "state", "push", SPEC, "--to", clones.url, "--json")
    assert pushed.returncode == 0, pushed.stderr
    out = json.loads(pushed.stdout)
    assert out["to"] == clones.backend().where(NAME) and out["stages"] == sorted(
        ["check", "fetch", "evaluate", "render", "deploy", "smoke", "report"]
    )
    assert clones.document()["service"]["scoring_uri"] == out["service"]

    stale = clones.run(clones.a, "plan", SPEC, "--state", "local")
    assert stale.returncode == 1 and f"was moved to {clones.url} by `state push`" in stale.stderr
    twice = clones.run(clones.a, "state", "push", SPEC, "--to", clones.url)
    assert twice.returncode == 1 and "moved to" in twice.stderr

    here = json.loads(clones.run(clones.a, "plan", SPEC, "--json").stdout)  # A's own files are still there
    assert {s["stage"]: s["action"] for s in here["steps"]} == dict.fromkeys(
        ("check", "fetch", "evaluate", "render", "deploy", "smoke", "report"), "skip"
    )
    fresh = clones.run(clones.b, "plan", SPEC, "--detailed-exitcode")
    assert fresh.returncode == 0 and "deploy    no-op" in fresh.stdout, fresh.stdout + fresh.stderr


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""
