"""Micro-batching is invisible in the answers: the rendered score.py's predict_rows in pipeline.serve.batching, in
process, with the example model and real test images; every batch size from 1 to 64, mixed batches, bad neighbours."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from pipeline import render
from pipeline import spec as specs
from pipeline.serve import script as script_module
from pipeline.serve.batching import MAX_ROWS, BatchFailed, FairSlices, MicroBatcher
from pipeline.serve.script import RunTimeout, ScoringScript, call_with_timeout, install_alarm, load_script
from tests.conftest import EXAMPLE_DATA, EXAMPLE_MODEL, ROOT

with gzip.open(EXAMPLE_DATA / "test-images.gz") as _f:
    IMAGES = np.frombuffer(_f.read(), np.uint8, offset=16).reshape(-1, 784) / 255.0


def rendered(tmp_path: Path, output: str) -> ScoringScript:
    """score.py as `render` writes it for specs/mnist.yaml (with scoring.output set), loaded as a worker loads it."""
    project = tmp_path / output
    (project / "specs").mkdir(parents=True)
    shutil.copytree(
        ROOT / "examples" / "mnist", project / "examples" / "mnist", ignore=shutil.ignore_patterns("__pycache__")
    )
    text = (ROOT / "specs" / "mnist.yaml").read_text().replace("output: labels", f"output: {output}")
    (project / "specs" / "mnist.yaml").write_text(text)
    out = project / "build"
    render.write_files(out, render.render(specs.load(project / "specs" / "mnist.yaml")))
    os.environ["AZUREML_MODEL_DIR"] = str(EXAMPLE_MODEL.parent)
    script = load_script(str(out / "score.py"))
    script.init()
    return script


@pytest.fixture(scope="module")
def model() -> Any:
    return joblib.load(EXAMPLE_MODEL)


def run_batches(script: ScoringScript, requests: list[Any]) -> tuple[list[Any], list[int]]:
    """Submit every request in one loop pass (so they share batches), then the answers and the calls' row counts."""
    assert script.predict_rows is not None
    predict_rows = script.predict_rows
    calls: list[int] = []

    def counted(matrix: Any) -> list[Any]:
        calls.append(len(matrix))
        return predict_rows(matrix)

    async def main() -> list[Any]:
        batcher = MicroBatcher(counted, 30.0, FairSlices(), join=script.batch_rows)
        futures = [batcher.submit(rows) for rows in requests]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    return asyncio.run(main()), calls


def per_row(model: Any, rows: np.ndarray, output: str) -> list[Any]:
    """What predict / predict_proba answers for each row alone."""
    call = model.predict_proba if output == "probabilities" else model.predict
    return [call(row.reshape(1, -1)).tolist()[0] for row in rows]


def test_every_batch_size_from_1_to_64_answers_each_row_as_predict_alone(tmp_path: Path, model: Any) -> None:
    script = rendered(tmp_path, "labels")
    assert script.batch_rows
    start = 0
    for size in range(1, MAX_ROWS + 1):
        rows = IMAGES[start : start + size]
        start = (start + size) % (len(IMAGES) - MAX_ROWS)
        bodies = [script.parse_rows(_body(row[None, :])) for row in rows]  # type: ignore[misc]
        answers, calls = run_batches(script, bodies)
        assert calls == [size]  # one predict_rows() call for the whole batch
        assert [a[0] for a in answers] == per_row(model, rows, "labels")


def test_mixed_batches_with_a_bad_neighbour_fail_only_it(tmp_path: Path, model: Any) -> None:
    script = rendered(tmp_path, "labels")
    sizes = [1, 5, 30, 1, 2, 17, 8, 1, 64, 3]
    requests: list[Any] = []
    start = 0
    for size in sizes:
        requests.append(IMAGES[start : start + size])
        start += size
    requests.insert(4, np.zeros((2, 700)))  # parsed by a script without the host's checks: the wrong width
    answers, calls = run_batches(script, requests)
    assert isinstance(answers[4], BatchFailed)
    good = [a for i, a in enumerate(answers) if i != 4]
    assert all(isinstance(a, list) for a in good)
    assert [label for answer in good for label in answer] == per_row(model, IMAGES[: sum(sizes)], "labels")
    assert max(calls) <= MAX_ROWS and len(calls) < len(requests) + len(sizes)  # batched, then the culprit alone


def test_probabilities_are_predicted_per_request_and_equal_predict_proba(tmp_path: Path, model: Any) -> None:
    script = rendered(tmp_path, "probabilities")
    assert not script.batch_rows
    sizes = [1, 1, 3, 1, 30, 2]
    requests = []
    start = 0
    for size in sizes:
        requests.append(IMAGES[start : start + size])
        start += size
    answers, calls = run_batches(script, requests)
    assert calls == sizes  # one call per request, in one pass
    for rows, answer in zip(requests, answers):
        assert answer == model.predict_proba(rows).tolist()  # bit for bit, as if it had come alone
    single = [a[0] for a, rows in zip(answers, requests) if len(rows) == 1]
    assert single == [p for rows in requests if len(rows) == 1 for p in per_row(model, rows, "probabilities")]


def _body(rows: np.ndarray) -> bytes:
    import json

    return json.dumps({"data": rows.tolist()}).encode()


