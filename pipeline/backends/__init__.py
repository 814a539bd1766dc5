"""State backends, one module each, chosen by --state URL, else PIPELINE_STATE, else the spec's `state:` block."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import UsageError

if TYPE_CHECKING:
    from pipeline.backends.base import Backend

# backend name (a URL's scheme) -> its module, imported only when used (the Azure SDK is an extra); each has
# open_backend(url, lease_seconds, home, environ)
BACKENDS: dict[str, str] = {"local": "pipeline.backends.local", "azureblob": "pipeline.backends.azureblob"}
ENV = "PIPELINE_STATE"


@dataclass(frozen=True)
class Choice:
    """Which backend holds a spec's state, and who said so (for `state show`)."""

    backend: str  # local | azureblob
    url: str  # `local`, or the backend's URL
    source: str  # --state | PIPELINE_STATE | the spec's state block | default
    lease_seconds: int | None = None


def kind_of(url: str) -> str:
    """The backend a URL names: `local`, or its scheme; UsageError for anything else."""
    name = "local" if url == "local" else url.partition("://")[0] if "://" in url else ""
    if name not in BACKENDS or (name == "local" and url != "local"):
        raise UsageError(f"state URL {url!r}: expected `local` or azureblob://<account>/<container>/<prefix>")
    return name


def choose(spec_state: Any, flag: str | None, environ: Mapping[str, str] | None = None) -> Choice:
    """--state wins over PIPELINE_STATE, which wins over the spec (CI points every runner at one backend)."""
    env = os.environ if environ is None else environ
    lease = getattr(spec_state, "lease_seconds", None)
    for source, url in (("--state", flag), (ENV, env.get(ENV))):
        if url:
            try:
                return Choice(kind_of(url), url, source, lease)
            except UsageError as exc:
                raise UsageError(f"{source}: {exc}") from None
    if spec_state is not None and spec_state.backend != "local":
        return Choice(spec_state.backend, spec_state.url, "the spec's state block", lease)
    return Choice("local", "local", "the spec's state block" if spec_state is not None else "default")


def open_backend(choice: Choice, home: Path, environ: Mapping[str, str] | None = None) -> Backend:
    """The backend object; `home` is the local .pipeline folder (the local backend keeps the document there)."""
    module = importlib.import_module(BACKENDS[choice.backend])
    try:
        return module.open_backend(choice.url, choice.lease_seconds, home, os.environ if environ is None else environ)
    except UsageError as exc:  # name where the URL came from: the flag, the variable, or the spec
        raise UsageError(f"{choice.source}: {exc}") from None
