"""The tutorial's two figures as matplotlib Figures: shown inline in Jupyter, saved as PNG by the stages.

The object API with an Agg canvas: no pyplot, no global figure, and no matplotlib.use() (which would
switch the backend of a notebook that called %matplotlib inline).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@functools.lru_cache(maxsize=1)
def _inline_class() -> type[Figure]:
    from matplotlib.figure import Figure

    class InlineFigure(Figure):
        """A Figure that Jupyter displays as a PNG even without %matplotlib inline."""

        png_bbox: str | None = None  # how the stage saves it ("tight" for the row of images)

        def _repr_png_(self) -> bytes:
            return png(self, bbox_inches=self.png_bbox)

    return InlineFigure


def _figure(figsize: tuple[float, float], bbox_inches: str | None = None) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _inline_class()(figsize=figsize)
    fig.png_bbox = bbox_inches  # type: ignore[attr-defined]
    FigureCanvasAgg(fig)
    return fig


def png(fig: Figure, *, bbox_inches: str | None = None) -> bytes:
    """The figure as PNG bytes without Software or date chunks: the same figure gives the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches=bbox_inches, metadata={"Software": None})
    return buffer.getvalue()


def confusion_figure(conf: Any, labels: Sequence[int] | None = None) -> Figure:
    """The tutorial's figure of errors: the confusion matrix row-normalized, diagonal zeroed, bone colormap."""
    import numpy as np
    from matplotlib import colormaps

    conf = np.asarray(conf)
    rows = conf.sum(axis=1, keepdims=True)
    # A class absent from the test set has a zero row: show it as 0 errors, not NaN.
    norm = np.divide(conf, rows, out=np.zeros(conf.shape, dtype=np.float64), where=rows > 0)
    np.fill_diagonal(norm, 0)  # so the correct answers do not drown out the errors
    fig = _figure((8, 5))
    ax = fig.add_subplot(111)
    cax = ax.matshow(norm, cmap=colormaps["bone"])
    ticks = np.arange(conf.shape[0])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    names = [str(v) for v in (labels if labels is not None else ticks)]
    ax.set_xticklabels(names)
    ax.set_yticklabels(names)
    fig.colorbar(cax)
    ax.set_ylabel("true labels", fontsize=14)
    ax.set_xlabel("predicted values", fontsize=14)
    return fig


def samples_figure(X: Any, labels: Sequence[Any], predicted: Sequence[Any], side: int) -> Figure:
    """The tutorial's row of test images, the prediction above each; misclassified ones in red, inverted."""
    n = len(predicted)
    fig = _figure((20, 1), bbox_inches="tight")
    for i in range(n):
        ax = fig.add_subplot(1, n, i + 1)
        ax.axhline("")  # type: ignore[arg-type]  # the tutorial's own calls, kept for the same figure
        ax.axvline("")  # type: ignore[arg-type]
        wrong = labels[i] != predicted[i]
        ax.text(x=10, y=-10, s=str(predicted[i]), fontsize=18, color="red" if wrong else "black")
        ax.imshow(X[i].reshape(side, side), cmap="gray" if wrong else "Greys")
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def save(fig: Figure, path: Path, *, bbox_inches: str | None = None) -> Path:
    """Write the figure's PNG atomically: a reader never sees half a file."""
    from pipeline.files import atomic_write

    atomic_write(Path(path), png(fig, bbox_inches=bbox_inches))
    return Path(path)
