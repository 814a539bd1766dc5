"""Project-root discovery: state and reports live at the spec's project root, wherever the command runs from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import project
from tests.conftest import ROOT


def _tree(tmp_path: Path, *markers: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "specs" / "team").mkdir(parents=True)
    for marker in markers:
        target = repo / marker
        if marker == ".git-file":  # a worktree's or submodule's .git is a file
            (repo / ".git").write_text("gitdir: /elsewhere/.git/worktrees/x\n")
        else:
            target.mkdir()
    spec = repo / "specs" / "team" / "mnist.yaml"
    spec.write_text("name: x\n")
    return spec


def _no_marker_above(path: Path) -> None:
    for folder in path.parents:
        if any((folder / m).exists() for m in project.MARKERS):
            pytest.skip(f"{folder} holds a project marker; the fallback cannot be tested below it")


@pytest.mark.parametrize("marker", [".git", ".git-file", ".pipeline"])
def test_root_is_the_nearest_folder_holding_a_marker(tmp_path: Path, marker: str) -> None:
    spec = _tree(tmp_path, marker)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert project.root_of(spec, cwd=elsewhere) == tmp_path / "repo"
    assert project.root_of(spec, cwd=spec.parent) == tmp_path / "repo"


def test_a_nearer_pipeline_folder_wins_over_the_repository(tmp_path: Path) -> None:
    spec = _tree(tmp_path, ".git")
    (spec.parent / ".pipeline").mkdir()
    assert project.root_of(spec, cwd=tmp_path) == spec.parent


def test_relative_spec_paths_resolve_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    _tree(tmp_path, ".git")
    monkeypatch.chdir(tmp_path / "repo")
    assert project.root_of(Path("specs/team/mnist.yaml")) == tmp_path / "repo"


def test_without_a_marker_the_working_directory_when_the_spec_is_inside_it(tmp_path: Path) -> None:
    spec = _tree(tmp_path)
    _no_marker_above(tmp_path)
    assert project.root_of(spec, cwd=tmp_path / "repo") == tmp_path / "repo"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert project.root_of(spec, cwd=elsewhere) == spec.parent  # outside it: the spec's own folder


def test_environment_overrides_win(tmp_path: Path) -> None:
    spec = _tree(tmp_path, ".git")
    env = {"PIPELINE_HOME": str(tmp_path / "h"), "PIPELINE_REPORTS": str(tmp_path / "r")}
    assert project.home(spec, env) == tmp_path / "h"
    assert project.reports_root(spec, env) == tmp_path / "r"
    assert project.home(spec, {}) == tmp_path / "repo" / ".pipeline"
    assert project.reports_root(spec, {}) == tmp_path / "repo" / "reports"


@pytest.mark.slow
def test_status_from_another_folder_sees_the_running_service(project, run_cli, tmp_path, monkeypatch):
    """The issue's `cd /tmp && python -m pipeline status ~/repo/specs/mnist.yaml`: same state, same service."""
    (project / ".git").mkdir()  # a repository root
    monkeypatch.delenv("PIPELINE_HOME")
    monkeypatch.delenv("PIPELINE_REPORTS")
    spec = project / "specs" / "mnist.yaml"
    assert run_cli("run", spec).code == 0
    assert (project / ".pipeline" / "sklearn-mnist-svc" / "state.json").is_file()
    assert (project / "reports" / "sklearn-mnist-svc" / "report.md").is_file()
    record = json.loads((project / ".pipeline" / "sklearn-mnist-svc" / "state.json").read_text())["service"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_HOME", "PIPELINE_REPORTS")}
    status = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", str(spec)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        env=env | {"PYTHONPATH": str(ROOT)},
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("sklearn-mnist-svc: live") and record["scoring_uri"] in status.stdout
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(spec)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        env=env | {"PYTHONPATH": str(ROOT)},
    )
    assert again.returncode == 0, again.stderr
    assert "deploy    skipped" in again.stdout  # no second service
    assert not (elsewhere / ".pipeline").exists() and not (elsewhere / "reports").exists()
