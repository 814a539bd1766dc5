"""Tests for pipeline.evaluate: metrics against sklearn, chunking, the gate, the tutorial's plot."""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from pipeline.data import Dataset, load_dataset
from pipeline.errors import DataError, ModelError, StageFailed
from pipeline.evaluate import check_gate, evaluate, format_confusion, plot_confusion
from pipeline.models import load_model, sha256_file

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "examples" / "mnist" / "data"
MODEL = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset(MNIST / "test-images.gz", MNIST / "test-labels.gz", scale=255)


@pytest.fixture(scope="module")
def model() -> Any:
    return load_model(MODEL, "joblib", sha256_file(MODEL))


class Lookup:
    """A fake model that answers from a fixed table keyed by the first feature (the row number)."""

    def __init__(self, answers: np.ndarray) -> None:
        self.answers = answers

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.answers[X[:, 0].astype(int)]


def table_dataset(y: list[int]) -> Dataset:
    X = np.arange(len(y), dtype=np.int32).reshape(-1, 1)
    return Dataset(X=X, y=np.array(y, dtype=np.int64), scale=1.0, source="table")


def test_example_model_on_example_data_and_the_gate(mnist: Dataset, model: Any) -> None:
    ev = evaluate(model, mnist)
    assert ev.n == 1000 and ev.labels == tuple(range(10))
    assert 0.85 <= ev.accuracy <= 0.92
    np.testing.assert_array_equal(ev.y_pred, model.predict(mnist.rows(0, 1000)))
    check_gate(ev, 0.85)
    with pytest.raises(StageFailed) as err:
        check_gate(ev, 0.99)
    assert str(err.value) == (
        f"accuracy {ev.accuracy:.4f} is below test.min_accuracy 0.99 ({ev.correct} of 1000 test examples correct)"
    )


def test_metrics_match_sklearn(mnist: Dataset, model: Any) -> None:
    ev = evaluate(model, mnist, chunk_rows=128)
    y_pred = model.predict(mnist.rows(0, mnist.n))
    np.testing.assert_array_equal(ev.confusion, confusion_matrix(mnist.y, y_pred))
    p, r, f, _ = precision_recall_fscore_support(mnist.y, y_pred, zero_division=0)
    np.testing.assert_allclose(ev.precision, p, rtol=1e-12)
    np.testing.assert_allclose(ev.recall, r, rtol=1e-12)
    np.testing.assert_allclose(ev.f1, f, rtol=1e-12)
    assert ev.accuracy == float(np.mean(y_pred == mnist.y))


def test_labels_are_the_union_and_zero_denominators_are_zero() -> None:
    y = [0, 0, 2, 2, 5, 5]
    answers = np.array([0, 7, 2, 0, 7, 7])  # 7 is never true; 5 is never predicted
    ds = table_dataset(y)
    ev = evaluate(Lookup(answers), ds, chunk_rows=4)  # 7 first appears in the first chunk
    assert ev.labels == (0, 2, 5, 7)
    np.testing.assert_array_equal(ev.confusion, confusion_matrix(y, answers))
    p, r, f, _ = precision_recall_fscore_support(y, answers, zero_division=0)
    np.testing.assert_allclose(ev.precision, p)
    np.testing.assert_allclose(ev.recall, r)
    np.testing.assert_allclose(ev.f1, f)
    assert ev.precision[3] == 0.0 and ev.recall[2] == 0.0


def test_new_label_in_a_later_chunk_grows_the_matrix() -> None:
    y = [1, 1, 1, 3, 3, 3, 300, 300]
    answers = np.array([1, 1, 3, 3, 3, -4, 300, 1])
    ev = evaluate(Lookup(answers), table_dataset(y), chunk_rows=3)
    assert ev.labels == (-4, 1, 3, 300)
    np.testing.assert_array_equal(ev.confusion, confusion_matrix(y, answers))
    assert ev.y_pred.tolist() == answers.tolist()  # widened to hold -4