def test_a_lone_request_is_answered_without_the_queue(tmp_path: Path, model: Any) -> None:
    script = rendered(tmp_path, "labels")
    assert script.predict_rows is not None

    async def main() -> tuple[bool, list[Any], bool]:
        batcher = MicroBatcher(script.predict_rows, 30.0, FairSlices())  # type: ignore[arg-type]
        future = batcher.submit(IMAGES[:3], alone=True)
        done_at_once = future.done()  # predicted inside submit(): no pass through the consumer task
        queued = batcher.submit(IMAGES[3:4])  # another request: queued for the consumer
        return done_at_once, [await future, await queued], queued.done()

    done_at_once, answers, _ = asyncio.run(main())
    assert done_at_once
    assert answers == [per_row(model, IMAGES[:3], "labels"), per_row(model, IMAGES[3:4], "labels")]


# --- the linear classifiers' predict without its input checks ---------------------------------------


def test_the_example_model_is_predicted_by_its_arithmetic_with_predicts_answers(tmp_path: Path, model: Any) -> None:
    script = rendered(tmp_path, "labels")
    labels = script.module._labels
    assert labels is not None  # LogisticRegression: predict() is LinearClassifierMixin's own
    assert script.predict_rows is not None
    assert script.predict_rows(IMAGES) == model.predict(IMAGES).tolist()  # all 1,000 test images at once
    for size in (1, 2, 7, 30, 64):
        rows = np.ascontiguousarray(IMAGES[100 : 100 + size])
        assert script.predict_rows(rows) == model.predict(rows).tolist()
    noise = np.random.RandomState(7).normal(0.0, 3.0, size=(256, 784))  # far from the training data
    assert labels(noise).tolist() == model.predict(noise).tolist()


def _linear(tmp_path: Path, fitted: Any) -> Any:
    """The rendered score.py's _linear_labels for another fitted model (the rendered module, not a copy)."""
    script = rendered(tmp_path, "labels")
    return script.module._linear_labels(fitted)


def test_two_classes_use_the_sign_of_the_score(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    with gzip.open(EXAMPLE_DATA / "test-labels.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    X, target = IMAGES[:600], np.where(y[:600] == 3, "three", "other")
    binary = LogisticRegression(max_iter=200).fit(X, target)
    labels = _linear(tmp_path, binary)
    assert labels is not None
    assert labels(IMAGES[600:]).tolist() == binary.predict(IMAGES[600:]).tolist()
    assert {"three", "other"} == set(labels(IMAGES).tolist())


def test_models_whose_predict_is_their_own_keep_predict(tmp_path: Path, model: Any) -> None:
    import copy

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    class Shifted(LogisticRegression):
        def predict(self, X: Any) -> Any:
            return super().predict(X + 1.0)

    shifted = Shifted()
    shifted.__dict__.update(model.__dict__)
    sparse = copy.deepcopy(model).sparsify()  # coef_ becomes a scipy matrix
    piped = make_pipeline(StandardScaler(), LogisticRegression(max_iter=50)).fit(
        IMAGES[:300], model.predict(IMAGES[:300])
    )
    unfitted = LogisticRegression()
    assert [_linear(tmp_path / str(i), m) for i, m in enumerate((shifted, sparse, piped, unfitted))] == [None] * 4
    for_float32 = copy.deepcopy(model)
    for_float32.coef_ = for_float32.coef_.astype(np.float32)  # scikit-learn would compute in another dtype
    assert _linear(tmp_path / "f32", for_float32) is None


def test_a_linear_model_that_disagrees_on_the_probe_keeps_predict(tmp_path: Path, model: Any) -> None:
    import copy

    patched = copy.deepcopy(model)
    assert _linear(tmp_path / "ok", patched) is not None
    # its class's predict is the mixin's, but this instance answers otherwise: the probe at init sees it
    patched.predict = lambda X: np.zeros(len(X), dtype=model.classes_.dtype)
    assert _linear(tmp_path / "patched", patched) is None


def _spin(seconds: float) -> str:
    until = time.monotonic() + seconds
    while time.monotonic() < until:  # Python bytecode: the alarm's handler runs in it
        pass
    return "done"


def test_the_timer_is_never_left_set_without_the_handler_that_expects_it() -> None:
    """Outside a worker (no install_alarm), a timer left set would end the process when it goes off."""
    assert signal.getsignal(signal.SIGALRM) is not script_module._on_alarm
    assert call_with_timeout(abs, 0.05, -1) == 1
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_timer_set_once_serves_later_calls_and_still_stops_an_overrun() -> None:
    """call_with_timeout keeps one interval timer across calls: none cut short, every overrun stopped."""
    previous = signal.getsignal(signal.SIGALRM)
    install_alarm()
    try:
        assert call_with_timeout(lambda: "quick", 0.05) == "quick"  # leaves the timer set, 0.05 s ahead
        # a later call with more time: the early alarm sets the timer again instead of raising
        assert call_with_timeout(_spin, 0.5, 0.15) == "done"
        time.sleep(0.5)  # the timer goes off with no call running
        # a call with less time than the timer left: it is set again for this call
        assert call_with_timeout(lambda: "quick", 30) == "quick"
        with pytest.raises(RunTimeout):  # at its own deadline: the 30 s timer would let the 5 s spin finish
            call_with_timeout(_spin, 0.05, 5)
        # after an overrun, and after the timer went off with no call running, calls still work
        time.sleep(0.1)
        assert [call_with_timeout(abs, 0.02, -n) for n in range(100)] == list(range(100))
        with pytest.raises(RunTimeout):
            call_with_timeout(_spin, 0.02, 5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        script_module._fires_at = 0.0  # cleared: the next call in this process sets it again
        signal.signal(signal.SIGALRM, previous)
