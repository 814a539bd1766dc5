"""The Python API (pipeline.load, Pipeline, RunResult, Service) on a real project and a real local service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
from pipeline.errors import PipelineError, RunFailed, SpecError, TargetError, UsageError
from tests.conftest import ROOT

SPEC = "specs/mnist.yaml"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_importing_pipeline_loads_nothing_heavy() -> None:
    probe = (
        "import sys, pipeline; assert callable(pipeline.load); "
        "print(sorted(m for m in ('numpy', 'matplotlib', 'jinja2', 'sklearn', 'IPython') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_bad_spec_is_the_cli_s_spec_error(run_cli) -> None:
    bad = "tests/data/specs/invalid/bad-target.yaml"
    with pytest.raises(SpecError) as err:
        pipeline.load(ROOT / bad)
    cli = run_cli("validate", str(ROOT / bad))
    assert cli.code == 2 and cli.err.splitlines()[:-1] == err.value.messages
    # in Jupyter the message is shown, not a traceback
    first, *rest = err.value.messages
    assert err.value._render_traceback_() == [f"SpecError: {first}", *rest]


def test_selection_is_checked_as_the_cli_checks_its_flags(project) -> None:
    p = pipeline.load(SPEC)
    with pytest.raises(UsageError, match="to='deploi' is not a stage; the stages are check, fetch"):
        p.plan(to="deploi")
    with pytest.raises(UsageError, match="--only cannot be combined with --to"):
        p.run(only="evaluate", to="render")
    with pytest.raises(UsageError, match="--from render comes after --to fetch"):
        p.plan(from_stage="render", to="fetch")


def test_plan_is_the_plan_the_cli_prints(project, run_cli) -> None:
    p = pipeline.load(SPEC)
    plan = p.plan()
    assert plan.to_dict() == json.loads(run_cli("plan", SPEC, "--json").out)
    md, html = plan._repr_markdown_(), plan._repr_html_()
    assert "| deploy | create | no service is recorded |" in md
    assert md.rstrip().endswith("7 stage(s) to run, 0 unchanged.")
    assert "<td>deploy</td><td>create</td>" in html and "<details><summary>score.py</summary>" in html
    assert p.validate().name == "sklearn-mnist-svc"


def test_each_call_reads_the_spec_again_once_it_changed(project) -> None:
    p = pipeline.load(SPEC)
    _edit(project / SPEC, "cpu_cores: 1", "cpu_cores: 0")
    with pytest.raises(SpecError, match=r"deploy\.cpu_cores"):
        p.plan()


@pytest.mark.slow
def test_run_to_evaluate_returns_the_evaluation_as_records_and_a_figure(project) -> None:
    p = pipeline.load(SPEC)
    r = p.run(to="evaluate")
    assert r.ok and r.exit_code == 0 and [s.status for s in r.stages][:3] == ["ran", "ran", "ran"]
    ev = r.evaluation
    assert ev is not None and ev.accuracy == pytest.approx(0.887) and ev.passed
    assert ev.confusion.shape == (10, 10) and ev.correct == 887 and ev.confusion.sum() == ev.n == 1000
    assert ev.per_class[5].recall == pytest.approx(0.81) and ev.per_class[5].support == 100
    fig = ev.confusion_figure()
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure) and fig._repr_png_().startswith(b"\x89PNG")
    assert "| 5 | 0.835 | 0.810 |" in ev._repr_markdown_()
    assert r.smoke is None and r.service is None and p.service is None
    again = p.run(to="evaluate")  # skipped: the records come from the last success
    assert {s.status for s in again.stages} == {"skipped"} and again.evaluation.accuracy == ev.accuracy


@pytest.mark.slow
def test_a_failed_gate_raises_run_failed_after_writing_the_report(project) -> None:
    _edit(project / SPEC, "min_accuracy: 0.85", "min_accuracy: 0.99")
    p = pipeline.load(SPEC)
    with pytest.raises(RunFailed) as err:
        p.run()
    assert str(err.value).startswith("run failed at evaluate: accuracy 0.8870 is below test.min_accuracy 0.99")
    result = err.value.result
    assert not result.ok and result.exit_code == 1 and result.failed.stage == "evaluate"
    assert not result.evaluation.passed
    assert result.report is not None and "**Failed at `evaluate`**" in result.report.read_text()
    unchecked = p.run(check=False)
    assert unchecked.exit_code == 1 and unchecked.failed.stage == "evaluate"


@pytest.mark.slow
def test_the_service_as_the_tutorial_uses_it(project) -> None:
    _edit(project / SPEC, "auth: false", "auth: true")
    p = pipeline.load(SPEC)
    r = p.run()
    assert r.ok and r.smoke.agree and len(r.smoke.indices) == 30
    assert r.smoke.samples_figure()._repr_png_().startswith(b"\x89PNG")
    svc = p.service
    assert svc.scoring_uri == r.service.scoring_uri and svc.scoring_uri.startswith("http://127.0.0.1:")

    X, _ = p.test_data()
    assert X.shape == (1000, 784) and X.max() <= 1.0  # scaled as the spec says: X / 255
    body = json.dumps({"data": X[:3].tolist()})
    answers = svc.run(input_data=body)  # str, as json.dumps gives it; bytes, as the tutorial sends it
    assert answers == svc.run(input_data=body.encode()) and len(answers) == 3 and all(0 <= a <= 9 for a in answers)
    assert svc.run(input_data=bytes(json.dumps({"data": X[r.smoke.indices].tolist()}), "utf8")) == r.smoke.local
    with pytest.raises(UsageError, match="input_data must be bytes or str"):
        svc.run(input_data={"data": X[:1].tolist()})
    with pytest.raises(TargetError, match=r"answered HTTP 400: .*784"):
        svc.run(input_data='{"data": [[1, 2, 3]]}')

    primary, secondary = svc.get_keys()
    stored = json.loads((project / ".pipeline" / "sklearn-mnist-svc" / "service" / "keys.json").read_text())
    assert (primary, secondary) == (stored["primary"], stored["secondary"])
    assert "running init()" in svc.get_logs(num_lines=200) and svc.state == "live"
    assert p.status()["state"] == "live"

    assert svc.delete().startswith("stopped service process")
    assert p.service is None and svc.state == "deleted"
    with pytest.raises(UsageError, match="this service was deleted"):
        svc.run(input_data=body)
    assert p.delete() is None  # nothing left to delete


def test_get_keys_of_a_service_without_auth_says_so(project) -> None:
    from pipeline.targets.base import ServiceRecord
    from pipeline.webservice import Service

    svc = Service(pipeline.load(SPEC), ServiceRecord("local", "http://127.0.0.1:9/score"))
    with pytest.raises(UsageError, match="does not use key authentication"):
        svc.get_keys()
    with pytest.raises(TargetError, match=r"cannot reach http://127\.0\.0\.1:9/score"):
        svc.run(input_data=b'{"data": []}')


def test_every_expected_error_renders_as_its_message_in_jupyter() -> None:
    assert PipelineError("one\ntwo")._render_traceback_() == ["PipelineError: one", "two"]
    assert UsageError("bad")._render_traceback_() == ["UsageError: bad"]


def test_in_a_kernel_the_run_s_lines_and_progress_update_one_output_area(monkeypatch) -> None:
    """IPython's display, recorded at its module boundary: what a notebook's output area is sent."""
    import types

    from pipeline import jupyter

    assert type(jupyter.console()).__name__ == "Console"  # a script or a terminal: the terminal's console
    sent: list[tuple[str, str]] = []

    class Handle:
        def update(self, obj) -> None:
            sent.append(("update", obj.data))

    class Pretty:
        def __init__(self, data: str) -> None:
            self.data = data

    def display(obj, display_id: bool = False) -> Handle:
        assert display_id
        sent.append(("display", obj.data))
        return Handle()

    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(Pretty=Pretty, display=display))
    assert isinstance(jupyter.console(), jupyter.NotebookConsole)
    now = [100.0]
    console = jupyter.NotebookConsole(clock=lambda: now[0])
    console.progress("evaluate: 500 of 1,000 rows")
    console.progress("evaluate: 500 of 1,000 rows")  # the same line again: nothing sent
    now[0] += 0.05
    console.progress("evaluate: 1,000 of 1,000 rows")  # within a tenth of a second: kept for the next update
    console.print("evaluate  ran")
    console.clear_progress()
    assert sent == [
        ("display", "evaluate: 500 of 1,000 rows"),
        ("update", "evaluate  ran\nevaluate: 1,000 of 1,000 rows"),
        ("update", "evaluate  ran"),
    ]
