"""The check stage: what the spec says of the model that the model itself contradicts, caught before anything runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from tests.test_runner import _edit, _statuses

SPEC = "specs/mnist.yaml"
PIN = "f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4"


def _use_model(project: Path, model: object, *, pin: bool = True) -> str:
    """Fit nothing here: dump the given fitted model beside the example one and point the spec at it."""
    path = project / "examples" / "mnist" / "other_model.pkl"
    joblib.dump(model, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _edit(project / SPEC, "sklearn_mnist_model.pkl", "other_model.pkl")
    _edit(project / SPEC, f"sha256: {PIN}", f"sha256: {digest}" if pin else "")
    return digest


def _fitted(model, features: int):  # type: ignore[no-untyped-def]
    rng = np.random.RandomState(0)
    return model.fit(rng.rand(40, features), np.arange(40) % 2)


def test_a_model_of_another_width_fails_check_before_fetch(project, run_cli) -> None:
    _use_model(project, _fitted(LogisticRegression(), 100))
    assert run_cli("validate", SPEC).code == 0  # only the model knows its width
    result = run_cli("run", SPEC)
    assert result.code == 1
    assert _statuses(result.out) == {
        "check": "failed",
        "fetch": "not run",
        "evaluate": "not run",
        "render": "not run",
        "deploy": "not run",
        "smoke": "not run",
        "report": "ran",
    }
    assert (
        "scoring.features is 784, but the model was fitted on 100 features (its n_features_in_): "
        "set scoring.features: 100"
    ) in result.out
    assert not (project / ".pipeline" / "sklearn-mnist-svc" / "models").exists()


def test_probabilities_from_a_model_without_predict_proba_fail_check(project, run_cli) -> None:
    _use_model(project, _fitted(LinearSVC(), 784))
    _edit(project / SPEC, "output: labels", "output: probabilities")
    result = run_cli("run", SPEC, "--only", "check")
    assert result.code == 1
    assert (
        "scoring.output is probabilities, but the model (LinearSVC) has no predict_proba: use output: labels, "
        "or a model that estimates probabilities"
    ) in result.out
    # with labels the same model passes check
    _edit(project / SPEC, "output: probabilities", "output: labels")
    assert run_cli("run", SPEC, "--only", "check").code == 0


def test_both_problems_are_reported_at_once(project, run_cli) -> None:
    _use_model(project, _fitted(LinearSVC(), 3))
    _edit(project / SPEC, "output: labels", "output: probabilities")
    result = run_cli("run", SPEC, "--only", "check")
    assert result.code == 1
    assert "fitted on 3 features" in result.out and "has no predict_proba" in result.out


def test_a_fitting_model_passes_and_a_changed_one_reruns_check(project, run_cli) -> None:
    assert run_cli("run", SPEC, "--only", "check").code == 0
    assert _statuses(run_cli("run", SPEC, "--only", "check").out)["check"] == "skipped"
    digest = _use_model(project, _fitted(LogisticRegression(), 784))
    _edit(project / SPEC, "output: labels", "output: probabilities")  # LogisticRegression has predict_proba
    rerun = run_cli("run", SPEC, "--only", "check")
    assert rerun.code == 0 and _statuses(rerun.out)["check"] == "ran"
    recorded = json.loads((project / ".pipeline" / "sklearn-mnist-svc" / "state.json").read_text())
    assert (recorded["stages"]["check"]["inputs"]["model"], recorded["stages"]["check"]["inputs"]["output"]) == (
        digest,
        "probabilities",
    )


def test_check_loads_no_model_whose_pin_does_not_match(project, run_cli) -> None:
    model = project / "examples" / "mnist" / "sklearn_mnist_model.pkl"
    data = bytearray(model.read_bytes())
    data[-3] ^= 0xFF
    model.write_bytes(bytes(data))
    result = run_cli("run", SPEC)
    # check does not load it: fetch refuses it, in its own words, before anything unpickles it
    assert _statuses(result.out)["check"] == "ran" and _statuses(result.out)["fetch"] == "failed"
    assert "sha256 mismatch" in result.out