def test_chunked_equals_unchunked_and_reports_progress(mnist: Dataset, model: Any) -> None:
    seen: list[tuple[int, int]] = []
    small = evaluate(model, mnist, chunk_rows=333, progress=lambda done, n: seen.append((done, n)))
    whole = evaluate(model, mnist, chunk_rows=10_000)
    np.testing.assert_array_equal(small.confusion, whole.confusion)
    np.testing.assert_array_equal(small.y_pred, whole.y_pred)
    assert (small.accuracy, small.precision, small.f1) == (whole.accuracy, whole.precision, whole.f1)
    assert seen == [(333, 1000), (666, 1000), (999, 1000), (1000, 1000)]


def test_only_one_float_chunk_is_alive_at_a_time(mnist: Dataset, model: Any) -> None:
    refs: list[weakref.ref[np.ndarray]] = []

    class Watched(Dataset):
        def rows(self, start: int, stop: int) -> np.ndarray:
            assert all(r() is None for r in refs), "the previous chunk is still referenced"
            chunk = super().rows(start, stop)
            refs.append(weakref.ref(chunk))
            return chunk

    watched = Watched(X=mnist.X, y=mnist.y, scale=mnist.scale, source=mnist.source)
    assert evaluate(model, watched, chunk_rows=250).n == 1000
    assert len(refs) == 4


def test_evaluation_to_dict_is_json_ready(mnist: Dataset, model: Any) -> None:
    ev = evaluate(model, mnist, clock=iter([10.0, 12.5]).__next__)
    d = json.loads(json.dumps(ev.to_dict()))
    assert d["seconds"] == 2.5 and d["n"] == 1000 and d["labels"] == list(range(10))
    assert d["confusion"] == ev.confusion.tolist() and len(d["f1"]) == 10
    assert set(d) == {"n", "accuracy", "labels", "confusion", "precision", "recall", "f1", "seconds"}


def test_bad_predictions_and_empty_sets() -> None:
    ds = table_dataset([0, 1])
    with pytest.raises(ModelError, match=r"returned <U3 labels \(e.g. \['cat'\]\)"):
        evaluate(Lookup(np.array(["cat", "dog"])), ds)
    with pytest.raises(ModelError, match=r"returned shape \(2, 2\) for 2 rows"):
        evaluate(Lookup(np.eye(2, dtype=int)), ds)
    assert evaluate(Lookup(np.array([0.0, 1.0])), ds).accuracy == 1.0  # float labels that are ints
    with pytest.raises(DataError, match="table: the test set has no rows"):
        evaluate(Lookup(np.array([0])), table_dataset([]))


def test_format_confusion_is_numpys_print() -> None:
    conf = np.array([[960, 0, 3], [0, 1112, 12], [7, 5, 987]])
    assert format_confusion(conf) == str(conf)
    assert format_confusion(conf) == "[[ 960    0    3]\n [   0 1112   12]\n [   7    5  987]]"
    wide = np.arange(40 * 40).reshape(40, 40) * 1000
    assert len(format_confusion(wide).splitlines()) == 40  # one line per row, never wrapped


def test_plot_is_a_deterministic_png(tmp_path: Path) -> None:
    conf = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # the last row is empty: no NaN warnings
    first = plot_confusion(conf, tmp_path / "a" / "conf.png")
    second = plot_confusion(conf, tmp_path / "b.png", labels=(0, 1, 2))
    data = first.read_bytes()
    assert data.startswith(PNG_MAGIC) and data == second.read_bytes()
    assert plot_confusion(conf, first) == first and first.read_bytes() == data  # overwrite in place
    assert sorted(p.name for p in first.parent.iterdir()) == ["conf.png"]  # no temp file left
    (tmp_path / "plain").write_bytes(b"")  # same permissions as any file written normally
    assert first.stat().st_mode == (tmp_path / "plain").stat().st_mode
