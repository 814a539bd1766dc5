"""Two evaluations side by side: accuracy, per-class precision and recall, the confusion cells that moved most."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MOVED_CELLS = 8  # the errors a reviewer reads first; the whole matrix is in the report's details


def _cell(ev: Mapping[str, Any], true: int, predicted: int) -> int:
    labels: Sequence[int] = ev["labels"]
    if true not in labels or predicted not in labels:
        return 0
    return int(ev["confusion"][labels.index(true)][labels.index(predicted)])


def _score(ev: Mapping[str, Any], key: str, label: int) -> float | None:
    labels: Sequence[int] = ev["labels"]
    return float(ev[key][labels.index(label)]) if label in labels else None


def _change(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def compare(before: Mapping[str, Any], after: Mapping[str, Any], *, moved: int = MOVED_CELLS) -> dict[str, Any]:
    """The evaluation `after` against `before` (both as evaluation.json holds them), aligned by label."""
    labels = sorted(set(before["labels"]) | set(after["labels"]))
    per_class = []
    for label in labels:
        row: dict[str, Any] = {"label": label}
        for key in ("precision", "recall", "f1"):
            b, a = _score(before, key, label), _score(after, key, label)
            row[key] = {"before": b, "after": a, "change": _change(b, a)}
        per_class.append(row)
    cells = []
    for true in labels:
        for predicted in labels:
            if true == predicted:
                continue  # the diagonal is each class's recall, compared above
            b, a = _cell(before, true, predicted), _cell(after, true, predicted)
            if a != b:
                cells.append({"true": true, "predicted": predicted, "before": b, "after": a, "change": a - b})
    cells.sort(key=lambda c: (-abs(c["change"]), -c["after"], c["true"], c["predicted"]))
    correct_b = sum(_cell(before, label, label) for label in labels)
    correct_a = sum(_cell(after, label, label) for label in labels)
    return {
        "accuracy": {
            "before": before["accuracy"],
            "after": after["accuracy"],
            "change": after["accuracy"] - before["accuracy"],
        },
        "correct": {"before": correct_b, "after": correct_a, "change": correct_a - correct_b},
        "n": {"before": before["n"], "after": after["n"]},
        "min_accuracy": {"before": before.get("min_accuracy"), "after": after.get("min_accuracy")},
        "model": {"before": before.get("model_sha256"), "after": after.get("model_sha256")},
        "same_model": before.get("model_sha256") == after.get("model_sha256"),
        "per_class": per_class,
        "moved": cells[:moved],
        "cells_changed": len(cells),
    }
