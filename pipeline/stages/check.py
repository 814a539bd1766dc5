"""Stage check: the spec is valid (it loaded), its files exist, the packages the stages need import, the model fits."""

from __future__ import annotations

import importlib
import numbers
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import StageFailed
from pipeline.stages import Outcome, Output, Stage

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.records import Step

# distribution name -> module to import; the versions recorded here go into the report
PACKAGES = {
    "numpy": "numpy",
    "scikit-learn": "sklearn",
    "joblib": "joblib",
    "matplotlib": "matplotlib",
    "Jinja2": "jinja2",
    "PyYAML": "yaml",
    "jsonschema": "jsonschema",
}
# what unpickling and predicting depend on: evaluate and smoke rerun when one of these changes
MODEL_RUNTIME = ("numpy", "scikit-learn", "joblib", "skops")


@dataclass(frozen=True)
class CheckOutput(Output):
    stage = "check"
    python: str
    packages: dict[str, str] = field(default_factory=dict)
    target: str = ""


def _needed(ctx: Context) -> dict[str, tuple[str, str | None]]:
    """distribution -> (module, extra that installs it) for this spec: the core, the model's format, the target."""
    from pipeline import models

    needed: dict[str, tuple[str, str | None]] = {dist: (module, None) for dist, module in PACKAGES.items()}
    for dist, (module, extra) in models.source_packages(ctx.spec).items():
        needed[dist] = (module, extra)
    for dist, module in ctx.target.packages.items():
        needed[dist] = (module, ctx.target.extra)
    return needed


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def model_runtime(ctx: Context) -> dict[str, str | None]:
    """Versions of the libraries a model's answers depend on, from package metadata (no imports)."""
    return {"python": platform.python_version(), **{dist: _version(dist) for dist in MODEL_RUNTIME}}


def _model_file(ctx: Context) -> Path | None:
    """The model file check can load now: the local source, or a registry model fetched before; only if pinned and
    matching (fetch reports an unpinned or changed file; skops files are audited by load_model itself)."""
    from pipeline.stages.fetch import FetchOutput

    model = ctx.spec.model
    if isinstance(model.source, Path):
        path, digest = model.source, ctx.file_digest(model.source)
    else:
        fetched = ctx.output(FetchOutput)
        if fetched is None or not Path(fetched.path).is_file():
            return None  # not here before fetch: evaluate's predictions show a mismatch
        path, digest = Path(fetched.path), fetched.sha256
    if model.sha256 is None and model.format != "skops":
        return None
    return path if model.sha256 in (None, digest) else None


def model_problems(ctx: Context) -> list[str]:
    """What the spec says of the model that the model itself contradicts: its width and its kind of answers."""
    from pipeline import models

    path = _model_file(ctx)
    if path is None:
        return []
    spec = ctx.spec
    model = models.load_model(path, spec.model.format, spec.model.sha256, list(spec.model.trusted_types))
    problems = []
    width = getattr(model, "n_features_in_", None)
    if isinstance(width, numbers.Integral) and not isinstance(width, bool) and int(width) != spec.scoring.features:
        problems.append(
            f"scoring.features is {spec.scoring.features}, but the model was fitted on {width} features "
            f"(its n_features_in_): set scoring.features: {width}"
        )
    if spec.scoring.output == "probabilities" and not hasattr(model, "predict_proba"):
        problems.append(
            f"scoring.output is probabilities, but the model ({type(model).__name__}) has no predict_proba: "
            "use output: labels, or a model that estimates probabilities"
        )
    return problems


class Check(Stage):
    name = "check"

    def inputs(self, ctx: Context) -> dict[str, Any]:
        # only what check looks at (the spec itself was validated on loading); versions come from metadata
        from pipeline.stages.evaluate import model_digest

        return {
            "python": platform.python_version(),
            "target": ctx.spec.deploy.target,
            "format": ctx.spec.model.format,
            "packages": {dist: _version(dist) for dist in sorted(_needed(ctx))},
            "model": model_digest(ctx),
            "features": ctx.spec.scoring.features,
            "output": ctx.spec.scoring.output,
        }

    def run(self, ctx: Context, step: Step) -> Outcome:
        problems = []
        versions: dict[str, str] = {}
        for dist, (module, extra) in sorted(_needed(ctx).items()):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                hint = f" (or pip install '.[{extra}]')" if extra else ""
                problems.append(f"{dist} does not import ({exc}); install it with: pip install {dist}{hint}")
                continue
            versions[dist] = _version(dist) or "unknown"
        if problems:
            raise StageFailed("; ".join(problems))
        checked = model_problems(ctx)
        if checked:
            raise StageFailed("; ".join(checked))
        python = platform.python_version()
        detail = f"python {python}, " + ", ".join(
            f"{d} {versions[d]}" for d in ("numpy", "scikit-learn") if d in versions
        )
        return Outcome(detail, CheckOutput(python, versions, ctx.spec.deploy.target))
