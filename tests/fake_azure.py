"""A fake Azure at the HTTP boundary: a router over `responses` answering what azureml-core and azure-ai-ml send."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import responses

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "ml-rg"
WORKSPACE = "mlws"
TENANT = "72f988bf-0000-0000-0000-000000000000"
CLIENT_ID = "aaaaaaaa-0000-0000-0000-00000000c1d0"  # the service principal the tests sign in as
CLIENT_SECRET = "service-principal-secret"
REGION = "westeurope"
WS_ID = "11111111-2222-3333-4444-555555555555"  # the workspace's immutable id (workspaceId)
ARM = "https://management.azure.com"
LOGIN = "https://login.microsoftonline.com"
API = f"https://{REGION}.api.azureml.ms"  # the region's AML data plane: model management, artifacts, history
STORAGE = "mlwsstorage"
DATASTORE_CONTAINER = "azureml-blobstore-11111111-2222-3333-4444-555555555555"  # the workspace's default datastore
NOW = "2026-01-01T00:00:00.000000+00:00"
WS_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)


@dataclass
class Call:
    """One request the SDK sent, and what the fake answered."""

    method: str
    url: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def token(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value.split(" ", 1)[1] if value.lower().startswith("bearer ") else None


@dataclass
class Failure:
    """An answer to give instead of the normal one, `times` times, to the requests `method` + `path` match."""

    method: str
    path: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]
    times: int


Answer = tuple[int, dict[str, str], Any]


@dataclass
class Outcome:
    """How a deployment the fake accepted ends: after `polls` answers of Running, in `state` (v1 operation or v2
    provisioning state), the service then `service_state` (v1: Healthy, Unhealthy, Failed), with Azure's `error`
    body and the container `logs` the service's log route serves from then on."""

    state: str = "Succeeded"
    service_state: str = "Healthy"
    error: dict[str, Any] | None = None
    logs: str = ""
    polls: int = 1


Handler = Callable[[Call, re.Match[str]], Answer]


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT: the SDKs decode access tokens (without verifying) for their expiry and tenant."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'typ': 'JWT', 'alg': 'RS256', 'kid': 'fake'})}.{part(claims)}.{part({'sig': 'fake'})}"


def error(code: str, message: str, status: int = 400) -> Answer:
    return status, {}, {"error": {"code": code, "message": message}}


