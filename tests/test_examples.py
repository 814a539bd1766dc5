"""The CI example: every pipeline command it runs is one the CLI accepts, and its state URL is one the backend takes."""
from __future__ import annotations

import re
import shlex

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
        parsed = parser.parse_args(words)   # raises on an unknown flag or a bad value
        assert parsed.command == words[0]


def test_the_workflow_shares_state_through_azureblob() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    url = doc["env"]["PIPELINE_STATE"].replace("${{ vars.PIPELINE_STATE_ACCOUNT }}", "acct1") \
                                      .replace("${{ github.repository }}", "owner/repo")
    assert parse(url) == ("acct1", "pipeline-state", "owner/repo", None)
    assert doc["permissions"]["id-token"] == "write"
    deploy_runs = " ".join(str(s.get("run", "")) for s in doc["jobs"]["deploy"]["steps"])
    assert "--lock-timeout" in deploy_runs
