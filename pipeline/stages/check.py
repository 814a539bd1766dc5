"""Stage check: the spec is valid (it loaded), its files exist, and the packages the stages need import."""
from __future__ import annotations

import importlib
import platform
from importlib import metadata
from typing import Any

from pipeline.context import Context
from pipeline.errors import StageFailed

# distribution name -> module to import; the versions recorded here go into the report
PACKAGES = {"numpy": "numpy", "scikit-learn": "sklearn", "joblib": "joblib", "matplotlib": "matplotlib",
            "Jinja2": "jinja2", "PyYAML": "yaml", "jsonschema": "jsonschema"}


def _needed(ctx: Context) -> dict[str, str]:
    from pipeline.spec import RegistrySource

    needed = dict(PACKAGES)
    if ctx.spec.model.format == "skops":
        needed["skops"] = "skops"
    if ctx.spec.deploy.target in ("aci", "aks") or isinstance(ctx.spec.model.source, RegistrySource):
        needed["azureml-core"] = "azureml.core"   # the azure extra
    if ctx.spec.deploy.target == "azureml-online":
        needed["azure-ai-ml"] = "azure.ai.ml"     # the azure-v2 extra
    return needed


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# what unpickling and predicting depend on: evaluate and smoke rerun when one of these changes
MODEL_RUNTIME = ("numpy", "scikit-learn", "joblib", "skops")


def model_runtime(ctx: Context) -> dict[str, str | None]:
    """Versions of the libraries a model's answers depend on, from package metadata (no imports)."""
    return {"python": platform.python_version(), **{dist: _version(dist) for dist in MODEL_RUNTIME}}


def inputs(ctx: Context) -> dict[str, Any]:
    # only what check looks at (the spec itself was validated on loading); versions come from metadata
    return {"python": platform.python_version(), "target": ctx.spec.deploy.target, "format": ctx.spec.model.format,
            "packages": {dist: _version(dist) for dist in sorted(_needed(ctx))}}


def run(ctx: Context, step: Any) -> Any:
    from pipeline.stages import Outcome

    problems = []
    versions: dict[str, str] = {}
    for dist, module in sorted(_needed(ctx).items()):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            extra = {"azureml-core": " (or pip install '.[azure]')", "azure-ai-ml": " (or pip install '.[azure-v2]')"}.get(dist, "")
            problems.append(f"{dist} does not import ({exc}); install it with: pip install {dist}{extra}")
            continue
        versions[dist] = _version(dist) or "unknown"
    if problems:
        raise StageFailed("; ".join(problems))
    ctx.target  # the target's module (and optional SDK extra) must import too
    detail = f"python {platform.python_version()}, " + ", ".join(f"{d} {versions[d]}" for d in ("numpy", "scikit-learn") if d in versions)
    return Outcome(detail, {"python": platform.python_version(), "packages": versions, "target": ctx.spec.deploy.target})
