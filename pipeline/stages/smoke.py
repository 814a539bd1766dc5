"""Stage smoke: the tutorial's "test the deployed service": seeded random images, same answers as locally."""

from __future__ import annotations

import json
import math
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import StageFailed, TargetError
from pipeline.stages import Outcome, Output, Stage

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.records import Reply, Step
    from pipeline.targets.base import ServiceRecord

REPEATS = 5  # timed repetitions of the sample request
RETRIES = 5  # connection errors only, with a doubling back-off
PROBABILITY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class SmokeOutput(Output):
    stage = "smoke"
    uri: str
    indices: list[int]
    answers: list[Any]
    local: list[Any]
    labels: list[Any] | None
    agree: bool
    sample_accuracy: float | None
    latency_ms: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    requests: int = 0
    samples_png: str | None = None


class Smoke(Stage):
    name = "smoke"
    after = ("deploy",)  # a (re)deployed service is always smoke-tested again
    needs_service = True

    def inputs(self, ctx: Context) -> dict[str, Any] | None:
        from pipeline.stages import check, evaluate

        service = ctx.service
        if service is None:
            return None
        test = ctx.spec.test
        return {
            "service": {"uri": service.scoring_uri, "deployed_at": service.deployed_at},
            "model": evaluate.model_digest(ctx),
            "test": evaluate.test_inputs(ctx),
            "sample_size": test.sample_size,
            "seed": test.seed,
            "output": ctx.spec.scoring.output,
            "runtime": check.model_runtime(ctx),
        }

    def run(self, ctx: Context, step: Step) -> Outcome:
        record = ctx.service
        if record is None:
            raise StageFailed("no service is deployed: run the deploy stage first")
        outputs = check_service(ctx, record)
        acc = f", sample accuracy {outputs.sample_accuracy:.2f}" if outputs.sample_accuracy is not None else ""
        lat = outputs.latency_ms
        detail = (
            f"{len(outputs.indices)} images agree with the local model{acc}; latency p50 {lat['p50']:.1f} ms "
            f"(min {lat['min']:.1f}, max {lat['max']:.1f}), {outputs.bytes_sent:,} bytes per request"
        )
        return Outcome(detail, outputs)


def sample_indices(n: int, size: int, seed: int) -> list[int]:
    """The tutorial's np.random.permutation(n)[:size], seeded: the same images every run."""
    import numpy as np

    return np.random.RandomState(seed).permutation(n)[:size].tolist()


