"""The CI example: every pipeline command it runs is one the CLI accepts, and its state URL is one the backend takes."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline.backends.azureblob import parse
from pipeline.cli import build_parser
from tests.conftest import ROOT

WORKFLOW = ROOT / "examples" / "ci" / "deploy.yml"


def _commands() -> list[list[str]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    found = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                for part in re.findall(r"python -m pipeline ([^|>;]*?)(?:\s*(?:\|\||\||>|;|#)|$)", line):
                    shell = part.replace('"$spec"', "SPEC").replace("specs/*.yaml", "SPEC")
                    shell = shell.replace("$state", "--state local")
                    found.append(shlex.split(shell.replace("SPEC", "specs/mnist.yaml")))
    return found


def test_every_pipeline_command_in_the_workflow_parses() -> None:
    commands = _commands()
    assert {c[0] for c in commands} >= {"validate", "plan", "run"}
    parser = build_parser()
    for words in commands:
        parsed = parser.parse_args(words)  # raises on an unknown flag or a bad value
        assert parsed.command == words[0]


def test_the_workflow_shares_state_through_azureblob() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    url = (
        doc["env"]["PIPELINE_STATE"]
        .replace("${{ vars.PIPELINE_STATE_ACCOUNT }}", "acct1")
        .replace("${{ github.repository }}", "owner/repo")
    )
    assert parse(url) == ("acct1", "pipeline-state", "owner/repo", None)
    assert doc["permissions"]["id-token"] == "write"
    deploy_runs = " ".join(str(s.get("run", "")) for s in doc["jobs"]["deploy"]["steps"])
    assert "--lock-timeout" in deploy_runs


def test_the_review_job_posts_the_report_and_attaches_its_plots() -> None:
    review = yaml.safe_load(WORKFLOW.read_text())["jobs"]["review"]["steps"]
    uploads = [s for s in review if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"] == "reports/" and uploads[0]["if"] == "always()"
    runs = " ".join(str(s.get("run", "")) for s in review)
    assert "--body-file reports/sklearn-mnist-svc/report.md" in runs
    assert "--to evaluate --state local" in runs and "--cleanup" in runs


@pytest.mark.slow
def test_the_review_job_compares_with_the_base_revisions_evaluation(project, run_cli, tmp_path) -> None:
    """As the workflow does it: the base commit's spec evaluated into the same local state, then the change's."""
    base = tmp_path / "base"
    shutil.copytree(project, base)  # the base revision, checked out beside the pull request's
    (base / ".git").mkdir()  # a checkout: its root is where the spec's path (its owner) is read from
    assert (
        run_cli("run", str(base / "specs" / "mnist.yaml"), "--to", "evaluate", "--state", "local", "--quiet").code == 0
    )
    trained = subprocess.run(
        [
            sys.executable,
            "examples/mnist/train.py",
            "--reg",
            "0.01",
            "--output",
            "examples/mnist/sklearn_mnist_model.pkl",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    digest = re.search(r"sha256 ([0-9a-f]{64})", trained.stdout).group(1)
    spec = project / "specs" / "mnist.yaml"
    pinned = "f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4"
    spec.write_text(spec.read_text().replace(pinned, digest))
    done = run_cli("run", "specs/mnist.yaml", "--state", "local", "--cleanup", "--quiet")
    assert done.code == 0, done.out + done.err
    md = (project / "reports" / "sklearn-mnist-svc" / "report.md").read_text()
    assert "Accuracy **0.8870 → 0.8780**" in md and "| `model.sha256` | `f2ff0eb82e26…` |" in md
