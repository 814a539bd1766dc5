"""A declarative, reviewable deployment pipeline for machine-learning models.

    import pipeline
    p = pipeline.load("specs/mnist.yaml")   # validated; errors as the CLI prints them
    r = p.run()                             # r.evaluation, r.smoke; p.service.run(input_data=...)

The API lives in pipeline.api; the names below are imported from it on first use, so `import pipeline`
(and `python -m pipeline validate`) loads no numpy, matplotlib or jinja2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "RunResult", "Validation", "load", "validate"]

if TYPE_CHECKING:
    from pipeline.api import Pipeline, RunResult, Validation, load, validate


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
