"""Stage fetch: retrieve the model into the <name>/<version>/<file> store, verified before anything loads it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.context import Context
from pipeline.errors import ModelError
from pipeline.spec import RegistrySource, Spec

PICKLE_FORMATS = ("joblib", "pickle")


def inputs(ctx: Context) -> dict[str, Any]:
    model = ctx.spec.model
    source: dict[str, Any]
    if isinstance(model.source, RegistrySource):
        source = {"registry": model.source.registry, "file": model.source.file,
                  "workspace_config": ctx.file_digest(model.source.workspace_config) if model.source.workspace_config else None}
    else:
        try:
            actual = ctx.file_digest(model.source)
        except OSError as exc:
            raise ModelError(f"model.source {model.source}: {exc.strerror}") from None
        if model.sha256 is None and model.format in PICKLE_FORMATS:
            raise ModelError(f"model.sha256 is not pinned: loading a {model.format} file runs code stored in it, "
                             f"so review the file and pin its digest in the spec: sha256: {actual}")
        if model.sha256 is not None and actual != model.sha256:
            raise ModelError(f"sha256 mismatch for {model.source}: expected {model.sha256} (model.sha256), got {actual}; "
                             f"the file was not loaded")
        source = {"sha256": actual}
    return {"name": model.name, "version": model.version, "format": model.format, "pin": model.sha256, "source": source}


def stale(ctx: Context, record: dict[str, Any]) -> str:
    path = Path(record["outputs"].get("path", ""))
    return "" if path.is_file() else f"the fetched model is missing from the store ({path})"


def source_for(spec: Spec) -> Any:
    """The model source of a spec; a pickle-based model must be pinned before anything fetches it."""
    from pipeline import models

    model = spec.model
    if model.sha256 is None and model.format in PICKLE_FORMATS:
        detail = "" if isinstance(model.source, RegistrySource) else f": sha256: {models.sha256_file(model.source)}"
        raise ModelError(f"model.sha256 is not pinned: loading a {model.format} file runs code stored in it, "
                         f"so review the file and pin its digest in the spec{detail}")
    if isinstance(model.source, RegistrySource):
        # the v2 target fetches with its own SDK (azure-ai-ml); everything else with azureml-core, as the tutorial
        sdk = "v2" if spec.deploy.target == "azureml-online" else "v1"
        return models.AzureMLRegistrySource(model.name, model.version, model.source.workspace_config, sdk=sdk)
    return models.LocalSource(model.source)


def run(ctx: Context, step: Any) -> Any:
    from pipeline import models
    from pipeline.stages import Outcome

    spec = ctx.spec.model
    path = models.fetch_model(source_for(ctx.spec), ctx.paths.models, spec.name, spec.version, spec.sha256)
    digest = models.sha256_file(path)
    return Outcome(f"{spec.name}:{spec.version} sha256 {digest[:12]}… -> {path.parent}",
                   {"path": str(path), "model_dir": str(path.parent), "sha256": digest})
