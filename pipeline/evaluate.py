"""Test the model locally, as the tutorial does: accuracy, confusion matrix, per-class scores, plot."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import DataError, ModelError, StageFailed

if TYPE_CHECKING:
    import numpy as np

    from pipeline.data import Dataset

# Up to this many rows the predictions are kept (compact ints: 1 byte a row for MNIST) so
# later stages can compare a deployed service's answers with the local ones without predicting again.
KEEP_PREDICTIONS_MAX = 5_000_000


@dataclass(frozen=True, eq=False)
class Evaluation:
    """What the evaluate stage measured; confusion rows are true labels, columns predicted."""

    n: int
    accuracy: float
    labels: tuple[int, ...]
    confusion: np.ndarray
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    seconds: float
    y_pred: np.ndarray | None = None  # None when the test set has more than KEEP_PREDICTIONS_MAX rows

    @property
    def correct(self) -> int:
        return int(self.confusion.trace())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain ints, floats and lists (predictions are left out)."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
            "precision": list(self.precision),
            "recall": list(self.recall),
            "f1": list(self.f1),
            "seconds": self.seconds,
        }


def _as_int_labels(pred: Any, rows: int) -> np.ndarray:
    """The model's predictions as int64; the test labels are integers, so must they be."""
    import numpy as np

    arr = np.asarray(pred)
    if arr.shape != (rows,):
        raise ModelError(f"model.predict returned shape {arr.shape} for {rows} rows; expected ({rows},)")
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ModelError(
        f"model.predict returned {arr.dtype} labels (e.g. {arr[:1].tolist()}); the test labels are integers"
    )


def evaluate(
    model: Any,
    dataset: Dataset,
    *,
    chunk_rows: int = 10_000,
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Evaluation:
    """Predict the test set chunk by chunk and score it; memory is one float64 chunk at a time."""
    import numpy as np

    n = dataset.n
    if n == 0:
        raise DataError(f"{dataset.source}: the test set has no rows")
    started = clock()
    # Known labels grow as predictions show new ones; the matrix is indexed by position in it.
    labels = np.unique(dataset.y)
    conf = np.zeros((labels.size, labels.size), dtype=np.int64)
    y_pred = None
    if n <= KEEP_PREDICTIONS_MAX:
        y_pred = np.empty(
            n, dtype=np.promote_types(np.min_scalar_type(int(labels[0])), np.min_scalar_type(int(labels[-1])))
        )
    for start, X in dataset.iter_chunks(chunk_rows):
        stop = start + X.shape[0]
        pred = _as_int_labels(model.predict(X), X.shape[0])
        del X  # drop this chunk before the generator builds the next one
        new = np.setdiff1d(pred, labels)
        if new.size:
            grown = np.union1d(labels, new)
            pos = np.searchsorted(grown, labels)
            bigger = np.zeros((grown.size, grown.size), dtype=np.int64)
            bigger[np.ix_(pos, pos)] = conf
            labels, conf = grown, bigger
        if y_pred is not None:
            info = np.iinfo(y_pred.dtype)
            if pred.min() < info.min or pred.max() > info.max:  # a label the test set lacks
                y_pred = y_pred.astype(np.int64)
            y_pred[start:stop] = pred
        k = labels.size
        pairs = np.searchsorted(labels, dataset.y[start:stop]) * k + np.searchsorted(labels, pred)
        conf += np.bincount(pairs, minlength=k * k).reshape(k, k)
        if progress is not None:
            progress(stop, n)
    precision, recall, f1 = per_class_scores(conf)
    return Evaluation(
        n=n,
        accuracy=float(conf.trace() / n),
        labels=tuple(int(v) for v in labels),
        confusion=conf,
        precision=precision,
        recall=recall,
        f1=f1,
        seconds=clock() - started,
        y_pred=y_pred,
    )


def per_class_scores(conf: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """Precision, recall and F1 per class, 0 where a denominator is 0 (sklearn's zero_division=0)."""
    import numpy as np

    tp = np.diag(conf).astype(np.float64)
    predicted, actual = conf.sum(axis=0), conf.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        # 2tp / (2tp + fp + fn), the form sklearn uses; equal to 2pr/(p+r) when both are defined.
        denom = predicted + actual
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return tuple(map(float, precision)), tuple(map(float, recall)), tuple(map(float, f1))


def format_confusion(conf: np.ndarray) -> str:
    """The matrix as the tutorial's print(conf_mx) shows it, one row per line however wide."""
    import numpy as np

    return np.array2string(conf, max_line_width=1 << 30, threshold=1 << 30)


def plot_confusion(conf: np.ndarray, path: Path, labels: tuple[int, ...] | None = None) -> Path:
    """The tutorial's figure of errors (pipeline.figures.confusion_figure) as a PNG file."""
    from pipeline import figures

    path = Path(path)
    # No Software/date chunks: the same matrix gives the same bytes, so reports diff cleanly.
    _write_atomic(path, figures.png(figures.confusion_figure(conf, labels)))
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "xb") rather than mkstemp: mkstemp's 0600 would make the plot unreadable to others.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_gate(evaluation: Evaluation, min_accuracy: float) -> None:
    """Stop the pipeline before deployment when the model scores below test.min_accuracy."""
    if evaluation.accuracy < min_accuracy:
        raise StageFailed(
            f"accuracy {evaluation.accuracy:.4f} is below test.min_accuracy {min_accuracy:g} "
            f"({evaluation.correct} of {evaluation.n} test examples correct)"
        )
