"""A test-only target: the rendered score.py served from a thread of this process, over real HTTP on 127.0.0.1.

It exists to show that a target is one module, its templates and one line in TARGETS: the conformance
suite registers it and runs validate, plan, run and delete on it without any other file knowing of it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from pipeline import http
from pipeline.render import render_template
from pipeline.spec import Spec
from pipeline.targets import keys
from pipeline.targets.base import (
    AddProblem,
    Auth,
    BaseTarget,
    Capabilities,
    DeployRequest,
    Live,
    Rollout,
    ServiceRecord,
)

SERVERS: dict[int, ThreadingHTTPServer] = {}  # port -> the server deployed there, in this process


class ThreadedTarget(BaseTarget):
    name: ClassVar[str] = "threaded"
    summary: ClassVar[str] = "a test-only target: score.py served from a thread"
    settings_key: ClassVar[str] = "threaded"
    settings_schema: ClassVar[Mapping[str, Any]] = {
        "description": "Settings of the test-only threaded target.",
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {"greeting": {"description": "What GET / answers.", "type": "string", "default": "Healthy"}},
    }
    capabilities: ClassVar[Capabilities] = Capabilities(
        probe_unrecorded=False, rollout=Rollout.STOP_START, auth=frozenset({Auth.KEY})
    )
    template_dir: ClassVar[Path | None] = Path(__file__).parent / "templates"

    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        if not data["deploy"]["threaded"]["greeting"].strip():
            add(("deploy", "threaded", "greeting"), "must not be blank")

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        values = {**values, "threaded": dict(spec.deploy.settings())}
        return {"threaded.json": render_template(env, "threaded/threaded.json.j2", values)}

    def deploy(self, request: DeployRequest) -> ServiceRecord:
        if request.previous is not None:
            self.delete(request.previous, request.service_dir)
        settings = json.loads((request.build_dir / "threaded.json").read_text())
        score = _load(request.build_dir / "score.py", request.model_dir)
        key = None
        if request.spec.deploy.auth:
            keys.ensure(request.service_dir, True)
            key = keys.read_primary(request.service_dir)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(score, settings["greeting"], key))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        SERVERS[port] = server
        base = f"http://127.0.0.1:{port}"
        return ServiceRecord(self.name, f"{base}/score", request.spec.deploy.auth, extra={"port": port, "health": base})

    def probe(self, record: ServiceRecord | None, spec: Spec | None = None) -> Live:
        if record is None:
            return Live(False, False, "a threaded service is only known by its record")
        if record.extra.get("port") not in SERVERS:
            return Live(True, False, f"no server runs on port {record.extra.get('port')}")
        reply = http.get(record.extra["health"] + "/", timeout=2)
        return Live(True, reply.status == 200, f"answered {reply.body[:20]!r} at {record.scoring_uri}")

    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        server = SERVERS.pop(record.extra.get("port"), None)
        if server is None:
            return f"no server was running on port {record.extra.get('port')}"
        server.shutdown()
        server.server_close()
        keys.remove(service_dir)
        return f"stopped the server on port {record.extra['port']}"

    def logs(self, record: ServiceRecord, service_dir: Path, *, tail: int) -> str:
        return f"threaded service on port {record.extra.get('port')}: no log kept"


def _load(path: Path, model_dir: Path) -> Any:
    """Import score.py under a name of its own and run init() with AZUREML_MODEL_DIR set, as Azure does."""
    spec = importlib.util.spec_from_file_location(f"threaded_score_{id(path)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = os.environ.get("AZUREML_MODEL_DIR")
    os.environ["AZUREML_MODEL_DIR"] = str(model_dir)
    try:
        module.init()
    finally:
        if before is None:
            os.environ.pop("AZUREML_MODEL_DIR", None)
        else:
            os.environ["AZUREML_MODEL_DIR"] = before
    return module


def _handler(score: Any, greeting: str, key: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._answer(200, greeting.encode(), "text/plain")

        def do_POST(self) -> None:
            if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
                self._answer(401, b'{"error": "missing or wrong key"}')
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            out = score.run(body)
            if hasattr(out, "get_data"):
                self._answer(out.status_code, out.get_data())
            else:
                self._answer(200, json.dumps(out).encode())

        def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
