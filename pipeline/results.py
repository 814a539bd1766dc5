"""What the Python API returns from a run: the evaluation and the smoke test as typed records, with their figures."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import StateError

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from pipeline.stages.evaluate import EvaluateOutput
    from pipeline.stages.smoke import SmokeOutput


@dataclass(frozen=True)
class ClassScores:
    label: int
    precision: float
    recall: float
    f1: float
    support: int  # test examples of this class


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """The tutorial's "test the model locally": accuracy, the confusion matrix (rows: true, columns: predicted)."""

    accuracy: float
    n: int
    labels: tuple[int, ...]
    confusion: np.ndarray
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    min_accuracy: float
    model_sha256: str | None
    plot: Path | None  # confusion.png, as the evaluate stage wrote it

    def __repr__(self) -> str:
        return (
            f"<EvaluationResult accuracy {self.accuracy:.4f} on {self.n:,} test images, gate "
            f"{self.min_accuracy:g} {'passed' if self.passed else 'failed'}>"
        )

    @property
    def passed(self) -> bool:
        """The gate: accuracy at least test.min_accuracy."""
        return self.accuracy >= self.min_accuracy

    @property
    def correct(self) -> int:
        return int(self.confusion.trace())

    @property
    def per_class(self) -> dict[int, ClassScores]:
        support = self.confusion.sum(axis=1)
        return {
            label: ClassScores(label, p, r, f, int(s))
            for label, p, r, f, s in zip(self.labels, self.precision, self.recall, self.f1, support)
        }

    def confusion_figure(self) -> Figure:
        """The tutorial's plot of the errors: the confusion matrix row-normalized, its diagonal zeroed."""
        from pipeline import figures

        return figures.confusion_figure(self.confusion, self.labels)

    @classmethod
    def of(cls, output: EvaluateOutput) -> EvaluationResult:
        import numpy as np

        path = Path(output.evaluation)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                float(data["accuracy"]),
                int(data["n"]),
                tuple(data["labels"]),
                np.asarray(data["confusion"], dtype=np.int64),
                tuple(data["precision"]),
                tuple(data["recall"]),
                tuple(data["f1"]),
                float(data.get("min_accuracy", 0.0)),
                data.get("model_sha256"),
                Path(output.confusion_png) if output.confusion_png else None,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"the evaluation {path} cannot be read ({type(exc).__name__}: {exc}); "
                f"run the evaluate stage again (run(only='evaluate', force=True))"
            ) from None

    def _repr_markdown_(self) -> str:
        lines = [
            f"Accuracy **{self.accuracy:.4f}** on {self.n:,} test images ({self.correct:,} correct); gate "
            f"{self.min_accuracy:g}: **{'passed' if self.passed else 'failed'}**.",
            "",
            "| class | precision | recall | F1 | test images |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c.label} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |"
            for c in self.per_class.values()
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, eq=False)
class SmokeResult:
    """The tutorial's "test the deployed service": seeded random test images sent, answers compared."""

    uri: str
    indices: list[int]  # the test images sent, by their index in the test set (X_test[indices])
    answers: list[Any]  # what the service answered, one per image
    local: list[Any]  # what the local model predicts for them
    labels: list[Any] | None  # their true labels
    agree: bool
    sample_accuracy: float | None
    latency_ms: Mapping[str, float]
    bytes_sent: int
    plot: Path | None  # samples.png, as the smoke stage wrote it
    output: str = "labels"
    images: Callable[[Sequence[int]], Any] | None = field(default=None, repr=False)  # rows of the test set

    def __repr__(self) -> str:
        verdict = "agree" if self.agree else "DIFFER"
        return f"<SmokeResult {len(self.indices)} images sent to {self.uri}: answers {verdict}>"

    @property
    def predicted(self) -> list[Any]:
        """The service's answers as labels (for output: probabilities, the most probable class)."""
        if self.output == "labels":
            return list(self.answers)
        return [max(range(len(a)), key=a.__getitem__) for a in self.answers]

    def samples_figure(self) -> Figure:
        """The tutorial's row of the images sent, the service's answer above each; misclassified ones in red."""
        from pipeline import figures

        if self.images is None or self.labels is None:
            raise StateError("the smoke test's images or labels are not available: the figure needs both")
        X = self.images(self.indices)
        side = math.isqrt(X.shape[1])
        return figures.samples_figure(X, self.labels, self.predicted, side)

    @classmethod
    def of(cls, output: SmokeOutput, scoring_output: str, images: Callable[[Sequence[int]], Any] | None) -> SmokeResult:
        return cls(
            output.uri,
            list(output.indices),
            list(output.answers),
            list(output.local),
            output.labels,
            output.agree,
            output.sample_accuracy,
            dict(output.latency_ms),
            output.bytes_sent,
            Path(output.samples_png) if output.samples_png else None,
            scoring_output,
            images,
        )

    def _repr_markdown_(self) -> str:
        verdict = "all answers agree with the local model" if self.agree else "**answers differ** from the local model"
        acc = f"; sample accuracy {self.sample_accuracy:.2f}" if self.sample_accuracy is not None else ""
        return (
            f"{len(self.indices)} test images sent to `{self.uri}`: {verdict}{acc}; latency p50 "
            f"{self.latency_ms.get('p50', 0):.1f} ms.\n"
        )
