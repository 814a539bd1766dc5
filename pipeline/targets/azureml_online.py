"""Target `azureml-online`: an Azure ML managed online endpoint (SDK v2, azure-ai-ml), v1's living successor.

Updates are blue/green: the new version is a second deployment beside the live one (blue, then green, then
blue...), with no traffic; the deploy stage smoke-tests it alone (the azureml-model-deployment header), then it
takes 100% of the traffic and the old deployment is deleted. A failure before that leaves the old one serving.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pipeline import http
from pipeline.errors import TargetError, UsageError
from pipeline.render import check_yaml, render_template
from pipeline.spec import RegistrySource, Spec
from pipeline.targets import azureml_common as common
from pipeline.targets import azureml_online_live as live_side
from pipeline.targets import keys as keyfile
from pipeline.targets.azureml_online_rollout import BlueGreen, sdk_log
from pipeline.targets.azureml_online_sdk import (
    FILES,
    FIRST,
    ClientFactory,
    default_client,
    initial_status,
    instance_type,
    load,
    next_deployment,
    sdk,
    serving,
)
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

__all__ = ["OnlineTarget", "default_client"]
MODEL_ERROR_STATUS = "ms-azureml-model-error-statuscode"  # Azure answers 424 for a model's non-200, its status here


class OnlineTarget(BaseTarget):
    """A managed online endpoint whose deployments alternate blue and green, one taking all the traffic."""

    name: ClassVar[str] = "azureml-online"
    summary: ClassVar[str] = "an Azure ML managed online endpoint, SDK v2"
    settings_key: ClassVar[str] = "azureml"
    settings_schema: ClassVar[Mapping[str, Any]] = common.SETTINGS_SCHEMA
    extra: ClassVar[str | None] = common.EXTRA_V2
    packages: ClassVar[Mapping[str, str]] = {"azure-ai-ml": "azure.ai.ml", "azure-identity": "azure.identity"}
    capabilities: ClassVar[Capabilities] = Capabilities(
        probe_unrecorded=True, rollout=Rollout.SIDE_BY_SIDE, auth=frozenset({Auth.KEY, Auth.TOKEN})
    )
    registry_sdk: ClassVar[str] = "v2"  # azure-ai-ml fetches registry models too: no azureml-core needed
    kind = "managed online endpoint"

    def __init__(self, client_factory: ClientFactory | None = None) -> None:
        self.client_factory = client_factory or default_client
        self._clients: dict[Path | None, Any] = {}
        self.blue_green = BlueGreen(self._client)

    # -- offline ---------------------------------------------------------------------------------
    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        common.check_workspace_config(data, add, folder)
        deploy, azure = data["deploy"], data["deploy"]["azureml"]
        for key in ("compute_target", "autoscale"):
            if key in azure:
                add(("deploy", "azureml", key), "not used by target 'azureml-online'")
        if deploy["auth"] and azure.get("token_auth"):
            add(
                ("deploy", "azureml", "token_auth"),
                "cannot be combined with deploy.auth: an endpoint uses key or token auth, not both",
            )
        if deploy["request_timeout_ms"] > 180000:
            add(
                ("deploy", "request_timeout_ms"),
                f"managed online endpoints allow at most 180000 ms, got {deploy['request_timeout_ms']}",
            )
        if not deploy["auth"] and not azure.get("token_auth"):
            add(
                ("deploy", "auth"),
                "managed online endpoints always authenticate: set deploy.auth: true (key auth) "
                "or deploy.azureml.token_auth: true (Azure ML tokens)",
            )
        if (
            "instance_type" not in azure
            and common.choose_instance_type(deploy["cpu_cores"], deploy["memory_gb"]) is None
        ):
            add(
                ("deploy", "cpu_cores"),
                f"no VM size in the instance_type table has {deploy['cpu_cores']} cores and "
                f"{deploy['memory_gb']} GB; set deploy.azureml.instance_type",
            )
        common.check_arm_tags(data, add)  # an endpoint is an Azure Resource Manager resource

    def extra_pip_packages(self, spec: Spec) -> list[str]:
        return ["azureml-inference-server-http"]  # the v2 images' scoring server

    def assets(self, spec: Spec) -> dict[str, Path]:
        """Files the rendered folder needs beside it: deployment.yml names the local model file."""
        if isinstance(spec.model.source, RegistrySource):
            return {}
        return {spec.model.file_name: spec.model.source}

    def template_values(self, spec: Spec) -> dict[str, Any]:
        azure = spec.deploy.settings()
        size, why = instance_type(spec)
        registry = isinstance(spec.model.source, RegistrySource)
        return {
            "deployment": FIRST,  # the first deploy's; later ones alternate
            "auth_mode": "aml_token" if azure.get("token_auth") else "key",
            "registry_model": f"azureml:{spec.model.name}:{spec.model.version}" if registry else None,
            "base_image": azure["base_image"],
            "instance_type": size,
            "instance_reason": why,
            "instance_count": azure.get("replicas") or 1,
        }

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        """endpoint.yml and deployment.yml, accepted by azure-ai-ml's own loaders before they are returned."""
        values = {**values, "azureml": self.template_values(spec)}
        files = {name: render_template(env, f"azureml/{name}.j2", values) for name in FILES}
        for name, text in files.items():
            check_yaml(text, name)
        with tempfile.TemporaryDirectory(prefix="pipeline-online-") as tmp:
            # The deployment loader reads the conda file it names, so validate beside a rendered myenv.yml.
            folder = Path(tmp)
            (folder / "myenv.yml").write_text(render_template(env, "myenv.yml.j2", values), encoding="utf-8")
            if values["azureml"]["registry_model"] is None:  # an anonymous model is hashed on load: give it bytes
                (folder / spec.model.file_name).write_bytes(b"")
            for name, text in files.items():
                (folder / name).write_text(text, encoding="utf-8")
            load(folder)
        return files

    def describe_update(self, record: ServiceRecord | None, spec: Spec) -> str:
        live = record.extra.get("deployment") if record is not None else None
        if not isinstance(live, str):
            return "blue/green: a new deployment beside the live one, tested alone, then 100% of the traffic"
        return f"blue/green: {next_deployment(live)} beside {live}, tested alone, then 100% of the traffic"

    # -- deploy: blue/green ----------------------------------------------------------------------
    def deploy(self, request: DeployRequest) -> ServiceRecord:
        """Stage, promote and retire without a test in between (the deploy stage tests the staged version first)."""
        with sdk_log(request):
            record = self.blue_green.promote(self.blue_green.stage(request), request)
            if request.previous is not None:  # as the deploy stage does: only what pipeline deployed is retired
                self.blue_green.retire_previous(request.previous, request)
            return record

    def stage(self, request: DeployRequest) -> ServiceRecord:
        """The next deployment beside the live one, ready, with no traffic: addressable alone by its header."""
        with sdk_log(request):
            return self.blue_green.stage(request)

    def promote(self, candidate: ServiceRecord, request: DeployRequest) -> ServiceRecord:
        """All the endpoint's traffic to the tested deployment, and the endpoint stamped with what it now serves."""
        with sdk_log(request):
            return self.blue_green.promote(candidate, request)

    def retire(self, previous: ServiceRecord, request: DeployRequest) -> str:
        """Delete the previous deployment, once it takes no traffic (Azure drains it)."""
        with sdk_log(request):
            return self.blue_green.retire_previous(previous, request)

    def discard(self, candidate: ServiceRecord, service_dir: Path) -> str:
        """Delete a staged deployment that failed; the old one keeps (or gets back) all the traffic."""
        return self.blue_green.discard(candidate, service_dir)

    # -- the live endpoint -----------------------------------------------------------------------
    def probe(self, record: ServiceRecord | None, spec: Spec | None = None) -> Live:
        info = record.to_dict() if record else {}
        name = info.get("endpoint") or (spec.name if spec else "")
        recorded = bool(info.get("endpoint"))  # plan may ask before the first deploy, with no record
        try:
            sdk()
            client = self._client(common.recorded_config(info, spec))
            endpoint = client.online_endpoints.get(name=name)
        except (TargetError, UsageError) as exc:
            return Live(False, False, str(exc))
        except Exception as exc:  # noqa: BLE001  credentials are only tried here, at the first request
            if not common.is_not_found(exc):
                return Live(False, False, f"{common.UNREACHABLE}: {common.reason(exc)}")
            if not recorded:
                return Live(True, False, f"workspace is reachable; endpoint {name} does not exist yet", found=False)
            return Live(
                True,
                False,
                f"endpoint {name} not found in the workspace",
                ("endpoint: recorded, but missing from the workspace",),
                found=False,
            )
        which = live_side.which_serves(endpoint, info)
        if which is None:
            return live_side.no_deployment(endpoint, info)
        try:
            deployment = client.online_deployments.get(name=which, endpoint_name=name)
        except Exception as exc:  # noqa: BLE001
            if common.is_not_found(exc):
                return live_side.no_deployment(endpoint, info)
            return Live(False, False, f"cannot read deployment {which} of {name}: {common.reason(exc)}")
        try:  # a deployment beside the serving one: a deploy that never finished, or one made by hand
            others = sorted(d.name for d in client.online_deployments.list(endpoint_name=name) if d.name != which)
        except Exception:  # noqa: BLE001  a courtesy: its absence must not hide what the probe found
            others = []
        return live_side.live_of(endpoint, deployment, info, spec, others)

    def adopt(self, live: Live, spec: Spec) -> ServiceRecord | None:
        """The record deploy would have kept for the stamped endpoint of the spec's name (read again from Azure)."""
        if not live.stamp:
            return None
        config = common.workspace_config(spec.deploy.settings(), spec.folder, spec.model.source)
        try:
            client = self._client(config)
            endpoint = client.online_endpoints.get(name=spec.name)
            which = serving(endpoint.traffic)
            deployment = client.online_deployments.get(name=which, endpoint_name=spec.name) if which else None
        except Exception:  # noqa: BLE001  gone or unreachable since the probe: nothing to adopt
            return None
        if deployment is None:
            return None
        stamp = common.stamp_of(deployment.tags) or {}
        record = live_side.record_of(
            client, endpoint, deployment, config=config, model_sha256=stamp.get(STAMP_MODEL) or None
        )
        return record.stamped(digest=stamp.get(STAMP_DIGEST))

    def invoke(self, record: ServiceRecord, body: bytes, *, timeout: float, service_dir: Path) -> Reply:
        """An HTTP POST with the endpoint key (or a fresh aml_token), pinned to the record's deployment."""
        info = record.extra
        headers = {"azureml-model-deployment": info.get("deployment", FIRST)}
        if info.get("auth_mode") == "aml_token":
            client = self._client(common.recorded_config(info))
            try:
                token = client.online_endpoints.get_keys(name=info["endpoint"]).access_token
            except Exception as exc:  # noqa: BLE001
                raise TargetError(f"cannot get a token for endpoint {info['endpoint']}: {common.reason(exc)}") from None
            headers["Authorization"] = "Bearer " + token
        else:
            headers["Authorization"] = "Bearer " + self._primary_key(record, service_dir)
        assert record.scoring_uri is not None
        reply = http.post(record.scoring_uri, body, headers, timeout)
        model_status = reply.headers.get(MODEL_ERROR_STATUS) if reply.status == 424 else None
        if model_status and model_status.isdigit():  # the model's own answer, as every other target shows it
            return Reply(int(model_status), reply.body, reply.seconds, reply.headers)
        return reply

    def _primary_key(self, record: ServiceRecord, service_dir: Path) -> str:
        """The endpoint key from keys.json, fetched from Azure into it when this machine has none (a fresh runner)."""
        if not (service_dir / keyfile.KEYS_FILE).is_file():
            info = record.extra
            try:
                client = self._client(common.recorded_config(info))
                keys = client.online_endpoints.get_keys(name=info.get("endpoint", ""))
            except Exception as exc:  # noqa: BLE001
                raise TargetError(
                    f"no key for endpoint {info.get('endpoint')} in {service_dir}, and Azure did not "
                    f"give it: {common.reason(exc)}"
                ) from None
            keyfile.write(service_dir, keys.primary_key, keys.secondary_key)
        return keyfile.read_primary(service_dir)

    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        info = record.extra
        name = info.get("endpoint", "")
        client = self._client(common.recorded_config(info))
        gone = f"endpoint {name} was not found in the workspace (nothing to delete)"
        try:
            with common.sdk_output(service_dir / common.SDK_LOG, None, f"delete {name}"):  # the poller's dots
                client.online_endpoints.get(name=name)
                poller = client.online_endpoints.begin_delete(name=name)
                poller.result()
        except Exception as exc:  # noqa: BLE001
            if not common.is_not_found(exc):
                raise TargetError(f"deleting endpoint {name}: {common.reason(exc)}") from None
            keyfile.remove(service_dir)
            return gone
        keyfile.remove(service_dir)
        if initial_status(poller) == 204:  # ARM's answer for a name with nothing behind it: gone since the get
            return gone
        return f"deleted endpoint {name} and its deployment {info.get('deployment', FIRST)}"

    def logs(self, record: ServiceRecord, service_dir: Path, *, tail: int) -> str:
        info = record.extra
        name = info.get("endpoint", "")
        client = self._client(common.recorded_config(info))
        try:
            with common.sdk_output(service_dir / common.SDK_LOG, None, f"logs {name}"):
                text = client.online_deployments.get_logs(
                    name=info.get("deployment", FIRST), endpoint_name=name, lines=tail
                )
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"cannot read the logs of {name}: {common.reason(exc)}") from None
        return common.log_tail(text, tail)

    # -- helpers ---------------------------------------------------------------------------------
    def _client(self, config: Path | None) -> Any:
        """One MLClient per workspace config for the life of this target object: its credential caches the token."""
        if config in self._clients:
            return self._clients[config]
        try:
            self._clients[config] = self.client_factory(config)
            return self._clients[config]
        except (TargetError, UsageError):
            raise
        except Exception as exc:  # noqa: BLE001  missing config.json, bad config
            raise TargetError(f"{common.UNREACHABLE}: {common.reason(exc)}") from None
