"""Shared fixtures: an in-process CLI runner and an isolated project folder with its own state."""
from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODEL = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"
EXAMPLE_DATA = ROOT / "examples" / "mnist" / "data"


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
    shutil.copytree(ROOT / "examples" / "mnist", root / "examples" / "mnist",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "specs" / "mnist.yaml", root / "specs" / "mnist.yaml")
    monkeypatch.chdir(root)
    monkeypatch.setenv("PIPELINE_HOME", str(root / ".pipeline"))
    monkeypatch.setenv("PIPELINE_REPORTS", str(root / "reports"))
    monkeypatch.setenv("NO_COLOR", "1")
    yield root
    _stop_services(root / ".pipeline")


def _stop_services(home: Path) -> None:
    import json
    import os
    import signal

    for state_file in home.glob("*/state.json"):
        try:
            record = json.loads(state_file.read_text()).get("service") or {}
        except (OSError, ValueError):
            continue
        pid = int(record.get("pid") or 0)
        if pid > 0 and record.get("target") == "local":
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
