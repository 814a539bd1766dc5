"""Stage evaluate: the tutorial's "test model locally": accuracy, confusion matrix, plot, and the gate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import StageFailed
from pipeline.files import atomic_write
from pipeline.stages import Outcome, Output, Stage

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.data import Dataset
    from pipeline.records import Step


def test_inputs(ctx: Context) -> dict[str, Any]:
    """The test set as content: file digests, not names, so a changed byte is a change."""
    test = ctx.spec.test
    return {
        "images": ctx.file_digest(test.images),
        "labels": ctx.file_digest(test.labels) if test.labels else None,
        "format": test.format,
        "label_column": test.label_column,
        "scale": test.scale,
    }


def model_digest(ctx: Context) -> str | None:
    """The model's digest as known before fetching: the pin, else the local file's bytes."""
    from pipeline.spec import RegistrySource

    if ctx.spec.model.sha256:
        return ctx.spec.model.sha256
    if isinstance(ctx.spec.model.source, RegistrySource):
        from pipeline.stages.fetch import FetchOutput

        fetched = ctx.output(FetchOutput)
        return fetched.sha256 if fetched else None
    return ctx.file_digest(ctx.spec.model.source)


def load_model_and_data(ctx: Context) -> tuple[Any, Dataset]:
    """The fetched model (its pin checked again as it is read) and the test set: what evaluate and smoke both use."""
    from pipeline import data, models
    from pipeline.stages.fetch import FetchOutput

    spec = ctx.spec
    fetched = ctx.output(FetchOutput)
    if fetched is None:
        raise StageFailed("no fetched model: run the fetch stage first")
    model = models.load_model(Path(fetched.path), spec.model.format, spec.model.sha256, list(spec.model.trusted_types))
    dataset = data.load_dataset(
        spec.test.images,
        spec.test.labels,
        format=spec.test.format,
        label_column=spec.test.label_column,
        scale=spec.test.scale,
    )
    return model, dataset


@dataclass(frozen=True)
class EvaluateOutput(Output):
    stage = "evaluate"
    accuracy: float
    n: int
    evaluation: str  # evaluation.json: the confusion matrix and per-class scores
    confusion_png: str
    model_sha256: str | None = None
    baseline: str | None = None  # the last successful evaluation before this one: the report's "before"


class Evaluate(Stage):
    name = "evaluate"

    def inputs(self, ctx: Context) -> dict[str, Any] | None:
        model = model_digest(ctx)
        if model is None:
            return None
        from pipeline.stages import check

        return {
            "model": model,
            "format": ctx.spec.model.format,
            "trusted": list(ctx.spec.model.trusted_types),
            "test": test_inputs(ctx),
            "min_accuracy": ctx.spec.test.min_accuracy,
            "runtime": check.model_runtime(ctx),
        }

    def stale(self, ctx: Context, record: dict[str, Any]) -> str:
        out = EvaluateOutput.from_dict(record.get("outputs"))
        if out is None:
            return "its recorded outputs are unreadable"
        missing = [p for p in (out.evaluation, out.confusion_png) if p and not Path(p).is_file()]
        return f"its outputs are missing ({', '.join(missing)})" if missing else ""

    def run(self, ctx: Context, step: Step) -> Outcome:
        from pipeline import evaluate
        from pipeline.stages.fetch import FetchOutput

        spec = ctx.spec
        model, dataset = load_model_and_data(ctx)
        fetched = ctx.output(FetchOutput)
        previous = ctx.output(EvaluateOutput)  # the last success: this run has no evaluation yet

        def progress(done: int, total: int) -> None:
            ctx.console.progress(f"evaluate: {done:,} of {total:,} rows ({100 * done / max(total, 1):.0f}%)")

        result = evaluate.evaluate(model, dataset, progress=progress)
        passed = result.accuracy >= spec.test.min_accuracy
        # a failed gate writes beside, never over, the outputs of the last success that later skips rely on
        folder = ctx.paths.eval if passed else ctx.paths.eval / "failed"
        folder.mkdir(parents=True, exist_ok=True)
        last = previous.evaluation if previous else None
        baseline = keep_baseline(ctx, step, previous) if passed else _existing(last)
        plot = evaluate.plot_confusion(result.confusion, folder / "confusion.png", result.labels)
        sha = fetched.sha256 if fetched else None
        record = result.to_dict() | {"min_accuracy": spec.test.min_accuracy, "model_sha256": sha}
        evaluation = folder / "evaluation.json"
        atomic_write(evaluation, (json.dumps(record, indent=2) + "\n").encode())
        matrix = evaluate.format_confusion(result.confusion)
        outputs = EvaluateOutput(result.accuracy, result.n, str(evaluation), str(plot), sha, baseline)
        try:
            evaluate.check_gate(result, spec.test.min_accuracy)
        except StageFailed as exc:
            raise StageFailed(f"{exc}; nothing was deployed; confusion matrix in {plot}\n{matrix}", outputs) from None
        detail = (
            f"accuracy {result.accuracy:.4f} on {result.n:,} test images (gate {spec.test.min_accuracy:g})\n"
            f"{matrix}\nOverall accuracy: {result.accuracy:.4f}"
        )
        return Outcome(detail, outputs)


def _existing(path: str | None) -> str | None:
    return path if path and Path(path).is_file() else None


def keep_baseline(ctx: Context, step: Step, previous: EvaluateOutput | None) -> str | None:
    """Copy the evaluation this one replaces beside it (eval/baseline.json), for the report's before -> after.

    The same evaluation made again (--force, or a fresh runner making its files again) keeps the baseline it had.
    """
    if previous is None:
        return None
    if step.recorded is not None and step.recorded.get("digest") == step.digest:
        return _existing(previous.baseline)
    source = _existing(previous.evaluation)
    if source is None:
        return None
    target = ctx.paths.eval / "baseline.json"
    atomic_write(target, Path(source).read_bytes())
    return str(target)
