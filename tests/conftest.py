"""Shared fixtures: an in-process CLI runner and an isolated project folder with its own state."""

from __future__ import annotations

import io
import re
import shutil
import socket
import uuid
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODEL = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"
EXAMPLE_DATA = ROOT / "examples" / "mnist" / "data"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli():
    """Run `python -m pipeline ARGS` in-process; returns exit code, stdout and stderr."""
    from pipeline import cli

    def run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main([str(a) for a in args])
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A throw-away project: specs/, examples/ (copied), its own .pipeline state and reports, cwd inside.

    Any service a test deploys here is deleted by the finalizer, by the pid in its record.
    """
    root = tmp_path / "project"
    (root / "specs").mkdir(parents=True)
    shutil.copytree(
        ROOT / "examples" / "mnist", root / "examples" / "mnist", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "specs" / "mnist.yaml", root / "specs" / "mnist.yaml")
    monkeypatch.chdir(root)
    monkeypatch.setenv("PIPELINE_HOME", str(root / ".pipeline"))
    monkeypatch.setenv("PIPELINE_REPORTS", str(root / "reports"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)  # under GitHub Actions, `run` would append to it
    yield root
    _stop_services(root / ".pipeline")
    _stop_strays(root)


def _stop_strays(root: Path) -> None:
    """Any process still running from this project's folder (a service a failed test never recorded), by PID."""
    import os
    import signal

    marker = str(root).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


def _stop_services(home: Path) -> None:
    import json
    import os
    import signal

    for state_file in home.glob("*/state.json"):
        try:
            record = json.loads(state_file.read_text()).get("service") or {}
            pid = int(record.get("pid") or 0)
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # a damaged state (some tests damage it on purpose): the stray sweep below stops the hosts
        if pid > 0 and record.get("target") == "local":
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def fake_azure(no_network, monkeypatch, tmp_path):
    """Azure faked at the HTTP boundary (tests/fake_azure.py): the real SDKs run, with the network guard on."""
    pytest.importorskip("responses")
    from tests import fake_azure

    yield from fake_azure.start(monkeypatch, tmp_path / "azure-home")


# -- Azurite, the Azure Storage emulator, for the azureblob state backend ----------------------------
@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """One azurite-blob on 127.0.0.1 for the session (skipped with the reason when node or Azurite is missing)."""
    from tests import azurite as emulator

    why = emulator.missing()
    if why:
        pytest.skip(why)
    server = emulator.start(tmp_path_factory.mktemp("azurite"))
    yield server
    emulator.stop(server.process)


@pytest.fixture
def shared_state(azurite, monkeypatch, request) -> str:
    """A state URL of its own in Azurite (a fresh prefix), its connection string in the environment.

    The lease is Azure's shortest, 15 s, so a test that kills a runner waits as little as Azure allows.
    """
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40] + "-" + uuid.uuid4().hex[:8]
    return f"azureblob://devstoreaccount1/state/{prefix}?lease_seconds=15"


# -- the network is off limits: a hidden call fails the test even when the code swallows the error --
@pytest.fixture
def no_network(request, monkeypatch):
    attempts: list[str] = []
    if request.node.get_closest_marker("azure_live"):
        yield attempts  # the live suite talks to Azure on purpose
        return
    real_connect, real_connect_ex, real_gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def allowed(address) -> bool:
        return not isinstance(address, tuple) or address[0] in LOOPBACK

    def connect(self, address):
        if self.family == socket.AF_UNIX or allowed(address):
            return real_connect(self, address)
        attempts.append(f"connect {address!r}")
        raise OSError(f"test tried to reach the network: {address!r}")

    def connect_ex(self, address):
        if self.family == socket.AF_UNIX or allowed(address):
            return real_connect_ex(self, address)
        attempts.append(f"connect_ex {address!r}")
        raise OSError(f"test tried to reach the network: {address!r}")

    def getaddrinfo(host, *args, **kwargs):
        if host in (None, *LOOPBACK):
            return real_gai(host, *args, **kwargs)
        attempts.append(f"resolve {host!r}")
        raise OSError(f"test tried to resolve {host!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"the test tried to reach the network: {attempts}"


# --- the slow tier ----------------------------------------------------------------------------------------
# `python -m pytest` with no paths and no -m runs the default suite (about 3 minutes on 2 cores): tests marked
# slow (a real Ray cluster, the executed notebook, load and rollout tests, the fake API server's pods) are
# deselected, and the summary says how to run them. `-m slow` runs them; naming a file or a test runs what it
# names, slow or not; CI (.ci/run) runs both tiers.
_SLOW_TIER = "python -m pytest -q -m slow"


def _runs_the_default_suite(config: pytest.Config) -> bool:
    return not config.option.markexpr and not config.option.keyword and not config.option.file_or_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _runs_the_default_suite(config):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
        config.hook.pytest_deselected(items=slow)
        config.stash[_slow_key] = len(slow)


_slow_key = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    deselected = config.stash.get(_slow_key, 0)
    if deselected:
        terminalreporter.write_line(f"{deselected} slow tests deselected: `{_SLOW_TIER}` runs them (CI runs both)")
