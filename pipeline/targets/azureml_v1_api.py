"""The network boundary of the SDK v1 targets: every azureml-core call that talks to Azure, in one place."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import TargetError
from pipeline.targets import azureml_common as common

WorkspaceFactory = Callable[[Path | None], Any]

# The working directory is one per process: whoever changes it holds this lock until it is restored.
_CWD_LOCK = threading.Lock()


def default_workspace(config: Path | None) -> Any:
    """The tutorial's Workspace.from_config(), refusing up front where it would prompt for a login."""
    problem = common.credentials_problem()
    if problem:
        raise TargetError(f"{common.UNREACHABLE}: {problem}")
    from azureml.core import Workspace

    # Without a path the SDK searches the working folder and its parents (and .azureml/) for config.json.
    auth = non_interactive_auth()
    return Workspace.from_config(path=str(config), auth=auth) if config else Workspace.from_config(auth=auth)


def non_interactive_auth(environ: Any = None) -> Any:
    """A service principal or managed identity when configured: they fail instead of prompting.

    Otherwise None: the SDK then uses the `az login` profile, which credentials_problem() checked
    holds a subscription (a logged-out profile would make the SDK start a device-code login).
    """
    import os

    environ = os.environ if environ is None else environ
    if all(environ.get(name) for name in common.SP_ENV):
        from azureml.core.authentication import ServicePrincipalAuthentication

        return ServicePrincipalAuthentication(
            tenant_id=environ["AZUREML_SERVICE_PRINCIPAL_TENANT_ID"],
            service_principal_id=environ["AZUREML_SERVICE_PRINCIPAL_ID"],
            service_principal_password=environ["AZUREML_SERVICE_PRINCIPAL_PASSWORD"],
        )
    if environ.get("MSI_ENDPOINT"):
        from azureml.core.authentication import MsiAuthentication

        return MsiAuthentication()
    return None


@contextlib.contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    """Run the body in `folder`, then return to where we were (also on errors)."""
    with _CWD_LOCK:
        previous = os.getcwd()
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(previous)


class AzureMLv1Api:
    """Every SDK v1 call that talks to Azure, in one place; tests hand in a fake that records the calls."""

    def get_model(self, ws: Any, name: str, version: int) -> Any:
        from azureml.core.model import Model

        return Model(ws, name=name, version=version)

    def register_model(
        self, ws: Any, *, model_path: str, model_name: str, tags: dict[str, str], description: str
    ) -> Any:
        from azureml.core.model import Model

        # Model.register refuses any path outside the working directory (model.py _validate_model_path), and the
        # fetched model lives in the state home, wherever that is: register it by its name from its own folder.
        path = Path(model_path).resolve()
        with working_directory(path.parent):
            return Model.register(ws, model_path=path.name, model_name=model_name, tags=tags, description=description)

    def compute_target(self, ws: Any, name: str) -> Any:
        from azureml.core.compute import ComputeTarget

        return ComputeTarget(ws, name)

    def deploy(
        self,
        ws: Any,
        name: str,
        models: list[Any],
        inference_config: Any,
        deployment_config: Any,
        deployment_target: Any,
    ) -> Any:
        from azureml.core.model import Model

        # overwrite=True: a changed spec updates the service in place instead of failing on its name.
        return Model.deploy(
            ws, name, models, inference_config, deployment_config, deployment_target=deployment_target, overwrite=True
        )

    def service(self, ws: Any, name: str) -> Any:
        from azureml.core.webservice import Webservice

        return Webservice(ws, name)