class FakeAzure:
    """The router and the state behind it; every request lands in `calls`, unknown ones also in `unmatched`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.unmatched: list[str] = []
        self.failures: list[Failure] = []
        self.tokens: dict[str, dict[str, Any]] = {}  # issued access token -> its claims
        self.token_lifetime = 3600
        self.blobs: dict[str, bytes] = {}  # "container/blob path" -> bytes, in the workspace's storage
        self.blocks: dict[str, dict[str, bytes]] = {}  # staged blocks of a blob not yet committed
        self.blob_metadata: dict[str, dict[str, str]] = {}  # "container/blob path" -> x-ms-meta-* values
        self.assets: dict[str, dict[str, Any]] = {}  # v1 asset id -> asset
        self.models: dict[str, dict[str, Any]] = {}  # v1 model id (name:version) -> model
        self.services: dict[str, dict[str, Any]] = {}  # v1 web service name -> the service as MMS shows it
        self.operations: dict[str, dict[str, Any]] = {}  # v1 async operation id -> operation
        self.service_logs: dict[str, str] = {}  # v1 web service name -> its container log
        self.computes: dict[str, dict[str, Any]] = {"aks-mnist": aks_compute("aks-mnist")}
        self.outcomes: list[Outcome] = []  # how the next deployments end, first one first
        self.resources: dict[str, dict[str, Any]] = {}  # v2: ARM id (lower case) -> resource under the workspace
        self.async_ops: dict[str, dict[str, Any]] = {}  # v2: ARM async operation id -> operation
        self.deployment_logs: dict[str, str] = {}  # v2: "endpoint/deployment" -> its container log
        store = f"{WS_PATH}/datastores/workspaceblobstore"
        self.resources[store.lower()] = {
            "id": store,
            "name": "workspaceblobstore",
            "type": "Microsoft.MachineLearningServices/workspaces/datastores",
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": STORAGE,
                "containerName": DATASTORE_CONTAINER,
                "endpoint": "core.windows.net",
                "protocol": "https",
                "isDefault": True,
                "credentials": {"credentialsType": "AccountKey"},
                "serviceDataAccessAuthIdentity": "None",
            },
        }
        self.clock_offset = 0.0  # seconds the fake's clock runs ahead of the machine's
        self.hooks: list[tuple[str, re.Pattern[str], Callable[[], None]]] = []
        self.sleeps: list[float] = []  # what the SDKs asked to sleep (tests make it free)
        self.lock = threading.RLock()
        self.config_file: Path | None = None  # a workspace config.json naming the fake workspace
        self.containers: Path | None = None  # set: a healthy service (v1) or deployment (v2) really runs
        self.servers: list[Any] = []  # the loopback scoring servers standing in for containers
        self.apps: dict[str, dict[str, Any]] = {}  # v2: endpoint key -> deployment name -> its running score.py
        self.routers: dict[str, str] = {}  # v2: endpoint key -> its loopback scoring front end
        self.routes: list[tuple[str, str, re.Pattern[str], Handler]] = []
        self._token_routes()
        self._arm_routes()
        self._blob_routes()
        self._v1_routes()
        self._v2_routes()

    # -- the test's controls ---------------------------------------------------------------------
    def fail(
        self,
        method: str,
        path: str,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests whose path matches the regex `path` with this status instead."""
        self.failures.append(Failure(method, re.compile(path), status, body, dict(headers or {}), times))

    def after(self, method: str, path: str, action: Callable[[], None]) -> None:
        """Run `action` once, right after answering the first request whose path matches `path`."""
        self.hooks.append((method, re.compile(path), action))

    def now(self) -> float:
        return time.time() + self.clock_offset

    def expire_tokens(self) -> None:
        """Let time pass beyond the life of every token issued so far: Azure rejects them from now on."""
        self.clock_offset += self.token_lifetime + 60

    def sleep(self, seconds: float) -> None:
        """Stands in for time.sleep inside the SDKs: recorded, and the fake's clock moves on instead."""
        self.sleeps.append(float(seconds))
        self.clock_offset += float(seconds)

    def requests_to(self, method: str, path: str) -> list[Call]:
        """The recorded requests of one method whose path matches a regex (search, not full match)."""
        return [c for c in self.calls if c.method == method and re.search(path, c.path)]

    # -- routing ---------------------------------------------------------------------------------
    def route(self, method: str, host: str, path: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append((method, host, re.compile(path), handler))
            return handler

        return register

    def install(self, mock: responses.RequestsMock) -> None:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
            mock.add_callback(method, re.compile(r"https?://.*"), callback=self._dispatch)

    def _dispatch(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(request.url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = b"".join(body) if hasattr(body, "__iter__") else bytes(body)
        call = Call(
            request.method,
            request.url,
            parts.hostname or "",
            parts.path,
            {k: v[-1] for k, v in parse_qs(parts.query).items()},
            dict(request.headers),
            body,
        )
        with self.lock:
            self.calls.append(call)
            status, headers, payload = self._authorize(call) or self._answer(call)
            call.status = status
            for hook in [h for h in self.hooks if h[0] == call.method and h[1].search(call.path)][:1]:
                self.hooks.remove(hook)
                hook[2]()
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
            headers = {"Content-Type": "application/json", **headers}
        if isinstance(payload, str):
            payload = payload.encode()
        return status, headers, payload or b""

    def _authorize(self, call: Call) -> Answer | None:
        """ARM and the AML data plane want a bearer token the fake issued and that has not expired."""
        if call.host not in ("management.azure.com", urlsplit(API).hostname):
            return None  # login needs none; blob storage is reached with SAS or account keys
        if call.path == "/discovery":
            return None  # the region's service discovery is public: azureml-core asks it without a token
        claims = self.tokens.get(call.token or "")
        challenge = {
            "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
            'error="invalid_token", error_description="The access token is invalid"'
        }
        if claims is None:
            return (
                401,
                challenge,
                {
                    "error": {
                        "code": "AuthenticationFailed",
                        "message": "Authentication failed. The 'Authorization' header is missing "
                        "or is not a token this tenant issued.",
                    }
                },
            )
        if claims["exp"] <= self.now():
            expiry = time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime(claims["exp"]))
            current = time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime(self.now()))
            return (
                401,
                challenge,
                {
                    "error": {
                        "code": "ExpiredAuthenticationToken",
                        "message": f"The access token expiry UTC time '{expiry}' is earlier "
                        f"than current UTC time '{current}'.",
                    }
                },
            )
        return None

    def _answer(self, call: Call) -> Answer:
        for failure in self.failures:
            if failure.times > 0 and failure.method == call.method and failure.path.search(call.path):
                failure.times -= 1
                return failure.status, failure.headers, failure.body
        for method, host, pattern, handler in self.routes:
            if method != call.method or not re.fullmatch(host, call.host):
                continue
            match = pattern.fullmatch(call.path)
            if match:
                return handler(call, match)
        self.unmatched.append(f"{call.method} {call.url}")
        return error("FakeAzureUnknownRoute", f"the fake Azure has no route for {call.method} {call.path}", 501)

    # -- Azure AD --------------------------------------------------------------------------------
    def _token_routes(self) -> None:
        login = re.escape("login.microsoftonline.com")

        @self.route("GET", login, r"/(?P<tenant>[^/]+)/v2.0/.well-known/openid-configuration")
        def openid(call: Call, m: re.Match[str]) -> Answer:
            base = f"{LOGIN}/{m['tenant']}"
            return (
                200,
                {},
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "issuer": f"https://login.microsoftonline.com/{TENANT}/v2.0",
                    "tenant_region_scope": "EU",
                },
            )

        @self.route("GET", login, r"/common/discovery/instance")
        def instance_discovery(call: Call, m: re.Match[str]) -> Answer:  # msal asks after a refused token request
            aliases = ["login.microsoftonline.com", "login.windows.net", "login.microsoft.com", "sts.windows.net"]
            return (
                200,
                {},
                {
                    "api-version": "1.1",
                    "tenant_discovery_endpoint": f"{LOGIN}/common/v2.0/.well-known/openid-configuration",
                    "metadata": [{"preferred_network": aliases[0], "preferred_cache": aliases[1], "aliases": aliases}],
                },
            )

        @self.route("POST", login, r"/(?P<tenant>[^/]+)/oauth2/v2.0/token")
        def token(call: Call, m: re.Match[str]) -> Answer:
            form = {k: v[-1] for k, v in parse_qs(call.body.decode()).items()}
            if form.get("grant_type") != "client_credentials":
                return (
                    400,
                    {},
                    {"error": "unsupported_grant_type", "error_description": "the fake issues app tokens only"},
                )
            now = int(self.now())
            claims = {
                "aud": form.get("scope", "").split(" ")[0].removesuffix("/.default"),
                "tid": TENANT,
                "appid": form.get("client_id"),
                "oid": str(uuid.uuid4()),
                "iat": now,
                "nbf": now,
                "exp": now + self.token_lifetime,
                "jti": uuid.uuid4().hex,
            }
            value = jwt(claims)
            self.tokens[value] = claims
            return (
                200,
                {},
                {
                    "token_type": "Bearer",
                    "expires_in": self.token_lifetime,
                    "ext_expires_in": self.token_lifetime,
                    "access_token": value,
                },
            )

    # -- ARM: subscriptions and the workspace ------------------------------------------------------
    def workspace_json(self) -> dict[str, Any]:
        group = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers"
        storage = f"{group}/Microsoft.Storage/storageAccounts/{STORAGE}"
        return {
            "id": WS_PATH,
            "name": WORKSPACE,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "location": REGION,
            "tags": {},
            "sku": {"name": "Basic", "tier": "Basic"},
            "kind": "Default",
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.UUID(int=1)), "tenantId": TENANT},
            "properties": {
                "workspaceId": WS_ID,
                "friendlyName": WORKSPACE,
                "description": "",
                "provisioningState": "Succeeded",
                "creationTime": "2026-01-01T00:00:00.0000000Z",
                "storageAccount": storage,
                "keyVault": f"{group}/Microsoft.KeyVault/vaults/{STORAGE}",
                "applicationInsights": f"{group}/microsoft.insights/components/{STORAGE}",
                "containerRegistry": f"{group}/Microsoft.ContainerRegistry/registries/{STORAGE}",
                "discoveryUrl": f"{API}/discovery",
                "hbiWorkspace": False,
                "v1LegacyMode": False,
                "mlFlowTrackingUri": f"azureml://{REGION}.api.azureml.ms/mlflow/v1.0{WS_PATH}",
                "publicNetworkAccess": "Enabled",
            },
        }

    def _arm_routes(self) -> None:
        arm = re.escape("management.azure.com")
        api = re.escape(urlsplit(API).hostname or "")

        @self.route("GET", arm, r"/subscriptions")
        def subscriptions(call: Call, m: re.Match[str]) -> Answer:
            return (
                200,
                {},
                {
                    "value": [
                        {
                            "id": f"/subscriptions/{SUBSCRIPTION}",
                            "subscriptionId": SUBSCRIPTION,
                            "tenantId": TENANT,
                            "displayName": "ml",
                            "state": "Enabled",
                        }
                    ]
                },
            )

        @self.route("GET", arm, re.escape(WS_PATH))
        def workspace(call: Call, m: re.Match[str]) -> Answer:
            return 200, {}, self.workspace_json()

        @self.route("GET", api, r"/discovery")
        def discovery(call: Call, m: re.Match[str]) -> Answer:
            services = dict.fromkeys(
                (
                    "api",
                    "catalog",
                    "experimentation",
                    "gallery",
                    "history",
                    "hyperdrive",
                    "labeling",
                    "modelmanagement",
                    "pipelines",
                    "studiocoreservices",
                ),
                API,
            )
            return 200, {}, {**services, "studio": "https://ml.azure.com"}

    # -- blob storage (artifact uploads and v2 datastore uploads land here) ------------------------
    def _blob_routes(self) -> None:
        blob = re.escape(f"{STORAGE}.blob.core.windows.net")

        def key(m: re.Match[str]) -> str:
            return m["path"]

        def properties(path: str) -> dict[str, str]:
            data = self.blobs[path]
            meta = {f"x-ms-meta-{k}": v for k, v in self.blob_metadata.get(path, {}).items()}
            return {
                **meta,
                "Content-Length": str(len(data)),
                "ETag": f'"0x{len(data):X}"',
                "x-ms-blob-type": "BlockBlob",
                "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT",
                "x-ms-request-id": str(uuid.uuid4()),
                "x-ms-version": "2021-08-06",
                "Content-Type": "application/octet-stream",
            }

        @self.route("PUT", blob, r"/(?P<path>[^/]+/.+)")
        def put(call: Call, m: re.Match[str]) -> Answer:
            comp = call.query.get("comp")
            if comp == "block":
                self.blocks.setdefault(key(m), {})[call.query["blockid"]] = call.body
                return 201, {"x-ms-request-server-encrypted": "true"}, b""
            if comp == "blocklist":
                ids = re.findall(r"<(?:Latest|Committed|Uncommitted)>([^<]+)<", call.body.decode())
                staged = self.blocks.pop(key(m), {})
                self.blobs[key(m)] = b"".join(staged[i] for i in ids)
                return 201, {"ETag": '"0x1"', "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"}, b""
            if comp == "metadata":
                if key(m) not in self.blobs:
                    return 404, {"x-ms-error-code": "BlobNotFound"}, b""
                self.blob_metadata[key(m)] = {
                    k[len("x-ms-meta-") :]: v for k, v in call.headers.items() if k.lower().startswith("x-ms-meta-")
                }
                return 200, {"ETag": '"0x2"', "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"}, b""
            if comp is None:
                digest = call.headers.get("Content-MD5")
                if digest and digest != base64.b64encode(hashlib.md5(call.body).digest()).decode():
                    return 400, {"x-ms-error-code": "Md5Mismatch"}, b""
                self.blobs[key(m)] = call.body
                self.blob_metadata[key(m)] = {
                    k[len("x-ms-meta-") :]: v for k, v in call.headers.items() if k.lower().startswith("x-ms-meta-")
                }
                return (
                    201,
                    {
                        "ETag": '"0x1"',
                        "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT",
                        "x-ms-request-server-encrypted": "true",
                    },
                    b"",
                )
            return error("UnsupportedQueryParameter", f"the fake blob store has no comp={comp}", 400)

        @self.route("HEAD", blob, r"/(?P<path>[^/]+/.+)")
        def head(call: Call, m: re.Match[str]) -> Answer:
            if key(m) not in self.blobs:
                return 404, {"x-ms-error-code": "BlobNotFound"}, b""
            return 200, properties(key(m)), b""

        @self.route("GET", blob, r"/(?P<path>[^/]+/.+)")
        def get(call: Call, m: re.Match[str]) -> Answer:
            if key(m) not in self.blobs:
                return 404, {"x-ms-error-code": "BlobNotFound"}, b""
            data = self.blobs[key(m)]
            ranged = call.headers.get("x-ms-range") or call.headers.get("Range") or ""
            wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged)
            if not wanted:
                return 200, properties(key(m)), data
            first = int(wanted[1])
            last = min(int(wanted[2]) if wanted[2] else len(data) - 1, len(data) - 1)
            part = data[first : last + 1]
            return (
                206,
                {
                    **properties(key(m)),
                    "Content-Length": str(len(part)),
                    "Content-Range": f"bytes {first}-{last}/{len(data)}",
                },
                part,
            )

        @self.route("GET", blob, r"/(?P<container>[^/]+)")
        def list_blobs(call: Call, m: re.Match[str]) -> Answer:
            if call.query.get("comp") != "list":
                return error("UnsupportedQueryParameter", "the fake blob store lists blobs only", 400)
            prefix = f"{m['container']}/{call.query.get('prefix', '')}"
            items = "".join(
                f"<Blob><Name>{k.split('/', 1)[1]}</Name><Properties><Content-Length>{len(v)}"
                f"</Content-Length><BlobType>BlockBlob</BlobType></Properties></Blob>"
                for k, v in sorted(self.blobs.items())
                if k.startswith(prefix)
            )
            return (
                200,
                {"Content-Type": "application/xml"},
                (
                    f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="{m["container"]}">'
                    f"<Prefix>{call.query.get('prefix', '')}</Prefix><Blobs>{items}</Blobs><NextMarker />"
                    "</EnumerationResults>"
                ),
            )

    # -- SDK v1: artifacts, assets, models, images/environments, services, operations ------------
    def _v1_routes(self) -> None:
        api = re.escape(urlsplit(API).hostname or "")
        ws = re.escape(WS_PATH)

        @self.route("POST", api, rf"/artifact/v2.0{ws}/artifacts/batch/metadata/(?P<origin>[^/]+)/(?P<container>[^/]+)")
        def artifacts(call: Call, m: re.Match[str]) -> Answer:
            paths = [p["path"] for p in call.json["paths"]]
            where = {p: f"{m['origin']}/{m['container']}/{p}" for p in paths}
            return (
                200,
                {},
                {
                    "artifacts": {
                        p: {"artifactId": where[p], "origin": m["origin"], "container": m["container"], "path": p}
                        for p in paths
                    },
                    "artifactContentInformation": {
                        p: {
                            "contentUri": f"https://{STORAGE}.blob.core.windows.net/azureml/{where[p]}?sig=fake",
                            "origin": m["origin"],
                            "container": m["container"],
                            "path": p,
                        }
                        for p in paths
                    },
                    "errors": {},
                },
            )

        @self.route("GET", api, rf"/artifact/v2.0{ws}/artifacts/prefix/contentinfo/(?P<prefix>.+)")
        def artifacts_under(call: Call, m: re.Match[str]) -> Answer:
            found = sorted(k.removeprefix("azureml/") for k in self.blobs if k.startswith(f"azureml/{m['prefix']}"))
            value = []
            for path in found:
                origin, container, name = path.split("/", 2)
                value.append(
                    {
                        "contentUri": f"https://{STORAGE}.blob.core.windows.net/azureml/{path}?sv=2019-07-07&sig=fake",
                        "origin": origin,
                        "container": container,
                        "path": name,
                    }
                )
            return 200, {}, {"value": value, "continuationToken": None}

        mms = rf"/modelmanagement/v1.0{ws}"

        @self.route("GET", api, rf"/rp/workspaces{ws}/computes/(?P<name>[^/]+)")
        def compute(call: Call, m: re.Match[str]) -> Answer:
            if m["name"] not in self.computes:
                return error("ResourceNotFound", f"compute {m['name']} not found in workspace {WORKSPACE}", 404)
            return 200, {}, self.computes[m["name"]]

        @self.route("POST", api, rf"{mms}/assets")
        def create_asset(call: Call, m: re.Match[str]) -> Answer:
            asset = {**call.json, "id": uuid.uuid4().hex, "createdTime": NOW}
            self.assets[asset["id"]] = asset
            return 200, {}, asset

        @self.route("GET", api, rf"{mms}/assets/(?P<id>[^/]+)")
        def get_asset(call: Call, m: re.Match[str]) -> Answer:
            if m["id"] not in self.assets:
                return error("NotFound", f"asset {m['id']} not found", 404)
            return 200, {}, self.assets[m["id"]]

        @self.route("POST", api, rf"{mms}/models")
        def register(call: Call, m: re.Match[str]) -> Answer:
            body = call.json
            version = 1 + max((v["version"] for v in self.models.values() if v["name"] == body["name"]), default=0)
            model = {
                "framework": "Custom",
                "frameworkVersion": None,
                "unpack": False,
                "kvTags": {},
                "properties": {},
                "description": None,
                "experimentName": None,
                "runId": None,
                "datasets": [],
                "resourceRequirements": None,
                **body,
                "id": f"{body['name']}:{version}",
                "version": version,
                "createdTime": NOW,
                "modifiedTime": NOW,
                "createdBy": {"userName": "ci"},
            }
            self.models[model["id"]] = model
            return 200, {}, model

        @self.route("GET", api, rf"{mms}/models/(?P<id>[^/]+)")
        def get_model(call: Call, m: re.Match[str]) -> Answer:
            model_id = unquote(m["id"])
            if model_id not in self.models:
                return (
                    404,
                    {},
                    {
                        "code": "ModelNotFound",
                        "statusCode": 404,
                        "message": f"Model with id {model_id} not found",
                        "details": [],
                    },
                )
            return 200, {}, self.models[model_id]

        @self.route("GET", api, rf"{mms}/models")
        def list_models(call: Call, m: re.Match[str]) -> Answer:
            found = [v for v in self.models.values() if "name" not in call.query or v["name"] == call.query["name"]]
            return 200, {}, {"value": sorted(found, key=lambda v: -v["version"]), "nextLink": None}

        @self.route("POST", api, rf"{mms}/services/validate")
        def validate(call: Call, m: re.Match[str]) -> Answer:
            return 200, {}, {}  # {"error": {"message": ...}} here is how MMS refuses a request before it starts

        @self.route("POST", api, rf"{mms}/services")
        def create_service(call: Call, m: re.Match[str]) -> Answer:
            body = call.json
            name = body["name"]
            if name in self.services and not body.get("overwrite"):
                return (
                    409,
                    {},
                    {
                        "code": "Conflict",
                        "statusCode": 409,
                        "message": f"Service {name} already exists; set overwrite to update it",
                    },
                )
            outcome = self.outcomes.pop(0) if self.outcomes else Outcome()
            self.services[name] = self._service(body, self.services.get(name))
            return 202, {"Operation-Location": self._operation(name, "Deploy", outcome)}, b""

        @self.route("GET", api, rf"{mms}/operations/(?P<id>[^/]+)")
        def operation(call: Call, m: re.Match[str]) -> Answer:
            op = self.operations.get(m["id"])
            if op is None:
                return 404, {}, {"code": "NotFound", "statusCode": 404, "message": f"operation {m['id']} not found"}
            outcome: Outcome = op["outcome"]
            if op["polls"] < outcome.polls:
                op["polls"] += 1
                return 200, {}, self._operation_json(op, "Running")
            service = self.services.get(op["service"])
            if op["operationType"] == "Delete":
                self.services.pop(op["service"], None)
            elif service is not None:
                service["state"] = outcome.service_state
                service["error"] = outcome.error if outcome.state != "Succeeded" else None
                self.service_logs[op["service"]] = outcome.logs
                if self.containers is not None and outcome.service_state == "Healthy":
                    service["scoringUri"] = self._run_container(service)
            return 200, {}, self._operation_json(op, outcome.state)

        @self.route("GET", api, rf"{mms}/services/(?P<name>[^/]+)")
        def get_service(call: Call, m: re.Match[str]) -> Answer:
            if m["name"] not in self.services:
                return (
                    404,
                    {},
                    {"code": "NotFound", "statusCode": 404, "message": f"No service with name {m['name']} found"},
                )
            return 200, {}, self.services[m["name"]]

        @self.route("GET", api, rf"{mms}/services/(?P<name>[^/]+)/logs")
        def service_logs(call: Call, m: re.Match[str]) -> Answer:
            if m["name"] not in self.services:
                return 404, {}, {"code": "NotFound", "statusCode": 404, "message": f"No service {m['name']}"}
            rows = self.service_logs.get(m["name"], "").splitlines(keepends=True)
            return 200, {}, {"content": "".join(rows[-int(call.query.get("tail", 5000)) :])}

        @self.route("POST", api, rf"{mms}/services/(?P<name>[^/]+)/listkeys")
        def list_keys(call: Call, m: re.Match[str]) -> Answer:
            service = self.services.get(m["name"])
            if service is None:
                return 404, {}, {"code": "NotFound", "statusCode": 404, "message": f"No service {m['name']}"}
            return 200, {}, service["_keys"]

        @self.route("POST", api, rf"{mms}/services/(?P<name>[^/]+)/token")
        def service_token(call: Call, m: re.Match[str]) -> Answer:
            now = int(time.time())
            return (
                200,
                {},
                {
                    "accessToken": f"aad-token-for-{m['name']}",
                    "tokenType": "Bearer",
                    "refreshAfter": now + 600,
                    "expiryOn": now + 3600,
                },
            )

        @self.route("DELETE", api, rf"{mms}/services/(?P<name>[^/]+)")
        def delete_service(call: Call, m: re.Match[str]) -> Answer:
            if m["name"] not in self.services:
                return 204, {}, b""  # MMS: nothing by that name to delete
            self.services[m["name"]]["state"] = "Deleting"
            return 202, {"Operation-Location": self._operation(m["name"], "Delete", Outcome())}, b""

    # -- SDK v2: ARM resources under the workspace, async operations, keys, logs -------------------
    def _v2_routes(self) -> None:
        arm = re.escape("management.azure.com")
        ws = re.escape(WS_PATH)
        child = rf"{ws}(?P<rest>(/[^/]+/[^/]+)+)"

        @self.route("GET", arm, child)
        def get(call: Call, m: re.Match[str]) -> Answer:
            resource = self.resources.get(call.path.lower())
            if resource is None:
                return self._not_found(call.path)
            return 200, {}, public(resource)

        @self.route("GET", arm, rf"{ws}(?P<rest>(/[^/]+/[^/]+)*/[^/]+)")
        def list_children(call: Call, m: re.Match[str]) -> Answer:
            prefix = call.path.lower() + "/"
            found = [
                public(r)
                for key, r in self.resources.items()
                if key.startswith(prefix) and "/" not in key[len(prefix) :]
            ]
            return 200, {}, {"value": found}

        @self.route("PUT", arm, child)
        def put(call: Call, m: re.Match[str]) -> Answer:
            return self._put(call)

        @self.route("DELETE", arm, child)
        def delete(call: Call, m: re.Match[str]) -> Answer:
            key = call.path.lower()
            if key not in self.resources:
                return 204, {}, b""  # ARM: nothing by that name
            if "/deployments/" in key:  # Azure keeps a deployment that takes traffic: route it elsewhere first
                endpoint, name = key.rsplit("/deployments/", 1)
                traffic = {
                    k.lower(): int(v)
                    for k, v in (self.resources.get(endpoint, {}).get("properties", {}).get("traffic") or {}).items()
                }
                if traffic.get(name, 0) > 0:
                    return error(
                        "BadRequest",
                        f"deployment {name} takes {traffic[name]}% of the endpoint's traffic; "
                        "route the traffic to other deployments before deleting it",
                    )
            op = self._async_op(key, "Delete", Outcome())
            return 202, {"Location": op, "Azure-AsyncOperation": op, "Retry-After": "1"}, b""

        @self.route("POST", arm, rf"{ws}/(codes|models)/[^/]+/versions/[^/]+/startPendingUpload")
        def start_pending_upload(call: Call, m: re.Match[str]) -> Answer:
            blob_uri = f"https://{STORAGE}.blob.core.windows.net/{uuid.uuid4()}"  # a temporary container
            return (
                200,
                {},
                {
                    "pendingUploadId": uuid.uuid4().hex,
                    "pendingUploadType": "TemporaryBlobReference",
                    "blobReferenceForConsumption": {
                        "blobUri": blob_uri,
                        "storageAccountArmId": f"/subscriptions/{SUBSCRIPTION}/"
                        f"resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Storage/"
                        f"storageAccounts/{STORAGE}",
                        "credential": {"credentialType": "SAS", "sasUri": f"{blob_uri}?sig=fake"},
                    },
                },
            )

        @self.route("POST", arm, rf"{ws}/datastores/(?P<name>[^/]+)/listSecrets")
        def datastore_secrets(call: Call, m: re.Match[str]) -> Answer:
            if f"{WS_PATH}/datastores/{m['name']}".lower() not in self.resources:
                return self._not_found(f"datastores/{m['name']}")
            return 200, {}, {"secretsType": "AccountKey", "key": base64.b64encode(b"fake-account-key").decode()}

        endpoint = rf"{ws}/onlineEndpoints/(?P<endpoint>[^/]+)"

        @self.route("POST", arm, rf"{endpoint}/listKeys")
        def list_keys(call: Call, m: re.Match[str]) -> Answer:
            resource = self.resources.get(f"{WS_PATH}/onlineEndpoints/{m['endpoint']}".lower())
            if resource is None:
                return self._not_found(f"onlineEndpoints/{m['endpoint']}")
            return 200, {}, resource["_keys"]

        @self.route("POST", arm, rf"{endpoint}/token")
        def endpoint_token(call: Call, m: re.Match[str]) -> Answer:
            if f"{WS_PATH}/onlineEndpoints/{m['endpoint']}".lower() not in self.resources:
                return self._not_found(f"onlineEndpoints/{m['endpoint']}")
            now = int(time.time())
            return (
                200,
                {},
                {
                    "accessToken": f"aml-token-for-{m['endpoint']}",
                    "tokenType": "Bearer",
                    "expiryTimeUtc": now + 3600,
                    "refreshAfterTimeUtc": now + 1800,
                },
            )

        @self.route("POST", arm, rf"{endpoint}/deployments/(?P<deployment>[^/]+)/getLogs")
        def deployment_logs(call: Call, m: re.Match[str]) -> Answer:
            key = f"{WS_PATH}/onlineEndpoints/{m['endpoint']}/deployments/{m['deployment']}".lower()
            if key not in self.resources:
                return self._not_found(f"deployments/{m['deployment']}")
            rows = self.deployment_logs.get(key, "").splitlines(keepends=True)
            tail = int((call.json or {}).get("tail") or len(rows) or 1)
            return 200, {}, {"content": "".join(rows[-tail:])}

        @self.route(
            "GET",
            arm,
            r"/subscriptions/[^/]+/providers/Microsoft.MachineLearningServices/locations/[^/]+"
            r"/mfeOperations(Status|Results)/(?P<id>[^/]+)",
        )
        def async_operation(call: Call, m: re.Match[str]) -> Answer:
            return self._poll(m["id"], results="Results" in call.path)

    def _not_found(self, path: str) -> Answer:
        kind, name = path.rstrip("/").split("/")[-2:]
        return (
            404,
            {"x-ms-failure-cause": "service"},
            {
                "error": {
                    "code": "UserError",
                    "message": f"{kind[:-1] if kind.endswith('s') else kind} {name} not found",
                    "innerError": {"code": "NotFoundError"},
                }
            },
        )

    def _put(self, call: Call) -> Answer:
        key = call.path.lower()
        body = call.json or {}
        parts = call.path.split("/")
        kind, name = parts[-2], parts[-1]
        previous = self.resources.get(key)
        resource = {
            "location": REGION,
            "tags": {},
            **(previous or {}),
            **body,
            "id": call.path,
            "name": name,
            "type": f"Microsoft.MachineLearningServices/workspaces/{kind}",
            "systemData": {"createdAt": NOW, "createdBy": "ci", "createdByType": "Application", "lastModifiedAt": NOW},
        }
        resource["properties"] = {**(previous or {}).get("properties", {}), **body.get("properties", {})}
        if kind == "versions" and parts[-4] == "models":
            resource["properties"].setdefault("flavors", {})  # Azure always answers with the (empty) flavors
        if kind == "deployments":  # what Azure fills in for a managed deployment that did not say
            resource["properties"].setdefault("scaleSettings", {"scaleType": "Default"})
            resource.setdefault("sku", {"name": "Default", "tier": "Standard", "capacity": 1})
        if not V2_KINDS.get(kind, False):
            resource["properties"].setdefault("provisioningState", "Succeeded")
            self.resources[key] = resource
            return 200 if previous else 201, {}, public(resource)
        # the test's outcomes are for deployments: an endpoint (the v2 one, or a v1 service) is a quick affair
        outcome = self.outcomes.pop(0) if kind == "deployments" and self.outcomes else Outcome()
        resource["properties"]["provisioningState"] = "Updating" if previous else "Creating"
        if kind == "onlineEndpoints":
            refused = self._refuse_traffic(key, resource["properties"].get("traffic") or {})
            if refused:
                return refused
            host = f"{name}.{REGION}.inference.ml.azure.com"
            score = self._endpoint_uri(key) if self.containers is not None else f"https://{host}/score"
            resource["properties"].update(
                {"scoringUri": score, "swaggerUri": score.removesuffix("/score") + "/swagger.json"}
            )
            resource.setdefault(
                "_keys", {"primaryKey": f"primary-{uuid.uuid4().hex}", "secondaryKey": f"secondary-{uuid.uuid4().hex}"}
            )
        self.resources[key] = resource
        op = self._async_op(key, "Create", outcome)
        return 200 if previous else 201, {"Azure-AsyncOperation": op, "Retry-After": "1"}, public(resource)

    def _refuse_traffic(self, key: str, traffic: dict[str, Any]) -> Answer | None:
        """Azure routes only to deployments the endpoint has, and the weights add up to 100 (or nothing is routed)."""
        missing = sorted(
            name
            for name, weight in traffic.items()
            if int(weight) > 0 and f"{key}/deployments/{name}".lower() not in self.resources
        )
        if missing:
            return error("BadRequest", f"traffic names deployments the endpoint does not have: {', '.join(missing)}")
        total = sum(int(weight) for weight in traffic.values())
        if total not in (0, 100):
            return error("BadRequest", f"the traffic weights add up to {total}, not 100")
        return None

    def _async_op(self, key: str, kind: str, outcome: Outcome) -> str:
        op_id = uuid.uuid4().hex
        self.async_ops[op_id] = {"resource": key, "kind": kind, "outcome": outcome, "polls": 0}
        return (
            f"{ARM}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.MachineLearningServices/locations/{REGION}"
            f"/mfeOperationsStatus/{op_id}?api-version=2022-02-01-preview"
        )

    def _poll(self, op_id: str, results: bool = False) -> Answer:
        op = self.async_ops.get(op_id)
        if op is None:
            return self._not_found(f"operations/{op_id}")
        outcome: Outcome = op["outcome"]
        if op["polls"] < outcome.polls:
            op["polls"] += 1
            return 200, {"Retry-After": "1"}, {"status": "InProgress", "startTime": NOW}
        resource = self.resources.get(op["resource"])
        if op.get("done"):
            pass  # asked again after it ended: the outcome happened once
        elif op["kind"] == "Delete":
            for key in [k for k in self.resources if k == op["resource"] or k.startswith(op["resource"] + "/")]:
                del self.resources[key]
            self._forget(op["resource"])
        elif resource is not None:
            resource["properties"]["provisioningState"] = outcome.state
            if "/deployments/" in op["resource"]:
                self.deployment_logs[op["resource"]] = outcome.logs
                if self.containers is not None and outcome.state == "Succeeded":
                    self._start_deployment(op["resource"])
        op["done"] = True
        body: dict[str, Any] = {"status": outcome.state, "startTime": NOW, "endTime": NOW}
        if outcome.state != "Succeeded":
            body["error"] = outcome.error or {"code": "DeploymentFailed", "message": "the deployment failed"}
        return 200, {}, body

    def _operation(self, service: str, kind: str, outcome: Outcome) -> str:
        op_id = str(uuid.uuid4())
        self.operations[op_id] = {
            "id": op_id,
            "operationType": kind,
            "service": service,
            "outcome": outcome,
            "polls": 0,
        }
        return f"{API}/modelmanagement/v1.0{WS_PATH}/operations/{op_id}"

    @staticmethod
    def _operation_json(op: dict[str, Any], state: str) -> dict[str, Any]:
        out = {
            "id": op["id"],
            "operationType": op["operationType"],
            "state": state,
            "createdTime": NOW,
            "resourceLocation": f"/api/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}/services/{op['service']}",
            "operationDetails": {"subOperationType": "DeployService"},
        }
        if state not in ("Running", "Succeeded"):
            out["error"] = op["outcome"].error
            out["endTime"] = NOW
        return out

    def _run_container(self, service: dict[str, Any]) -> str:
        """Run a v1 service as Azure would: the uploaded score.py and model, behind a loopback HTTP server."""
        request = service["environmentImageRequest"]
        script = next(a for a in request["assets"] if a["id"] == request.get("entryScript", "score.py"))
        models = []
        for model_id in request["modelIds"]:
            model = self.models[model_id]
            prefix = self.assets[model["url"].removeprefix("aml://asset/")]["artifacts"][0]["prefix"]
            files = {prefix.rsplit("/", 1)[-1]: self.blobs[f"azureml/{prefix}"]}
            models.append((model["name"], model["version"], files))
        app = self._load_app(
            service["name"], self.blobs["azureml/" + script["url"].removeprefix("aml://artifact/")], models
        )
        key = service["_keys"]["primaryKey"] if service.get("authEnabled") else None

        def answer(headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
            if key and headers.get("Authorization") != f"Bearer {key}":
                return 401, {}, b'{"message": "invalid key"}'
            return run_app(app, body)

        return self._serve(answer)

    def _load_app(self, name: str, script: bytes, models: list[tuple[str, Any, dict[str, bytes]]]) -> Any:
        """score.py in a container folder of its own, its models laid out as Azure does, init() done."""
        import importlib.util
        import os

        assert self.containers is not None
        folder = Path(self.containers) / f"{name}-{len(self.servers)}-{uuid.uuid4().hex[:6]}"
        (folder / "app").mkdir(parents=True)
        (folder / "app" / "score.py").write_bytes(script)
        models_dir = folder / "azureml-models"
        for model_name, version, files in models:
            for relative, data in files.items():
                target = models_dir / model_name / str(version) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        one = [p for p in models_dir.glob("*/*") if p.is_dir()]
        spec = importlib.util.spec_from_file_location(
            f"score_{re.sub(r'[^A-Za-z0-9_]', '_', folder.name)}", folder / "app" / "score.py"
        )
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        saved = os.environ.get("AZUREML_MODEL_DIR")
        os.environ["AZUREML_MODEL_DIR"] = str(one[0] if len(one) == 1 else models_dir)  # as Azure sets it
        try:
            module.init()
        finally:
            if saved is None:
                os.environ.pop("AZUREML_MODEL_DIR", None)
            else:
                os.environ["AZUREML_MODEL_DIR"] = saved
        return module

    def _serve(self, answer: Callable[[Any, bytes], tuple[int, dict[str, str], bytes]]) -> str:
        """A loopback HTTP server whose POSTs `answer` takes (headers, body) -> (status, headers, body)."""
        import http.server

        class Container(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, data = answer(self.headers, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Container)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/score"

    # -- v2: one scoring front end per endpoint, routing to its deployments' containers ------------
    def _endpoint_uri(self, key: str) -> str:
        """The endpoint's scoring URI: with containers, a loopback front end that routes as Azure's does."""
        if key not in self.routers:
            self.routers[key] = self._serve(lambda headers, body: self._route_v2(key, headers, body))
        return self.routers[key]

    def _route_v2(self, key: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Azure's front end: the endpoint's auth, then the deployment the header names, else the traffic's."""
        import random

        with self.lock:
            endpoint = self.resources.get(key)
            apps = dict(self.apps.get(key, {}))
        if endpoint is None:
            return 404, {}, b'{"message": "endpoint not found"}'
        name, props = endpoint["name"], endpoint["properties"]
        given = headers.get("Authorization") or ""
        if props.get("authMode") == "AMLToken":
            allowed = {f"Bearer aml-token-for-{name}"}
        else:
            allowed = {f"Bearer {endpoint['_keys']['primaryKey']}", f"Bearer {endpoint['_keys']['secondaryKey']}"}
        if given not in allowed:
            return 401, {}, b'{"message": "An authentication header with a valid key or token is required"}'
        wanted = headers.get("azureml-model-deployment")
        if not wanted:
            traffic = {k: int(v) for k, v in (props.get("traffic") or {}).items() if int(v) > 0}
            if not traffic:
                return (
                    404,
                    {},
                    (
                        b'{"message": "No valid deployments to route to. Please check that the endpoint has '
                        b"at least one deployment with positive weight values or use a deployment specific "
                        b'header to route."}'
                    ),
                )
            wanted = random.choices(list(traffic), weights=list(traffic.values()))[0]
        app = apps.get(wanted)
        if app is None:
            return 404, {}, json.dumps({"message": f"deployment {wanted} not found in endpoint {name}"}).encode()
        status, _, data = run_app(app, body)
        routed = {"azureml-model-deployment": wanted}
        if status != 200:  # Azure answers for the model: 424, with the model's own status in a header
            return (
                424,
                {
                    **routed,
                    "ms-azureml-model-error-statuscode": str(status),
                    "ms-azureml-model-error-reason": "model_error",
                },
                data,
            )
        return 200, routed, data

    def _start_deployment(self, key: str) -> None:
        """A deployment that succeeded runs its uploaded code and model, reachable through its endpoint."""
        resource = self.resources[key]
        props = resource["properties"]
        code = self.resources[props["codeConfiguration"]["codeId"].lower()]["properties"]["codeUri"]
        prefix = urlsplit(code).path.lstrip("/").rstrip("/") + "/"
        script = self.blobs[prefix + props["codeConfiguration"]["scoringScript"]]
        model_id = props["model"]
        model_uri = self.resources[model_id.lower()]["properties"]["modelUri"]
        path = f"{DATASTORE_CONTAINER}/{model_uri.split('/paths/', 1)[1]}"
        files = {
            k[len(path) :].lstrip("/") or k.rsplit("/", 1)[-1]: v
            for k, v in self.blobs.items()
            if k == path or k.startswith(path.rstrip("/") + "/")
        }
        model_name, version = model_id.rstrip("/").split("/")[-3], model_id.rstrip("/").split("/")[-1]
        app = self._load_app(resource["name"], script, [(model_name, version, files)])
        endpoint = key.rsplit("/deployments/", 1)[0]
        self.apps.setdefault(endpoint, {})[resource["name"]] = app

    def _forget(self, key: str) -> None:
        """A deleted deployment (or endpoint) serves no more."""
        if "/deployments/" in key:
            endpoint, name = key.rsplit("/deployments/", 1)
            self.apps.get(endpoint, {}).pop(name, None)
            return
        self.apps.pop(key, None)
        self.routers.pop(key, None)

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def _service(self, body: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        """The service MMS shows for a create request: the request's settings, then what Azure adds."""
        name = body["name"]
        kind = body["computeType"]
        request = body.get("environmentImageRequest") or {}
        models = [self.models[i] for i in request.get("modelIds", []) if i in self.models]
        host = (
            f"{name}.{REGION}.azurecontainer.io"
            if kind == "ACI"
            else f"{body.get('computeName')}.{REGION}.cloudapp.azure.com/api/v1/service/{name}"
        )
        keys = (previous or {}).get("_keys") or {
            "primaryKey": f"primary-{uuid.uuid4().hex}",
            "secondaryKey": f"secondary-{uuid.uuid4().hex}",
        }
        settings = {k: v for k, v in body.items() if k not in ("overwrite", "keys", "environmentImageRequest")}
        service = {
            "id": name,
            "createdTime": (previous or {}).get("createdTime", NOW),
            "updatedTime": NOW,
            "state": "Transitioning",
            "error": None,
            "createdBy": {"userName": "ci"},
            "properties": {},
            "kvTags": {},
            "description": None,
            "imageId": None,
            "imageDigest": None,
            "models": models,
            "environmentImageRequest": request,
            "scoringUri": f"http://{host}/score",
            **settings,
            "_keys": keys,
        }
        if kind == "ACI":
            service.update(
                {
                    "appInsightsEnabled": False,
                    "cname": body.get("cname"),
                    "location": REGION,
                    "publicIp": "20.0.0.1",
                    "sslCertificate": None,
                    "sslEnabled": False,
                    "sslKey": None,
                }
            )
        else:
            service.update(
                {
                    "appInsightsEnabled": False,
                    "dataCollection": {"eventHubEnabled": False, "storageEnabled": False},
                    "maxConcurrentRequestsPerContainer": 1,
                    "maxQueueWaitMs": 500,
                    "livenessProbeRequirements": {
                        "periodSeconds": 10,
                        "initialDelaySeconds": 310,
                        "timeoutSeconds": 2,
                        "failureThreshold": 3,
                        "successThreshold": 1,
                    },
                    "autoScaler": {
                        "autoscaleEnabled": body.get("numReplicas") is None,
                        "minReplicas": 1,
                        "maxReplicas": 10,
                        "targetUtilization": 70,
                        "refreshPeriodInSeconds": 1,
                        **{k: v for k, v in (body.get("autoScaler") or {}).items() if v is not None},
                    },
                    "numReplicas": body.get("numReplicas"),
                    "scoringTimeoutMs": body.get("scoringTimeoutMs"),
                    "aadAuthEnabled": bool(body.get("aadAuthEnabled")),
                }
            )
        return service


# The workspace's child resources that the v2 SDK creates, and whether ARM creates them asynchronously.
V2_KINDS = {
    "onlineEndpoints": True,
    "deployments": True,
    "codes": False,
    "models": False,
    "environments": False,
    "versions": False,
    "datastores": False,
}


def aks_compute(name: str) -> dict[str, Any]:
    """An AKS cluster attached to the workspace, as ARM lists it under the workspace's computes."""
    return {
        "id": f"{WS_PATH}/computes/{name}",
        "name": name,
        "location": REGION,
        "tags": None,
        "type": "Microsoft.MachineLearningServices/workspaces/computes",
        "properties": {
            "computeType": "AKS",
            "computeLocation": REGION,
            "provisioningState": "Succeeded",
            "description": None,
            "resourceId": f"/subscriptions/{SUBSCRIPTION}/resourcegroups/"
            f"{RESOURCE_GROUP}/providers/Microsoft.ContainerService/managedClusters/{name}",
            "isAttachedCompute": True,
            "provisioningErrors": None,
            "properties": {
                "agentCount": 3,
                "agentVmSize": "Standard_D3_v2",
                "clusterPurpose": "FastProd",
                "loadBalancerType": "PublicIp",
                "clusterFqdn": f"{name}.hcp.{REGION}.azmk8s.io",
                "loadBalancerSubnet": None,
                "systemServices": [],
                "sslConfiguration": {"status": "Disabled"},
            },
        },
    }


def run_app(app: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """What Azure's inference server answers for one request: run(raw_data), an AMLResponse or a JSON value."""
    answer = app.run(body.decode("utf-8"))
    if hasattr(answer, "status_code"):
        return answer.status_code, {}, answer.get_data()
    return 200, {}, json.dumps(answer).encode()


def public(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource as Azure shows it: without the fake's own bookkeeping (keys starting with _)."""
    return {k: v for k, v in resource.items() if not k.startswith("_")}


# Where the SDKs read the clock or sleep: polling loops (azureml-core sleeps 5 s per poll, with no knob), retry
# back-off (azureml-core's ClientBase waits 32 s and more after a 429) and token expiry (azureml-core's token cache,
# azure-core's bearer policy, azure-identity and msal). In tests their `time` is the fake's clock: a sleep costs
# nothing and moves that clock on, so timeouts and token lifetimes still run their course, instantly.
SDK_CLOCKS = (
    "azureml.core.webservice.webservice",
    "azureml._restclient.clientbase",
    "azureml.core.authentication",
    "azureml._file_utils.file_utils",
    "azure.core.pipeline.policies._authentication",
    "azure.identity._internal.get_token_mixin",
    "msal.application",
    "msal.token_cache",
)


class _Clock:
    """A `time` module for one SDK module: time() and sleep() are the fake's, anything else the real one's."""

    def __init__(self, fake: FakeAzure) -> None:
        self.time = fake.now
        self.sleep = fake.sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def start(monkeypatch: Any, home: Path) -> Iterator[FakeAzure]:
    """The fake Azure for one test: credentials in the environment, the SDKs' clocks, and every `requests` call.

    `home` becomes $HOME, so no real az login, token cache or config of the machine is read or written.
    """
    import importlib

    fake = FakeAzure()
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    for name in ("MSI_ENDPOINT", "IDENTITY_ENDPOINT", "AZUREML_AUTH_CONFIG_DIR", "AZURE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    # a service principal for both SDKs: azureml-core reads AZUREML_*, azure-identity's EnvironmentCredential AZURE_*
    for prefix, names in (
        ("AZUREML_SERVICE_PRINCIPAL_", ("ID", "PASSWORD", "TENANT_ID")),
        ("AZURE_", ("CLIENT_ID", "CLIENT_SECRET", "TENANT_ID")),
    ):
        for name, value in zip(names, (CLIENT_ID, CLIENT_SECRET, TENANT)):
            monkeypatch.setenv(prefix + name, value)
    fake.config_file = home / "config.json"
    fake.config_file.write_text(
        json.dumps({"subscription_id": SUBSCRIPTION, "resource_group": RESOURCE_GROUP, "workspace_name": WORKSPACE}),
        encoding="utf-8",
    )
    try:  # azureml-core caches service discovery in ~/.azureml/.discovery, with ~ read when it was imported
        from azureml._base_sdk_common.service_discovery import CachedServiceDiscovery

        monkeypatch.setattr(CachedServiceDiscovery.__init__, "__defaults__", (str(home / ".azureml" / ".discovery"),))
    except ImportError:
        pass
    clock = _Clock(fake)
    for module in SDK_CLOCKS:
        try:
            monkeypatch.setattr(importlib.import_module(module), "time", clock)
        except ImportError:
            pass
    try:
        from azure.core.pipeline.transport._base import HttpTransport  # azure-core's LRO polling and retry waits

        monkeypatch.setattr(HttpTransport, "sleep", lambda self, seconds: fake.sleep(seconds))
    except ImportError:
        pass
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        try:
            yield fake
        finally:
            fake.stop()
    assert not fake.unmatched, f"requests the fake Azure does not know: {fake.unmatched}"
