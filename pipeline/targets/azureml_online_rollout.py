"""The blue/green procedure of target `azureml-online`: stage beside the live deployment, promote, retire, discard."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import RenderError, TargetError
from pipeline.spec import RegistrySource
from pipeline.targets import azureml_common as common
from pipeline.targets import azureml_online_live as live_side
from pipeline.targets import keys as keyfile
from pipeline.targets.azureml_online_sdk import initial_status, load, next_deployment, serving, weights_of
from pipeline.targets.base import DeployRequest, ServiceRecord


class BlueGreen:
    """One endpoint's deployments: the new one beside the live one with no traffic, then all of it, then alone.

    `client` gives the MLClient of a workspace config.json (the target's, which keeps one per config).
    """

    def __init__(self, client: Callable[[Path | None], Any]) -> None:
        self.client = client

    def stage(self, request: DeployRequest) -> ServiceRecord:
        """The other of blue and green beside the live deployment, ready and stamped, with none of the traffic."""
        spec, console = request.spec, request.console
        endpoint, deployment = self._entities(request)
        config = common.workspace_config(spec.deploy.settings(), spec.folder, spec.model.source)
        client = self.client(config)
        name = endpoint.name
        live = self._endpoint(client, name)
        created = live is None
        if live is None:  # a new endpoint routes nothing: it is stamped when a deployment takes its traffic
            endpoint.traffic = {}
            console.progress(f"{name}: creating the endpoint")
            self._wait(lambda: client.online_endpoints.begin_create_or_update(endpoint), f"creating endpoint {name}")
            live = self._endpoint(client, name)
            if live is None:
                raise TargetError(f"endpoint {name} was created but cannot be read back")
        before = weights_of(live.traffic)
        old = serving(before)
        new = next_deployment(old)
        if before.get(new):
            raise TargetError(
                f"endpoint {name} splits its traffic {before}: blue/green needs one deployment taking "
                f"all of it; route 100% to one (az ml online-endpoint update --traffic) and run again"
            )
        deployment.name = new
        deployment.tags = common.stamped_tags(deployment.tags, request.stamp)
        beside = f" beside {old}" if old else ""
        console.progress(f"{name}: deploying {new}{beside} on {deployment.instance_type} (this takes several minutes)")
        failure = None
        try:
            poller = client.online_deployments.begin_create_or_update(deployment)
            poller.result(timeout=spec.deploy.ready_timeout_s)
            failure = None if poller.done() else f"still not ready after {spec.deploy.ready_timeout_s} s"
        except Exception as exc:  # noqa: BLE001  HttpResponseError, the SDK's deployment errors
            failure = common.excerpt(exc)
        if failure:
            logs = common.logs_section(
                lambda n: client.online_deployments.get_logs(name=new, endpoint_name=name, lines=n), "deployment"
            )
            left = self._clean_failed(client, name, new, created, request.service_dir)
            raise TargetError(f"deployment {new} of endpoint {name} failed: {failure}{logs}\n{left}")
        try:
            staged = client.online_deployments.get(name=new, endpoint_name=name)
            self._fetch_keys(client, live, request.service_dir)
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"endpoint {name}: {common.excerpt(exc)}") from None
        record = live_side.record_of(
            client, live, staged, config=config, model_sha256=self._model_sha256(request), traffic={}
        )
        return record.stamped(
            extra={
                **record.extra,
                "staged": True,
                "replaces": old,
                "traffic_before": before,
                "created_endpoint": created,
            }
        )

    def promote(self, candidate: ServiceRecord, request: DeployRequest) -> ServiceRecord:
        """All the traffic to the tested deployment, in the PUT that gives the endpoint the spec's tags and stamp."""
        endpoint, _ = self._entities(request)
        info = candidate.extra
        name, new = endpoint.name, info["deployment"]
        client = self.client(common.recorded_config(info))
        endpoint.traffic = {new: 100}
        endpoint.tags = common.stamped_tags(endpoint.tags, request.stamp)  # the endpoint says what it now serves
        request.console.progress(f"{name}: routing all traffic to {new}")
        self._wait(
            lambda: client.online_endpoints.begin_create_or_update(endpoint), f"routing the traffic of {name} to {new}"
        )
        try:
            live = client.online_endpoints.get(name=name)
            deployment = client.online_deployments.get(name=new, endpoint_name=name)
            if live.auth_mode != info.get("auth_mode"):  # the endpoint changed its auth mode as it took the traffic
                self._fetch_keys(client, live, request.service_dir)
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"endpoint {name}: {common.excerpt(exc)}") from None
        return live_side.record_of(
            client, live, deployment, config=common.recorded_config(info), model_sha256=candidate.model_sha256
        )

    def retire_previous(self, previous: ServiceRecord, request: DeployRequest) -> str:
        """Delete the deployment the previous record names, once it takes no traffic (Azure drains it first)."""
        info = previous.extra
        old, name = info.get("deployment"), info.get("endpoint", "")
        if not isinstance(old, str) or name != request.spec.name:
            return "no previous deployment to delete"
        client = self.client(common.recorded_config(info))
        try:
            endpoint = client.online_endpoints.get(name=name)
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"cannot read endpoint {name}: {common.reason(exc)}") from None
        if weights_of(endpoint.traffic).get(old):
            return f"deployment {old} still takes traffic: kept"
        return self._delete_deployment(client, name, old)

    def discard(self, candidate: ServiceRecord, service_dir: Path) -> str:
        """Delete a staged deployment that failed; the old one keeps (or gets back) all the traffic."""
        info = candidate.extra
        name, new = info.get("endpoint", ""), info.get("deployment", "")
        client = self.client(common.recorded_config(info))
        with common.sdk_output(service_dir / common.SDK_LOG, None, f"discard {new}"):
            try:
                endpoint = client.online_endpoints.get(name=name)
            except Exception as exc:  # noqa: BLE001
                if common.is_not_found(exc):
                    return f"endpoint {name} is gone"
                raise TargetError(f"cannot read endpoint {name}: {common.reason(exc)}") from None
            before = weights_of(info.get("traffic_before"))
            if weights_of(endpoint.traffic).get(new):  # a promotion cut short: give the old one its traffic back
                endpoint.traffic = before
                self._wait(
                    lambda: client.online_endpoints.begin_create_or_update(endpoint),
                    f"routing the traffic of {name} back",
                )
            if info.get("created_endpoint"):  # nothing served before this deploy: leave nothing behind
                self._wait(lambda: client.online_endpoints.begin_delete(name=name), f"deleting endpoint {name}")
                keyfile.remove(service_dir)
                return f"deleted endpoint {name}, made for the new version"
            self._delete_deployment(client, name, new)
            old = serving(before)
            return f"deleted deployment {new}" + (f"; {old} still takes all the traffic" if old else "")

    def _clean_failed(self, client: Any, name: str, new: str, created: bool, service_dir: Path) -> str:
        """A deployment that failed takes no traffic: delete it (and an endpoint made for it), so it costs nothing."""
        try:
            if created:
                self._wait(lambda: client.online_endpoints.begin_delete(name=name), f"deleting endpoint {name}")
                keyfile.remove(service_dir)
                return f"(deleted endpoint {name}, made for it)"
            self._delete_deployment(client, name, new)
        except TargetError as exc:
            return f"({exc}; delete it with `az ml online-deployment delete -e {name} -n {new}`)"
        return f"(deleted deployment {new}; the live deployment was not touched)"

    def _delete_deployment(self, client: Any, name: str, deployment: str) -> str:
        gone = f"deployment {deployment} was already gone"
        try:
            poller = client.online_deployments.begin_delete(name=deployment, endpoint_name=name)
            poller.result()
        except Exception as exc:  # noqa: BLE001
            if common.is_not_found(exc):
                return gone
            raise TargetError(f"deleting deployment {deployment} of {name}: {common.excerpt(exc)}") from None
        return gone if initial_status(poller) == 204 else f"deleted deployment {deployment}"

    def _entities(self, request: DeployRequest) -> tuple[Any, Any]:
        registry = isinstance(request.spec.model.source, RegistrySource)
        try:
            return load(request.build_dir, None if registry else request.model_path)
        except RenderError as exc:
            raise TargetError(f"{request.build_dir}: {exc}") from None

    def _model_sha256(self, request: DeployRequest) -> str | None:
        from pipeline.files import sha256_path

        spec = request.spec
        if spec.model.sha256:
            return spec.model.sha256
        return None if isinstance(spec.model.source, RegistrySource) else sha256_path(request.model_path)

    def _fetch_keys(self, client: Any, endpoint: Any, service_dir: Path) -> None:
        if endpoint.auth_mode == "key":
            keys = client.online_endpoints.get_keys(name=endpoint.name)
            keyfile.write(service_dir, keys.primary_key, keys.secondary_key)
        else:
            keyfile.remove(service_dir)  # tokens are fetched fresh for each request

    def _endpoint(self, client: Any, name: str) -> Any:
        """The live endpoint, or None when there is none of that name."""
        try:
            return client.online_endpoints.get(name=name)
        except Exception as exc:  # noqa: BLE001
            if common.is_not_found(exc):
                return None
            raise TargetError(f"{common.UNREACHABLE}: {common.reason(exc)}") from None

    @staticmethod
    def _wait(start: Callable[[], Any], what: str) -> Any:
        """Start a long-running operation and wait for its end; the poller, or a TargetError saying `what` failed."""
        try:
            poller = start()
            poller.result()
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"{what}: {common.excerpt(exc)}") from None
        return poller


@contextlib.contextmanager
def sdk_log(request: DeployRequest) -> Iterator[None]:
    """What the SDK prints goes to the service's sdk.log; a failure names that file."""
    log = request.service_dir / common.SDK_LOG
    try:
        with common.sdk_output(log, request.console, request.spec.name):
            yield
    except TargetError as exc:
        raise TargetError(f"{exc}\n(everything the SDK printed is in {log})") from None
    finally:
        request.console.clear_progress()