def _invoke(ctx: Context, record: ServiceRecord, body: bytes) -> Reply:
    delay = 0.2
    for attempt in range(RETRIES + 1):
        try:
            return ctx.target.invoke(
                record,
                body,
                timeout=max(5.0, ctx.spec.deploy.request_timeout_ms / 1000 + 5),
                service_dir=ctx.paths.service,
            )
        except (ConnectionError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or attempt == RETRIES:
                raise StageFailed(f"cannot reach {record.scoring_uri}: {reason}") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        except TimeoutError:
            raise StageFailed(f"{record.scoring_uri} did not answer within the timeout") from None
    raise AssertionError("unreachable")


def _answers(reply: Reply, uri: str) -> list[Any]:
    if reply.status != 200:
        raise StageFailed(f"{uri} answered HTTP {reply.status}: {reply.body[:300].decode('utf-8', 'replace')}")
    try:
        value = json.loads(reply.body)
        if isinstance(value, str):  # the tutorial's run() returns json.dumps(...), which the host encodes again
            value = json.loads(value)
    except ValueError:
        raise StageFailed(f"{uri} answered something that is not JSON: {reply.body[:200]!r}") from None
    if not isinstance(value, list):
        raise StageFailed(f"{uri} answered {type(value).__name__}, expected a list with one answer per image")
    return value


def _same(a: Any, b: Any, output: str) -> bool:
    if output == "probabilities":
        return (
            isinstance(a, list)
            and len(a) == len(b)
            and all(
                isinstance(x, (int, float)) and math.isclose(x, y, rel_tol=0, abs_tol=PROBABILITY_TOLERANCE)
                for x, y in zip(a, b)
            )
        )
    return a == b


def check_service(ctx: Context, record: ServiceRecord, *, plot: bool = True) -> SmokeOutput:
    """Send the seeded samples to a service (the live one, or a new version staged beside it): every answer
    must equal the local model's, or StageFailed says which differ."""
    import numpy as np

    from pipeline.stages.evaluate import load_model_and_data

    spec = ctx.spec
    model, dataset = load_model_and_data(ctx)
    indices = sample_indices(dataset.n, spec.test.sample_size, spec.test.seed)
    X = np.stack([dataset.rows(i, i + 1)[0] for i in indices])
    local = (model.predict_proba(X) if spec.scoring.output == "probabilities" else model.predict(X)).tolist()
    body = json.dumps({"data": X.tolist()}).encode("utf-8")
    uri = record.scoring_uri or "the service"

    try:
        replies = [_invoke(ctx, record, body) for _ in range(REPEATS)]
    except TargetError as exc:
        raise StageFailed(str(exc)) from None
    answers = _answers(replies[0], uri)
    if len(answers) != len(indices):
        raise StageFailed(f"{uri} answered {len(answers)} predictions for {len(indices)} images")
    for reply in replies[1:]:
        if _answers(reply, uri) != answers:
            raise StageFailed(f"{uri} answered the same request differently on repetition")
    # the tutorial's raw request: one image, its body built by hand
    one = indices[0]
    raw = ('{"data": [' + json.dumps(X[0].tolist()) + "]}").encode()
    single = _answers(_invoke(ctx, record, raw), uri)

    wrong = [
        (idx, got, want) for idx, got, want in zip(indices, answers, local) if not _same(got, want, spec.scoring.output)
    ]
    single_ok = len(single) == 1 and _same(single[0], local[0], spec.scoring.output)
    labels = dataset.y[indices].tolist() if dataset.y is not None else None
    shown = answers if spec.scoring.output == "labels" else [int(np.argmax(a)) for a in answers]
    agree = not wrong and single_ok
    png = None
    side = math.isqrt(spec.scoring.features)
    if plot and side * side == spec.scoring.features and labels is not None:
        folder = ctx.paths.eval if agree else ctx.paths.eval / "failed"  # never over the last success's figure
        png = plot_samples(X, labels, shown, folder / "samples.png", side)
    seconds = sorted(r.seconds for r in replies)
    latency = {"min": seconds[0] * 1000, "p50": seconds[len(seconds) // 2] * 1000, "max": seconds[-1] * 1000}
    accuracy = float(np.mean(np.asarray(shown) == np.asarray(labels))) if labels is not None else None
    outputs = SmokeOutput(
        uri,
        indices,
        answers,
        local,
        labels,
        agree,
        accuracy,
        latency,
        len(body),
        REPEATS + 1,
        str(png) if png else None,
    )
    if wrong or not single_ok:
        listed = "; ".join(f"test image #{i}: service {g!r}, local {w!r}" for i, g, w in wrong[:5])
        what = (
            f"{len(wrong)} of {len(indices)} answers differ from the local model's ({listed})"
            if wrong
            else "the batch agrees"
        )
        if not single_ok:
            what += f"; the single-image request for test image #{one} answered {single!r}, local {local[0]!r}"
        raise StageFailed(
            f"{what}; the service's environment differs from the evaluated one (compare myenv.yml "
            f"with the versions in the report)",
            outputs,
        )
    return outputs


def plot_samples(X: Any, labels: list[Any], predicted: list[Any], path: Path, side: int) -> Path:
    """The tutorial's figure: a row of images, the prediction above each, misclassified ones in red, inverted."""
    from pipeline import figures

    path.parent.mkdir(parents=True, exist_ok=True)
    return figures.save(figures.samples_figure(X, labels, predicted, side), path, bbox_inches="tight")
