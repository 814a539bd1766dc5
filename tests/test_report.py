"""report.md and report.json: what a reviewer decides from, nothing of the machine that wrote it, within GitHub's limit.

The golden files in tests/data/golden-reports/ are the reports of real runs (a tag change, a retrained model, a failed
gate), with what differs from run to run (durations, latencies, the time, versions, the retrained model's
digest) set to fixed values. PIPELINE_UPDATE_GOLDEN=1 writes them again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import changes, comparison, reportmd
from pipeline.records import Change, DeployAction, Plan, Step, StepAction
from pipeline.scrub import Scrubber
from tests.conftest import ROOT

SPEC = "specs/mnist.yaml"
GOLDEN = ROOT / "tests" / "data" / "golden-reports"
REPORT = Path("reports") / "sklearn-mnist-svc"
PINNED = "f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4"
RETRAINED = "b" * 64  # the digest of the model retrained with --reg 0.01, whatever this machine's libraries write


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def _report(project: Path) -> tuple[dict, str]:
    return json.loads((project / REPORT / "report.json").read_text()), (project / REPORT / "report.md").read_text()


def _no_machine(project: Path, text: str) -> None:
    """Nothing of this machine: not the temporary folder, no absolute path at all, no loopback address."""
    for where in {str(project), str(project.resolve()), str(Path.home())}:
        assert where not in text, f"{where} in the report"
    assert not re.search(r"(?<![\w.~:/-])/(?:tmp|home|root|usr|var|proc|etc|opt|work)/", text), re.search(
        r".{40}(?<![\w.~:/-])/(?:tmp|home|root|usr|var|proc|etc|opt|work)/.{40}", text
    )
    assert "127.0.0.1" not in text and "localhost:" not in text
    assert not re.search(r"\bpid \d", text)


def _normalized(report: dict, digests: dict[str, str]) -> dict:
    text = json.dumps(report)
    for real, token in digests.items():
        text = text.replace(real, token).replace(real[:12], token[:12])
    out = json.loads(text)
    out["generated_at"] = 1767225600.0  # 2026-01-01 00:00 UTC
    out["pipeline"] = "0.1.0"
    out["versions"] = {"python": "3.11", "packages": {"numpy": "2", "scikit-learn": "1"}, "target": "local"}
    for stage in out["stages"]:
        stage["seconds"] = 1.0 if stage["status"] in ("ran", "failed") else 0.0
    if out.get("smoke"):
        out["smoke"]["latency_ms"] = {"min": 1.0, "p50": 2.0, "max": 3.0}
    return out


def _golden(name: str, report: dict, digests: dict[str, str]) -> None:
    got = reportmd.markdown(_normalized(report, digests))
    path = GOLDEN / f"{name}.md"
    if os.environ.get("PIPELINE_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert got == path.read_text(), f"{name}: the report differs from {path} (PIPELINE_UPDATE_GOLDEN=1 writes it)"


@pytest.mark.slow
def test_reports_of_a_tag_change_a_retrained_model_and_a_failed_gate(project, run_cli) -> None:
    first = run_cli("run", SPEC)
    assert first.code == 0, first.out + first.err
    report, md = _report(project)
    assert md == reportmd.markdown(report)  # report.md is report.json's, so the goldens below are the real thing
    assert "**Created the service.**" in md and "| deploy | create | no service is recorded | ran |" in md
    _no_machine(project, md + json.dumps(report))

    # a tag change: the field, once, with its old and new value; render and deploy run because of it
    _edit(project / SPEC, "method: sklearn}", "method: sgd}")
    assert run_cli("run", SPEC).code == 0
    report, md = _report(project)
    _no_machine(project, md + json.dumps(report))
    assert report["changes"] == [
        {"field": "tags.method", "before": "sklearn", "after": "sgd", "kind": "value", "stages": ["render", "deploy"]}
    ]
    assert "inputs changed" not in md and md.count("`sklearn`") == 1
    _golden("tag-change", report, {})

    # a retrained model (another C): accuracy before -> after, the pin that changed, the cells that moved
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
    assert trained.returncode == 0, trained.stderr
    digest = re.search(r"sha256 ([0-9a-f]{64})", trained.stdout).group(1)
    _edit(project / SPEC, PINNED, digest)
    plan = run_cli("plan", SPEC)
    assert plan.code == 0 and f"~ model.sha256: '{PINNED}' -> '{digest}'" in plan.out
    assert run_cli("run", SPEC).code == 0
    report, md = _report(project)
    _no_machine(project, md + json.dumps(report))
    assert "Accuracy **0.8870 → 0.8780** (-0.0090)." in md
    assert [c["field"] for c in report["changes"]] == ["model.sha256"]
    assert report["comparison"]["moved"][0] == {"true": 9, "predicted": 7, "before": 5, "after": 7, "change": 2}
    _golden("model-change", report, {digest: RETRAINED})

    # a gate the model fails: nothing deployed, the gate's field explains the run, the last success is "before"
    _edit(project / SPEC, "min_accuracy: 0.85", "min_accuracy: 0.99")
    failed = run_cli("run", SPEC)
    assert failed.code == 1
    report, md = _report(project)
    _no_machine(project, md + json.dumps(report))
    assert md.startswith("## Deployment report") and "**Failed at `evaluate`**: accuracy 0.8780 is below" in md
    assert report["changes"][0]["field"] == "test.min_accuracy" and "samples.png" not in md
    _golden("failed-gate", report, {digest: RETRAINED})


@pytest.mark.slow
def test_summary_appends_the_same_markdown_for_a_ci_job_summary(project, run_cli, monkeypatch) -> None:
    summary = project / "summary.md"
    done = run_cli("run", SPEC, "--summary", str(summary))
    assert done.code == 0
    assert summary.read_text() == (project / REPORT / "report.md").read_text()
    # a run that stops before the report stage still says what it did, in the same form
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(project / "step.md"))
    _edit(project / SPEC, "min_accuracy: 0.85", "min_accuracy: 0.86")
    assert run_cli("run", SPEC, "--to", "evaluate").code == 0
    assert run_cli("run", SPEC, "--to", "evaluate").code == 0
    step = (project / "step.md").read_text()
    assert step.count("## Deployment report: `sklearn-mnist-svc`") == 2  # appended, as GitHub expects
    assert "| `test.min_accuracy` | `0.85` | `0.86` |" in step
    _no_machine(project, step)
    bad = run_cli("run", SPEC, "--summary", str(project / "no" / "such" / "folder" / "x.md"))
    assert bad.code == 1 and "error: --summary" in bad.err and "cannot write" in bad.err


def _big_report() -> dict:
    ev = {
        "n": 1000,
        "accuracy": 0.9,
        "labels": list(range(10)),
        "min_accuracy": 0.5,
        "confusion": [[90 if i == j else 1 for j in range(10)] for i in range(10)],
        "precision": [0.9] * 10,
        "recall": [0.9] * 10,
        "f1": [0.9] * 10,
    }
    diff = "--- deployed/score.py\n+++ rendered/score.py\n" + "".join(f"+line {i} {'x' * 60}\n" for i in range(3000))
    return {
        "spec": "big",
        "spec_file": "specs/big.yaml",
        "generated_at": 0,
        "target": "local",
        "description": "d",
        "outcome": {"ok": True, "summary": "Updated the service", "failed": None},
        "changes": [{"field": "tags.a", "before": "1", "after": "2", "kind": "value", "stages": ["deploy"]}],
        "stages": [],
        "evaluation": ev,
        "evaluated": True,
        "comparison": None,
        "smoke": None,
        "plan": {
            "steps": [
                {
                    "stage": "deploy",
                    "action": "run",
                    "deploy": {"action": "update", "files": {"score.py": diff, "myenv.yml": diff[:9000]}},
                }
            ]
        },
    }


def _balanced(md: str) -> None:
    assert md.count("<details>") == md.count("</details>")
    assert md.count("```") % 2 == 0


def test_a_long_report_is_cut_to_githubs_limit_with_a_note() -> None:
    report = _big_report()
    whole = reportmd.markdown(report, limit=10**9)
    assert len(whole) > reportmd.LIMIT
    md = reportmd.markdown(report)
    assert len(md) <= reportmd.LIMIT == 65_536
    assert "cut to stay under GitHub's 65,536-character limit" in md and "more line(s) cut" in md
    assert "| `tags.a` | `1` | `2` |" in md and "Confusion matrix" in md  # the short parts are all kept
    _balanced(md)


def test_a_report_too_long_even_without_its_folds_is_cut_hard() -> None:
    report = _big_report()
    report["changes"] = [
        {"field": f"tags.t{i}", "before": "x" * 200, "after": "y" * 200, "kind": "value", "stages": []}
        for i in range(400)
    ]
    md = reportmd.markdown(report)
    assert len(md) <= reportmd.LIMIT and md.endswith("report.json beside it has everything._\n")


def test_text_from_the_spec_cannot_break_the_markdown() -> None:
    report = _big_report()
    report["description"] = "</details><script>x</script> | pipe"
    report["changes"] = [{"field": "tags.owner", "before": "a`b", "after": "c|d", "kind": "value", "stages": []}]
    md = reportmd.markdown(report, limit=10**9)
    assert "&lt;/details&gt;&lt;script&gt;" in md and "\\| pipe" in md
    assert "| `tags.owner` | `` a`b `` | `c\\|d` |" in md
    _balanced(md)


# -- the parts, on their own ------------------------------------------------------------------------


def _step(stage: str, recorded_inputs, inputs, *, outputs=None, change=None) -> Step:
    recorded = {"inputs": recorded_inputs, "outputs": outputs or {}} if recorded_inputs is not None else None
    return Step(stage, StepAction.RUN, "inputs changed", "d", inputs, change, recorded=recorded)


def test_changes_are_named_by_spec_field_and_said_once() -> None:
    old_pin, new_pin = "a" * 64, "c" * 64
    steps = (
        _step(
            "check",
            {"model": old_pin, "packages": {"numpy": "2.4.5"}, "output": "labels"},
            {"model": new_pin, "packages": {"numpy": "2.4.6"}, "output": "labels"},
        ),
        _step(
            "fetch", {"pin": old_pin, "source": {"sha256": old_pin}}, {"pin": new_pin, "source": {"sha256": new_pin}}
        ),
        _step(
            "evaluate",
            {"model": old_pin, "min_accuracy": 0.85, "runtime": {"numpy": "2.4.5"}},
            {"model": new_pin, "min_accuracy": 0.9, "runtime": {"numpy": "2.4.6"}},
        ),
        _step(
            "render",
            {"files": {"local.json": "1"}},
            {"files": {"local.json": "2"}},
            outputs={"values": {"tags": {"method": "sklearn"}, "environment": {"name": "a-env"}}},
        ),
        _step(
            "deploy",
            None,
            None,
            change=Change(DeployAction.UPDATE, "ok", (("tags.method", "sklearn", "sgd"), ("target", "aci", "local"))),
        ),
        _step("smoke", {"service": {"uri": "u1"}, "seed": 1}, {"service": {"uri": "u2"}, "seed": 2}),
        _step("report", {"stages": {}}, {"stages": {"x": 1}}),
        _step("audit", {"rules": 1}, {"rules": 2}),  # a stage this module does not know: named by its input
    )
    # deploy compares with the live service's record, which it has even without a stage record of its own
    steps = steps[:4] + (Step("deploy", StepAction.RUN, "", "d", None, steps[4].change, recorded={}),) + steps[5:]
    explained = changes.explain(
        Plan("s", steps), pinned=True, values={"tags": {"method": "sgd"}, "environment": {"name": "b-env"}}
    )
    rows = {(c.field, c.old, c.new): c.stages for c in explained.changes}
    assert rows == {
        ("model.sha256", old_pin, new_pin): ("check", "fetch", "evaluate"),  # the pin and its file: one change
        ("numpy (installed)", "2.4.5", "2.4.6"): ("check", "evaluate"),
        ("test.min_accuracy", 0.85, 0.9): ("evaluate",),
        ("tags.method", "sklearn", "sgd"): ("render", "deploy"),
        ("deploy.target", "aci", "local"): ("deploy",),
        ("test.seed", 1, 2): ("smoke",),  # the smoke test's service follows deploy: said there, not again
        ("audit input rules", 1, 2): ("audit",),
    }
    assert explained.why["fetch"] == ("model.sha256",) and explained.why["render"] == ("tags.method",)


def test_a_rendered_file_that_changed_without_a_spec_field_is_named_as_such() -> None:
    step = _step(
        "render",
        {"files": {"score.py": "1", "myenv.yml": "1"}},
        {"files": {"score.py": "2", "myenv.yml": "1"}},
        outputs={"values": {"name": "x"}},
    )
    found = changes.step_changes(step, pinned=True, values={"name": "x"})
    assert [(c.field, c.kind) for c in found] == [("score.py", "rendered")]
    moved = _step(
        "render",
        {"files": {"score.py": "1"}},
        {"files": {"score.py": "2"}},
        outputs={"values": {"model": {"source": "../m/a.pkl", "file": "a.pkl"}}},
    )
    found = changes.step_changes(moved, pinned=True, values={"model": {"source": "../m/b.pkl", "file": "b.pkl"}})
    assert [(c.field, c.old, c.new) for c in found] == [("model.source", "../m/a.pkl", "../m/b.pkl")]  # said once
    unpinned = changes.step_changes(_step("evaluate", {"model": "a"}, {"model": "b"}), pinned=False)
    assert [(c.field, c.kind) for c in unpinned] == [("model.source", "content")]


def test_comparison_aligns_by_label_and_ranks_the_cells_that_moved() -> None:
    before = {
        "n": 4,
        "accuracy": 0.5,
        "labels": [0, 1],
        "confusion": [[1, 1], [1, 1]],
        "precision": [0.5, 0.5],
        "recall": [0.5, 0.5],
        "f1": [0.5, 0.5],
        "model_sha256": "a",
    }
    after = {
        "n": 4,
        "accuracy": 0.5,
        "labels": [0, 1, 2],
        "confusion": [[2, 0, 0], [0, 0, 1], [0, 0, 0]],
        "precision": [1.0, 0.0, 0.0],
        "recall": [1.0, 0.0, 0.0],
        "f1": [1.0, 0.0, 0.0],
        "model_sha256": "b",
    }
    cmp = comparison.compare(before, after)
    assert cmp["correct"] == {"before": 2, "after": 2, "change": 0} and not cmp["same_model"]
    # the largest moves first; of equal ones, the errors that are more frequent now
    assert [(c["true"], c["predicted"], c["change"]) for c in cmp["moved"]] == [(1, 2, 1), (0, 1, -1), (1, 0, -1)]
    assert cmp["per_class"][2]["recall"] == {"before": None, "after": 0.0, "change": None}


def test_the_scrubber_keeps_nothing_of_this_machine(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    s = Scrubber(root, [(root / ".pipeline", ".pipeline"), (tmp_path / "elsewhere", "$PIPELINE_REPORTS")])
    assert s.text(f"-> {root}/.pipeline/x/build") == "-> .pipeline/x/build"
    assert s.text(f"{tmp_path}/elsewhere/x/report.md is missing") == "$PIPELINE_REPORTS/x/report.md is missing"
    assert s.text(f"{root}/specs/a.yaml:3") == "specs/a.yaml:3"
    assert s.text("created http://127.0.0.1:40123/score") == "created the local service (/score)"
    assert s.text("healthy at http://localhost:8/score (pid 4711)") == "healthy at the local service (/score)"
    assert s.text("service process 4711 is not running") == "service process is not running"
    assert s.text("in /usr/lib/python3/x.py, line 3") == "in …/x.py, line 3"
    assert (
        s.text("https://x.azurecontainer.io/score and application/json")
        == "https://x.azurecontainer.io/score and application/json"
    )
    assert s.data({"a": [f"{root}/b"], "n": 1}) == {"a": ["b"], "n": 1}
