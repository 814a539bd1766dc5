"""Stage fetch: retrieve the model into the <name>/<version>/<file> store, verified before anything loads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ModelError
from pipeline.spec import RegistrySource, Spec
from pipeline.stages import Outcome, Output, Stage

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.models import ModelSource
    from pipeline.records import Step


@dataclass(frozen=True)
class FetchOutput(Output):
    stage = "fetch"
    path: str  # the verified file in the store: <store>/<name>/<version>/<file>
    model_dir: str  # <store>/<name>/<version>, what AZUREML_MODEL_DIR means
    sha256: str


def check_pin(spec: Spec, actual: str | None) -> None:
    """The one pin rule (models.pin_problem): a pickle-based model is loaded only once pinned, and only if it matches.

    `actual` is the local file's digest when known before fetching (None for a registry model).
    """
    from pipeline import models

    model = spec.model
    unpinned = models.pin_problem(model.format, model.sha256, actual)
    if unpinned:
        raise ModelError(f"model.sha256: {unpinned}")
    if model.sha256 is not None and actual is not None and actual != model.sha256:
        raise ModelError(
            f"sha256 mismatch for {model.source}: expected {model.sha256} (model.sha256), got {actual}; "
            f"the file was not loaded"
        )


def source_for(spec: Spec) -> ModelSource:
    """The model source of a spec; a pickle-based model must be pinned before anything fetches it."""
    from pipeline import models

    model = spec.model
    if isinstance(model.source, RegistrySource):
        check_pin(spec, None)
        from pipeline import targets

        # a target fetches registry models with its own SDK (azureml-online: azure-ai-ml), else azureml-core
        sdk = targets.target_class(spec.deploy.target).registry_sdk
        return models.AzureMLRegistrySource(model.name, model.version, model.source.workspace_config, sdk=sdk)
    if model.sha256 is None:
        check_pin(spec, models.sha256_file(model.source))
    return models.LocalSource(model.source)


class Fetch(Stage):
    name = "fetch"

    def inputs(self, ctx: Context) -> dict[str, Any]:
        model = ctx.spec.model
        source: dict[str, Any]
        if isinstance(model.source, RegistrySource):
            config = model.source.workspace_config
            source = {
                "registry": model.source.registry,
                "file": model.source.file,
                "workspace_config": ctx.file_digest(config) if config else None,
            }
        else:
            try:
                actual = ctx.file_digest(model.source)
            except OSError as exc:
                raise ModelError(f"model.source {model.source}: {exc.strerror}") from None
            check_pin(ctx.spec, actual)
            source = {"sha256": actual}
        return {
            "name": model.name,
            "version": model.version,
            "format": model.format,
            "pin": model.sha256,
            "source": source,
        }

    def stale(self, ctx: Context, record: dict[str, Any]) -> str:
        fetched = FetchOutput.from_dict(record.get("outputs"))
        if fetched is None or not Path(fetched.path).is_file():
            return f"the fetched model is missing from the store ({fetched.path if fetched else 'unrecorded'})"
        return ""

    def run(self, ctx: Context, step: Step) -> Outcome:
        from pipeline import models

        spec = ctx.spec.model
        path = models.fetch_model(source_for(ctx.spec), ctx.paths.models, spec.name, spec.version, spec.sha256)
        digest = models.sha256_file(path)
        return Outcome(
            f"{spec.name}:{spec.version} sha256 {digest[:12]}… -> {path.parent}",
            FetchOutput(str(path), str(path.parent), digest),
        )
