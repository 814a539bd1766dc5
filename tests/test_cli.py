"""Tests for pipeline.cli: exit codes, messages on the right stream, no tracebacks for expected errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import spec as specs
from pipeline.cli import build_parser
from pipeline.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (
    "validate",
    "schema",
    "render",
    "plan",
    "run",
    "status",
    "rollback",
    "delete",
    "logs",
    "serve",
    "state",
    "force-unlock",
)
BAD_TARGET = "tests/data/specs/invalid/bad-target.yaml"
SEVERAL = "tests/data/specs/invalid/several-problems.yaml"


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("NO_COLOR", "1")
    return ROOT


def messages(path: str) -> list[str]:
    """What loading the spec raises: the CLI must print exactly these lines."""
    with pytest.raises(SpecError) as err:
        specs.load(path)
    return err.value.messages


def no_traceback(result) -> None:
    assert "Traceback" not in result.out + result.err
    assert "internal error" not in result.out + result.err


def test_every_command_is_tested() -> None:
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(commands) == set(COMMANDS)


# -- validate ------------------------------------------------------------------------------------


def test_validate_ok(run_cli, at_root: Path) -> None:
    result = run_cli("validate", "specs/mnist.yaml")
    assert (result.code, result.err) == (0, "")
    assert result.out == "ok  specs/mnist.yaml  (sklearn-mnist-svc, target local)\n"


def test_validate_invalid_prints_every_message_on_stderr(run_cli, at_root: Path) -> None:
    result = run_cli("validate", SEVERAL)
    assert result.code == 2 and result.out == ""
    assert result.err.splitlines() == messages(SEVERAL) + ["1 of 1 spec(s) invalid"]
    assert len(result.err.splitlines()) == 6
    no_traceback(result)


def test_validate_several_files_one_bad(run_cli, at_root: Path) -> None:
    result = run_cli("validate", "specs/mnist.yaml", BAD_TARGET, "tests/data/specs/valid/minimal.yaml")
    assert result.code == 2
    assert result.out.splitlines() == [
        "ok  specs/mnist.yaml  (sklearn-mnist-svc, target local)",
        "ok  tests/data/specs/valid/minimal.yaml  (minimal-svc, target local)",
    ]
    assert result.err.splitlines() == [
        "tests/data/specs/invalid/bad-target.yaml:33: deploy.target: 'azur' is not one of "
        "['local', 'aci', 'aks', 'azureml-online', 'ray', 'kubernetes']",
        "1 of 3 spec(s) invalid",
    ]


def test_validate_all_invalid_files_at_once(run_cli, at_root: Path) -> None:
    paths = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests/data/specs/invalid").glob("*.yaml"))
    result = run_cli("validate", *paths)
    assert result.code == 2 and result.out == ""
    assert result.err.splitlines() == [m for p in paths for m in messages(p)] + [
        f"{len(paths)} of {len(paths)} spec(s) invalid"
    ]
    no_traceback(result)


def test_validate_quiet_prints_only_failures(run_cli, at_root: Path) -> None:
    assert run_cli("validate", "-q", "specs/mnist.yaml").out == ""
    result = run_cli("validate", "--quiet", "specs/mnist.yaml", BAD_TARGET)
    assert result.code == 2 and result.out == "" and len(result.err.splitlines()) == 2


def test_validate_json(run_cli, at_root: Path) -> None:
    result = run_cli("validate", "--json", "specs/mnist.yaml", BAD_TARGET)
    assert result.code == 2 and result.err == ""
    assert json.loads(result.out) == [
        {"spec": "specs/mnist.yaml", "valid": True, "errors": [], "name": "sklearn-mnist-svc", "target": "local"},
        {
            "spec": BAD_TARGET,
            "valid": False,
            "errors": [
                "tests/data/specs/invalid/bad-target.yaml:33: deploy.target: 'azur' is not one of "
                "['local', 'aci', 'aks', 'azureml-online', 'ray', 'kubernetes']"
            ],
        },
    ]
    ok = run_cli("validate", "--json", "specs/mnist.yaml")
    assert ok.code == 0 and json.loads(ok.out)[0]["valid"] is True


def test_validate_nonexistent_file(run_cli, at_root: Path) -> None:
    result = run_cli("validate", "specs/nope.yaml")
    assert result.code == 2 and result.out == ""
    assert result.err.splitlines() == ["specs/nope.yaml: no such file", "1 of 1 spec(s) invalid"]


def test_validate_needs_a_spec(run_cli, at_root: Path) -> None:
    result = run_cli("validate")
    assert result.code == 2 and "usage: pipeline validate" in result.err and "SPEC" in result.err
    no_traceback(result)


# -- usage errors and help ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["validate", "--nope", "specs/mnist.yaml"], "unrecognized arguments: --nope"),
        (["render"], "the following arguments are required: SPEC"),
        (["logs", "specs/mnist.yaml", "-n", "many"], "invalid int value: 'many'"),
        (["run", "specs/mnist.yaml", "--only", "nap"], "invalid choice: 'nap'"),
        (["run", "specs/mnist.yaml", "--only", "fetch", "--from", "check"], "not allowed with argument"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2_with_a_usage_line(run_cli, at_root: Path, args: list[str], words: str) -> None:
    result = run_cli(*args)
    assert result.code == 2 and result.out == ""
    assert words in result.err
    assert any(line.startswith("usage: pipeline") for line in result.err.splitlines())
    no_traceback(result)


def test_only_with_to_is_a_usage_error(run_cli, at_root: Path) -> None:
    result = run_cli("plan", "specs/mnist.yaml", "--only", "fetch", "--to", "render")
    assert result.code == 2 and "--only cannot be combined with --to" in result.err
    no_traceback(result)


def test_no_command_prints_help_and_exits_2(run_cli) -> None:
    result = run_cli()
    assert result.code == 2 and result.out.startswith("usage: pipeline")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(run_cli, command: str) -> None:
    result = run_cli(command, "--help")
    assert result.code == 0 and result.err == ""
    assert result.out.startswith(f"usage: pipeline {command}")


def test_top_level_help_and_version(run_cli) -> None:
    from pipeline import __version__

    result = run_cli("--help")
    assert result.code == 0 and result.out.startswith("usage: pipeline")
    assert "exit codes: 0 success; 1 a stage failed; 2 invalid spec or usage" in result.out
    for command in COMMANDS:
        assert command in result.out
    version = run_cli("--version")
    assert (version.code, version.out) == (0, f"pipeline {__version__}\n")


# -- schema and render ---------------------------------------------------------------------------


def test_schema(run_cli) -> None:
    result = run_cli("schema")
    assert result.code == 0 and result.err == ""
    assert json.loads(result.out)["title"] == "pipeline/v1 deployment spec"
    markdown = run_cli("schema", "--markdown")
    assert markdown.code == 0 and markdown.out.startswith("| field | type | default | description |")


def test_render_writes_the_files(run_cli, project: Path) -> None:
    result = run_cli("render", "specs/mnist.yaml", "-o", "out/mnist")
    assert result.code == 0, result.err
    names = ["local.json", "myenv.yml", "score.py", "swagger.json"]
    assert sorted(p.name for p in (project / "out" / "mnist").iterdir()) == names
    assert result.out.splitlines() == [f"wrote {Path('out/mnist') / n}" for n in names]
    assert yaml.safe_load((project / "out/mnist/myenv.yml").read_text())["name"] == "sklearn-mnist-svc-env"
    compile((project / "out/mnist/score.py").read_text(), "score.py", "exec")
    assert json.loads((project / "out/mnist/local.json").read_text())["workers"] == 1
    json.loads((project / "out/mnist/swagger.json").read_text())
    # default folder: build/<name>; rendering again gives the same bytes
    before = (project / "out/mnist/score.py").read_bytes()
    assert run_cli("render", "specs/mnist.yaml").code == 0
    assert (project / "build" / "sklearn-mnist-svc" / "score.py").read_bytes() == before


def test_render_invalid_spec_exits_2_and_writes_nothing(run_cli, project: Path) -> None:
    spec = yaml.safe_load((project / "specs/mnist.yaml").read_text())
    spec["deploy"]["target"] = "azur"
    (project / "specs/bad.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run_cli("render", "specs/bad.yaml", "-o", "out")
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("specs/bad.yaml:") and "deploy.target: 'azur' is not one of" in result.err
    assert len(result.err.splitlines()) == 1
    assert not (project / "out").exists()
    no_traceback(result)


def test_render_nonexistent_spec(run_cli, project: Path) -> None:
    result = run_cli("render", "specs/nope.yaml")
    assert (result.code, result.out, result.err) == (2, "", "specs/nope.yaml: no such file\n")


@pytest.mark.parametrize("command", ["render", "plan", "run", "status", "delete", "logs"])
def test_every_spec_command_refuses_an_invalid_spec(run_cli, project: Path, command: str) -> None:
    result = run_cli(command, ROOT / BAD_TARGET)  # inside the throw-away project: no state can leak into the repo
    assert result.code == 2
    assert "deploy.target: 'azur' is not one of" in result.err
    no_traceback(result)


@pytest.mark.parametrize("command", ["render", "plan", "status", "delete", "logs"])
def test_every_spec_command_refuses_a_missing_spec(run_cli, project: Path, command: str) -> None:
    result = run_cli(command, "specs/nope.yaml")
    assert result.code == 2 and result.err == "specs/nope.yaml: no such file\n"


# -- the real entry point -------------------------------------------------------------------------


def python_m(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_python_m_pipeline_exit_codes() -> None:
    ok = python_m("validate", "specs/mnist.yaml")
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout == "ok  specs/mnist.yaml  (sklearn-mnist-svc, target local)\n"
    bad = python_m("validate", "specs/mnist.yaml", SEVERAL)
    assert bad.returncode == 2 and bad.stdout.startswith("ok  specs/mnist.yaml")
    assert bad.stderr.splitlines()[0].startswith("tests/data/specs/invalid/several-problems.yaml:3: name: ")
    assert bad.stderr.splitlines()[-1] == "1 of 2 spec(s) invalid"
    usage = python_m("frobnicate")
    assert usage.returncode == 2 and "usage: pipeline" in usage.stderr and "Traceback" not in usage.stderr
    helped = python_m("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: pipeline")


def test_plan_detailed_exitcode_reports_errors_as_1_never_2(run_cli, tmp_path, monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "state"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: pipeline/v1\n")
    assert run_cli("plan", bad, "--detailed-exitcode").code == 1  # invalid spec
    assert run_cli("plan", tmp_path / "none.yaml", "--detailed-exitcode").code == 1  # missing file
    assert run_cli("plan", "specs/mnist.yaml", "--detailed-exitcode", "--from", "smoke", "--to", "check").code == 1
    assert run_cli("plan", "specs/mnist.yaml", "--detailed-exitcode", "--bogus").code == 1
    assert run_cli("plan", "specs/mnist.yaml", "--detailed-exitcode").code == 2  # nothing ran yet: changes
    assert run_cli("plan", bad).code == 2  # without the flag, an invalid spec is the usual 2


def test_run_json_keeps_stdout_pure_when_a_stage_fails(run_cli, project):
    import json as _json

    spec = project / "specs" / "mnist.yaml"
    spec.write_text(spec.read_text().replace("min_accuracy: 0.85", "min_accuracy: 0.99"))
    result = run_cli("run", "specs/mnist.yaml", "--json")
    assert result.code == 1
    doc = _json.loads(result.out)
    assert doc["ok"] is False and "evaluate" in result.err


# -- status for scripts ---------------------------------------------------------------------------


def test_status_exits_0_only_for_a_live_service_that_matches_its_record(run_cli, project: Path) -> None:
    import signal

    def status() -> tuple[int, str, bool]:
        result = run_cli("status", "specs/mnist.yaml", "--json")
        doc = json.loads(result.out)
        assert run_cli("status", "specs/mnist.yaml").code == result.code  # the same answer without --json
        assert doc["ok"] is (result.code == 0)
        return result.code, doc["state"], doc["deployed"]

    assert status() == (1, "not deployed", False)
    assert run_cli("status", "specs/mnist.yaml", "--quiet").code == 1
    assert run_cli("run", "specs/mnist.yaml").code == 0
    assert status() == (0, "live", True)

    record = json.loads((project / ".pipeline" / "sklearn-mnist-svc" / "state.json").read_text())["service"]
    score = Path(record["config"]).parent / "app" / "score.py"
    original = score.read_text()
    score.write_text(original + "# edited by hand\n")
    assert status() == (1, "drifted", True)
    score.write_text(original)
    assert status() == (0, "live", True)

    os.killpg(record["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10  # until the kernel has taken the process away; not a timing assertion
    while time.monotonic() < deadline and status()[1] != "down":
        time.sleep(0.1)
    assert status() == (1, "down", True)
    assert run_cli("delete", "specs/mnist.yaml").code == 0
    assert status() == (1, "not deployed", False)


@pytest.mark.parametrize(
    "args", [("status",), ("status", "specs/mnist.yaml", "--bogus"), ("status", "specs/mnist.yaml", "extra.yaml")]
)
def test_status_usage_errors_exit_2(run_cli, project: Path, args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.code == 2 and "usage: pipeline" in result.err and "error:" in result.err
    no_traceback(result)


def test_status_help_states_its_exit_codes(run_cli) -> None:
    result = run_cli("status", "--help")
    assert result.code == 0
    assert (
        "0 the service is live and matches its record; 1 it is down, drifted, unreachable or not deployed"
        in " ".join(result.out.split())
    )
