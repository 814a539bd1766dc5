"""What targets `aci` and `aks` share: an Azure ML SDK v1 web service, deployed, probed, scored and deleted."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pipeline import http
from pipeline.errors import RenderError, TargetError, UsageError
from pipeline.render import render_template
from pipeline.spec import RegistrySource, Spec
from pipeline.targets import azureml_common as common
from pipeline.targets import azureml_v1_live as live_side
from pipeline.targets import keys as keyfile
from pipeline.targets.azureml_v1_api import AzureMLv1Api, WorkspaceFactory, default_workspace
from pipeline.targets.base import (
    STAMP_DIGEST,
    STAMP_MODEL,
    AddProblem,
    Auth,
    BaseTarget,
    Capabilities,
    DeployRequest,
    Live,
    Reply,
    Rollout,
    ServiceRecord,
)


class WebserviceTarget(BaseTarget):
    """What ACI and AKS share; the subclasses differ in their deployment configuration."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    settings_key: ClassVar[str] = "azureml"
    settings_schema: ClassVar[Mapping[str, Any]] = common.SETTINGS_SCHEMA
    extra: ClassVar[str | None] = common.EXTRA_V1
    packages: ClassVar[Mapping[str, str]] = {"azureml-core": "azureml.core"}
    # Model.deploy(overwrite=True) updates the service where it runs; Azure reports no staged version to test first.
    capabilities: ClassVar[Capabilities] = Capabilities(
        probe_unrecorded=True, rollout=Rollout.IN_PLACE, auth=frozenset({Auth.KEY})
    )
    kind = ""  # how Azure names the compute, for messages
    config_file = ""  # the rendered deploy configuration, in `az ml model deploy --deploy-config-file` form
    compared: tuple[str, ...] = ("cpu_cores", "memory_gb", "auth_enabled", "tags", "description")

    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        common.check_workspace_config(data, add, folder)
        common.check_stamp_tags(data, add)

    def __init__(self, workspace_factory: WorkspaceFactory | None = None, api: AzureMLv1Api | None = None) -> None:
        self.workspace_factory = workspace_factory or default_workspace
        self.api = api or AzureMLv1Api()

    # -- offline: packages, rendered config, SDK configuration objects ---------------------------
    def extra_pip_packages(self, spec: Spec) -> list[str]:
        return ["azureml-defaults"]  # Azure ML's v1 inference stack inside the image

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        text = render_template(env, f"azureml/{self.config_file}.j2", {**values, "azureml": self.template_values(spec)})
        try:
            json.loads(text)
        except ValueError as exc:
            raise RenderError(f"rendered {self.config_file} is not valid JSON: {exc}") from None
        return {self.config_file: text}

    def template_values(self, spec: Spec) -> dict[str, Any]:
        return {}

    def deployment_config(self, spec: Spec) -> Any:
        raise NotImplementedError

    def inference_config(self, spec: Spec, build_dir: Path) -> Any:
        """The rendered score.py as entry script, in an environment built from the rendered myenv.yml."""
        self._sdk()
        from azureml.core import Environment
        from azureml.core.model import InferenceConfig

        try:
            environment = Environment.from_conda_specification(
                name=f"{spec.name}-env", file_path=str(build_dir / "myenv.yml")
            )
            return InferenceConfig(entry_script=str(build_dir / "score.py"), environment=environment)
        except Exception as exc:  # noqa: BLE001  WebserviceException, FileNotFoundError, YAML errors
            raise TargetError(f"inference configuration from {build_dir}: {common.reason(exc)}") from None

    def check_rendered(self, build_dir: Path, config: Any) -> None:
        """The reviewed config file must say what is deployed: read it with the SDK's own parser and compare."""
        from azureml._model_management._util import deploy_config_dict_to_obj

        path = build_dir / self.config_file
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            reviewed = deploy_config_dict_to_obj(data, data.get("tags"), None, data.get("description"))
        except Exception as exc:  # noqa: BLE001  missing file, bad JSON, the SDK's WebserviceException
            raise TargetError(f"{path}: cannot read the rendered deploy configuration: {common.reason(exc)}") from None
        differ = [
            f"{key}: file {getattr(reviewed, key)!r}, spec {getattr(config, key)!r}"
            for key in self.compared
            if getattr(reviewed, key) != getattr(config, key)
        ]
        if differ:
            raise TargetError(f"{path} does not match the spec ({'; '.join(differ)}); render again")

    # -- deploy ----------------------------------------------------------------------------------
    def deploy(self, request: DeployRequest) -> ServiceRecord:
        log = request.service_dir / common.SDK_LOG
        try:
            with common.sdk_output(log, request.console, request.spec.name):
                return self._deploy(request)
        except TargetError as exc:
            raise TargetError(f"{exc}\n(everything the SDK printed is in {log})") from None
        finally:
            request.console.clear_progress()

    def _deploy(self, request: DeployRequest) -> ServiceRecord:
        spec, console = request.spec, request.console
        deployment_config = self.deployment_config(spec)  # offline first: a bad config fails before any call
        self.check_rendered(request.build_dir, deployment_config)
        # the stamp (inputs digest, model, spec, version) goes on the service as tags: MMS replaces tags on every
        # update, while a service's properties can only ever be added to (Webservice.update: 'add' /properties/<key>)
        deployment_config.tags = common.stamped_tags(deployment_config.tags, request.stamp)
        inference_config = self.inference_config(spec, request.build_dir)
        config_path = self._config_path(spec)
        ws = self._workspace(config_path)
        model, digest = self._model(ws, request)
        target = self._deployment_target(ws, spec)
        console.progress(f"{spec.name}: deploying to {self.kind} (this takes several minutes)")
        try:
            service = self.api.deploy(ws, spec.name, [model], inference_config, deployment_config, target)
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"{self.kind} refused to deploy {spec.name}: {common.excerpt(exc)}") from None
        try:
            service.wait_for_deployment(show_output=True, timeout_sec=spec.deploy.ready_timeout_s)
            failure = None if service.state == "Healthy" else f"the service is {service.state}"
        except Exception as exc:  # noqa: BLE001  WebserviceException: failed, timed out, unknown
            failure = common.excerpt(exc)
        if failure:
            raise TargetError(
                f"{self.kind} service {spec.name} did not become healthy within "
                f"{spec.deploy.ready_timeout_s} s: {failure}"
                f"{common.logs_section(lambda n: service.get_logs(num_lines=n), 'service')}"
            )
        if spec.deploy.auth:
            try:
                primary, secondary = service.get_keys()
            except Exception as exc:  # noqa: BLE001
                raise TargetError(
                    f"{self.kind} service {spec.name} is healthy, but its keys could not be read: {common.reason(exc)}"
                ) from None
            keyfile.write(request.service_dir, primary, secondary)
        else:
            keyfile.remove(request.service_dir)  # a key from an earlier deploy would only mislead
        return live_side.record_of(
            self.name, spec, ws, service, model, config=config_path, model_sha256=digest, extra=self._record_extra(spec)
        )

    def _record_extra(self, spec: Spec) -> dict[str, Any]:
        return {}

    def _deployment_target(self, ws: Any, spec: Spec) -> Any:
        return None  # ACI has no compute target of its own

    def _model(self, ws: Any, request: DeployRequest) -> tuple[Any, str | None]:
        """The registry's model, or the fetched file registered now (Azure assigns the version)."""
        spec = request.spec
        if isinstance(spec.model.source, RegistrySource):
            try:
                return self.api.get_model(ws, spec.model.name, spec.model.version), spec.model.sha256
            except Exception as exc:  # noqa: BLE001
                raise TargetError(
                    f"model {spec.model.name}:{spec.model.version} in workspace "
                    f"{getattr(ws, 'name', '?')}: {common.reason(exc)}"
                ) from None
        from pipeline.files import sha256_path

        digest = spec.model.sha256 or sha256_path(request.model_path)
        previous = request.previous.to_dict() if request.previous else {}
        if (
            previous.get("model_sha256") == digest
            and previous.get("model_version")
            and previous.get("workspace") == live_side.workspace_info(ws)
        ):
            # The same bytes were registered by the last deploy: reuse that version, don't pile up new ones.
            with contextlib.suppress(Exception):
                model = self.api.get_model(ws, spec.model.name, previous["model_version"])
                if (model.tags or {}).get("sha256") == digest:
                    return model, digest
        try:
            model = self.api.register_model(
                ws,
                model_path=str(request.model_path),
                model_name=spec.model.name,
                tags={**spec.tags, "sha256": digest},
                description=spec.description,
            )
        except Exception as exc:  # noqa: BLE001
            raise TargetError(
                f"registering model {spec.model.name} in workspace {getattr(ws, 'name', '?')}: {common.reason(exc)}"
            ) from None
        request.console.progress(f"{spec.name}: registered model {model.id}")
        return model, digest

    # -- the live service ------------------------------------------------------------------------
    def probe(self, record: ServiceRecord | None, spec: Spec | None = None) -> Live:
        info = record.to_dict() if record else {}
        name = info.get("service") or (spec.name if spec else "")
        try:
            self._sdk()
            ws = self._workspace(common.recorded_config(info, spec))
        except (TargetError, UsageError) as exc:
            return Live(False, False, str(exc))
        recorded = bool(info.get("service"))  # plan may ask before the first deploy, with no record
        try:
            service = self.api.service(ws, name)
        except Exception as exc:  # noqa: BLE001
            if not common.is_not_found(exc):
                return Live(False, False, f"cannot read {self.kind} service {name}: {common.reason(exc)}")
            if not recorded:
                return Live(
                    True,
                    False,
                    f"workspace {ws.name} is reachable; {self.kind} service {name} does not exist yet",
                    found=False,
                )
            return Live(
                True,
                False,
                f"{self.kind} service {name} not found in workspace {ws.name}",
                ("service: recorded, but missing from the workspace",),
                found=False,
            )
        state = getattr(service, "state", None)
        healthy = state == "Healthy"
        stamp = common.stamp_of(getattr(service, "tags", None))
        detail = f"{self.kind} service {name} is {state}" + (f" at {service.scoring_uri}" if healthy else "")
        if not recorded:
            detail += (
                "; it is not recorded here, and carries pipeline's stamp"
                if stamp
                else f"; it is not recorded here and carries no stamp of pipeline: deploy will overwrite it in "
                f"workspace {ws.name}"
            )
        return Live(
            True,
            healthy,
            detail,
            tuple(live_side.drift_of(service, info)),
            found=True,
            stamp=stamp,
            observed=live_side.observed(service, spec, stamp),
        )

    def adopt(self, live: Live, spec: Spec) -> ServiceRecord | None:
        """The record deploy would have kept for the stamped service of the spec's name (read again from Azure)."""
        if not live.stamp:
            return None
        config = self._config_path(spec)
        try:
            ws = self._workspace(config)
            service = self.api.service(ws, spec.name)
        except Exception:  # noqa: BLE001  gone or unreachable since the probe: nothing to adopt
            return None
        stamp = common.stamp_of(getattr(service, "tags", None)) or {}
        models = getattr(service, "models", None) or [None]
        record = live_side.record_of(
            self.name,
            spec,
            ws,
            service,
            models[0],
            config=config,
            model_sha256=stamp.get(STAMP_MODEL) or None,
            extra=self._record_extra(spec),
        )
        return record.stamped(digest=stamp.get(STAMP_DIGEST))

    def invoke(self, record: ServiceRecord, body: bytes, *, timeout: float, service_dir: Path) -> Reply:
        """An HTTP POST as the tutorial's requests.post: service.run() would hide the status and the raw body."""
        headers = {}
        if record.auth:
            headers["Authorization"] = "Bearer " + self._primary_key(record, service_dir)
        elif record.extra.get("token_auth"):  # AKS tokens expire: fetch a fresh one through the SDK
            service = self._service(record)
            try:
                headers["Authorization"] = "Bearer " + service.get_access_token().access_token
            except Exception as exc:  # noqa: BLE001
                raise TargetError(
                    f"cannot get a token for {record.extra.get('service')}: {common.reason(exc)}"
                ) from None
        assert record.scoring_uri is not None
        return http.post(record.scoring_uri, body, headers, timeout)

    def _primary_key(self, record: ServiceRecord, service_dir: Path) -> str:
        """The service key from keys.json, fetched from Azure into it when this machine has none (a fresh runner)."""
        if not (service_dir / keyfile.KEYS_FILE).is_file():
            name = record.extra.get("service")
            try:
                primary, secondary = self._service(record).get_keys()
            except Exception as exc:  # noqa: BLE001  TargetError (cannot ask), WebserviceException
                reason = str(exc) if isinstance(exc, TargetError) else common.reason(exc)
                raise TargetError(
                    f"no key for {self.kind} service {name} in {service_dir}, and Azure did not give it: {reason}"
                ) from None
            keyfile.write(service_dir, primary, secondary)
        return keyfile.read_primary(service_dir)

    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        info = record.to_dict()
        name = info.get("service", "")
        ws = self._workspace(common.recorded_config(info))
        try:
            service = self.api.service(ws, name)
        except Exception as exc:  # noqa: BLE001
            if not common.is_not_found(exc):
                raise TargetError(f"cannot read {self.kind} service {name}: {common.reason(exc)}") from None
            keyfile.remove(service_dir)
            return f"{self.kind} service {name} was not found in workspace {ws.name} (nothing to delete)"
        try:
            with common.sdk_output(service_dir / common.SDK_LOG, None, f"delete {name}"):  # its polling dots
                service.delete()
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"deleting {self.kind} service {name}: {common.reason(exc)}") from None
        keyfile.remove(service_dir)
        if service.state != "Deleting":  # MMS answered 204: gone between our look and the delete
            return f"{self.kind} service {name} was not found in workspace {ws.name} (nothing to delete)"
        kept = f" (registered model {info['model_id']} kept)" if info.get("model_id") else ""
        return f"deleted {self.kind} service {name} from workspace {ws.name}{kept}"

    def logs(self, record: ServiceRecord, service_dir: Path, *, tail: int) -> str:
        try:
            with common.sdk_output(service_dir / common.SDK_LOG, None, f"logs {record.extra.get('service')}"):
                service = self._service(record)
                return common.log_tail(service.get_logs(num_lines=tail), tail)
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"cannot read the logs of {record.extra.get('service')}: {common.reason(exc)}") from None

    # -- helpers ---------------------------------------------------------------------------------
    def _sdk(self) -> None:
        common.require("azureml.core", self.name, common.EXTRA_V1)

    def _config_path(self, spec: Spec) -> Path | None:
        return common.workspace_config(spec.deploy.settings(), spec.folder, spec.model.source)

    def _workspace(self, config: Path | None) -> Any:
        try:
            with common.sdk_output(None):  # its notes and prompts: stderr, or the log when inside one
                return self.workspace_factory(config)
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001  auth, network, missing config.json: all mean "cannot ask"
            raise TargetError(f"{common.UNREACHABLE}: {common.reason(exc)}") from None

    def _service(self, record: ServiceRecord) -> Any:
        name = record.extra.get("service", "")
        ws = self._workspace(common.recorded_config(record.extra))
        try:
            return self.api.service(ws, name)
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"cannot read {self.kind} service {name}: {common.reason(exc)}") from None
