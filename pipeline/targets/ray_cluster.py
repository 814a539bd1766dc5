"""A Ray cluster as the ray target sees it: the dashboard's REST API, and a local single-node cluster stopped by PID."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import http, interrupts
from pipeline.errors import StateError, TargetError
from pipeline.files import atomic_write

if TYPE_CHECKING:
    from pipeline.console import Console

APPS_PATH = "/api/serve/applications/"
HEAD_LOG = "ray-head.log"
CLUSTER_FILE = "cluster.json"  # service_dir/cluster.json: the last cluster started, written before anything waits
# AF_UNIX socket paths are at most 107 bytes; Ray puts its sockets at
# <temp-dir>/session_<date>_<time>_<micros>_<pid>/sockets/plasma_store (about 64 bytes after the temp dir).
SOCKET_SUFFIX = 66
OBJECT_STORE_BYTES = 256 * 1024 * 1024  # serving moves no objects; Ray's default reserves 30% of the RAM
DETAILS_LIMIT = 1 << 25  # Serve's instance details grow with the applications and replicas of a shared cluster


@dataclass(frozen=True)
class Cluster:
    """A Ray cluster as a service record keeps it: one elsewhere by its dashboard, or a local one the service owns."""

    dashboard: str  # http://host:port of the dashboard, Serve's REST API
    owned: bool = False  # started by this service: stopped by delete, by PID
    head_pid: int = 0  # the `ray start --block` process, leader of the session every Ray process of it stays in
    temp_dir: str = ""
    alias: str | None = None  # a short /tmp symlink to temp_dir, when its socket paths would be too long
    ports: Mapping[str, int] = field(default_factory=dict)
    log: str | None = None
    started_in_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ports": dict(self.ports)}

    @classmethod
    def of(cls, data: Any) -> Cluster:
        """Read a cluster back from a record or cluster.json, checking its types; damage is a StateError."""
        if not isinstance(data, Mapping) or not isinstance(data.get("dashboard"), str):
            raise StateError(f"the ray cluster record is damaged: {data!r:.200}")
        kinds: dict[str, tuple[type, ...]] = {
            "owned": (bool,),
            "head_pid": (int,),
            "temp_dir": (str,),
            "alias": (str, type(None)),
            "ports": (dict,),
            "log": (str, type(None)),
            "started_in_s": (int, float, type(None)),
        }
        values: dict[str, Any] = {"dashboard": data["dashboard"]}
        for key, kind in kinds.items():
            if key in data:
                value = data[key]
                if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kind):
                    raise StateError(f"the ray cluster record is damaged: {key} is {value!r}")
                values[key] = value
        if not all(isinstance(p, int) for p in values.get("ports", {}).values()):
            raise StateError(f"the ray cluster record is damaged: ports are {values['ports']!r}")
        return cls(**values)

    @property
    def serve_port(self) -> int | None:
        return self.ports.get("serve_http")


class Rest:
    """The Ray dashboard's HTTP API: Serve's declarative config (PUT/GET /api/serve/applications/),
    runtime-env packages (/api/packages/gcs/) and replica logs (/api/v0/logs/file)."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address = address.rstrip("/")
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float | None = None,
        limit: int = DETAILS_LIMIT,
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type} if body is not None else {}
        try:
            reply = http.send(method, self.address + path, body, headers, timeout or self.timeout, limit=limit)
        except OSError as exc:  # URLError, a refused connection, a timeout
            reason = getattr(exc, "reason", exc)
            raise TargetError(f"cannot reach the Ray dashboard at {self.address} ({reason})") from None
        return reply.status, reply.body

    def _ok(self, what: str, answer: tuple[int, bytes]) -> bytes:
        status, body = answer
        if status != 200:
            text = " ".join(body.decode("utf-8", "replace").split())
            raise TargetError(f"{what}: the Ray dashboard at {self.address} answered {status}: {text[:600]}")
        return body

    def details(self) -> dict[str, Any]:
        """Serve's instance details: proxies, http_options and every application with its replicas."""
        body = self._ok("reading Serve's applications", self.call("GET", APPS_PATH))
        try:
            return dict(json.loads(body))
        except ValueError:
            raise TargetError(f"the Ray dashboard at {self.address} answered {APPS_PATH} with no JSON") from None

    def put(self, config: Mapping[str, Any]) -> None:
        """A declarative update of every application on the cluster (Serve rolls replicas itself)."""
        self._ok("deploying the Serve config", self.call("PUT", APPS_PATH, json.dumps(config).encode(), timeout=60))

    def shutdown(self) -> None:
        """Serve's controller, proxies and every application go (serve.shutdown())."""
        self.call("DELETE", APPS_PATH, timeout=15)

    def upload(self, folder: Path) -> str:
        """The folder as a runtime-env package in the cluster's GCS (as `ray job submit` does); its gcs:// URI."""
        from ray._private.runtime_env.packaging import create_package, get_uri_for_directory
        from ray.dashboard.modules.job.common import uri_to_http_components

        logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)  # no INFO lines on our stderr
        uri: str = get_uri_for_directory(str(folder), include_gitignore=False)
        protocol, name = uri_to_http_components(uri)
        if self.call("GET", f"/api/packages/{protocol}/{name}")[0] == 200:
            return uri  # content-addressed: the same files are already there
        package = folder.parent / name
        try:
            create_package(str(folder), package, include_gitignore=False)
            self._ok(
                f"uploading {folder}",
                self.call(
                    "PUT",
                    f"/api/packages/{protocol}/{name}",
                    package.read_bytes(),
                    content_type="application/octet-stream",
                    timeout=300,
                ),
            )
        finally:
            package.unlink(missing_ok=True)
        return uri

    def log(self, node_id: str, filename: str, lines: int) -> str:
        query = urllib.parse.urlencode({"node_id": node_id, "filename": filename.lstrip("/"), "lines": lines})
        try:
            status, body = self.call("GET", f"/api/v0/logs/file?{query}")
        except TargetError as exc:
            return f"(cannot read {filename}: {exc})"
        if status != 200:
            return f"(cannot read {filename}: the dashboard answered {status})"
        return body.decode("utf-8", "replace")


# -- a local single-node cluster, owned by one service -------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def temp_dir(service_dir: Path) -> tuple[Path, Path | None]:
    """Ray's --temp-dir: the service folder's ray/ when its socket paths fit, else a short alias of it in /tmp."""
    real = service_dir.resolve() / "ray"
    real.mkdir(parents=True, exist_ok=True)
    if len(str(real)) + SOCKET_SUFFIX <= 107:
        return real, None
    alias = Path("/tmp") / f"pipeline-ray-{hashlib.sha256(str(real).encode()).hexdigest()[:12]}"
    if alias.is_symlink() and Path(os.readlink(alias)) != real:
        alias.unlink()
    if not alias.is_symlink():
        alias.symlink_to(real, target_is_directory=True)
    return alias, alias


def start(service_dir: Path, console: Console, timeout_s: float) -> Cluster:
    """`ray start --head --block` on 127.0.0.1 with free ports; the cluster record, once its dashboard answers."""
    temp, alias = temp_dir(service_dir)
    ports = {
        "dashboard": free_port(),
        "client_server": free_port(),
        "dashboard_agent": free_port(),
        "serve_http": free_port(),
    }
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--port=0",
        f"--dashboard-port={ports['dashboard']}",
        f"--ray-client-server-port={ports['client_server']}",
        f"--dashboard-agent-listen-port={ports['dashboard_agent']}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--include-log-monitor=false",
        f"--temp-dir={temp}",
    ]
    # no usage reports; and on SIGTERM drain for 2 s, not Ray's 30: delete removes the application first
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2"}
    log_path = service_dir / HEAD_LOG
    process: subprocess.Popen[bytes] | None = None
    cluster = Cluster(
        dashboard=f"http://127.0.0.1:{ports['dashboard']}",
        owned=True,
        temp_dir=str(temp),
        alias=str(alias) if alias else None,
        ports=ports,
        log=str(log_path),
    )
    try:
        with interrupts.held():  # Ctrl-C or SIGTERM while the head starts is raised once it is recorded
            with open(log_path, "ab") as log:
                log.write(f"--- ray start at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ---\n".encode())
                log.flush()
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=service_dir,
                    env=env,
                    start_new_session=True,
                )
            cluster = replace(cluster, head_pid=process.pid)
            atomic_write(service_dir / CLUSTER_FILE, json.dumps(cluster.to_dict(), indent=2).encode())
        return replace(cluster, started_in_s=_wait_dashboard(process, cluster, console, timeout_s))
    except BaseException:
        if process is not None:
            stop(cluster)  # a failed or interrupted start leaves no process behind
        raise


def recorded(service_dir: Path) -> Cluster | None:
    """The last cluster a deploy started for this service (cluster.json), even one whose deploy never finished."""
    try:
        return Cluster.of(json.loads((service_dir / CLUSTER_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, StateError):
        return None


def _wait_dashboard(process: subprocess.Popen[bytes], cluster: Cluster, console: Console, timeout_s: float) -> float:
    """Seconds until the new head's dashboard answered; a head that exits or never answers is an error."""
    rest = Rest(cluster.dashboard, timeout=2)
    started = time.monotonic()
    while True:
        code = process.poll()
        if code is not None:
            raise TargetError(
                f"`ray start` exited with code {code} before its dashboard answered; "
                f"last lines of {cluster.log}:\n{_tail(Path(str(cluster.log)), 15)}"
            )
        try:
            if rest.call("GET", "/api/ray/version")[0] == 200:
                return round(time.monotonic() - started, 2)
        except TargetError:
            pass
        if time.monotonic() - started > timeout_s:
            raise TargetError(
                f"the local Ray cluster's dashboard did not answer within {timeout_s} s "
                f"(deploy.ready_timeout_s); see {cluster.log}"
            )
        console.progress(f"deploy: starting a local Ray cluster ({time.monotonic() - started:.1f} s)")
        time.sleep(0.2)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, from /proc/<pid>/stat; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def head_alive(cluster: Cluster) -> bool:
    """The recorded `ray start` process runs, and is ours (a reused PID would not name our temp dir)."""
    pid = cluster.head_pid
    stat = _stat(pid) if pid > 0 else None
    return stat is not None and stat[0] != "Z" and bool(cluster.temp_dir) and cluster.temp_dir.encode() in _cmdline(pid)


def processes(cluster: Cluster) -> list[int]:
    """Every live process of the cluster: Ray's own processes all stay in the session `ray start` leads,
    although actors (Serve's controller, proxy and replicas) each get a process group of their own."""
    session = cluster.head_pid
    if session <= 0 or not cluster.owned:
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[1] != session or stat[0] == "Z":
            continue
        cmdline = _cmdline(int(entry.name))
        # the session id alone could be a stranger's after PID reuse: it must also look like Ray's
        if (
            (cluster.temp_dir and cluster.temp_dir.encode() in cmdline)
            or cmdline.startswith((b"ray::", b"ray-dashboard-"))
            or b"/site-packages/ray/" in cmdline
            or b"ray.scripts.scripts" in cmdline
        ):
            out.append(int(entry.name))
    return out


def pid_alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def stop(cluster: Cluster, grace_s: float = 20.0) -> str:
    """SIGTERM the `ray start --block` process (it drains the node and stops what it started), wait, then
    SIGKILL whatever of the session is left, by PID. Never `ray stop`: that kills every Ray on the machine."""
    pid = cluster.head_pid
    before = processes(cluster)
    if head_alive(cluster):
        try:  # Serve's controller and proxies first (serve.shutdown()), so the node drains at once
            Rest(cluster.dashboard, timeout=15).shutdown()
        except TargetError:
            pass
        _signal(pid, signal.SIGTERM)
        _wait(lambda: not pid_alive(pid), grace_s, pid)
    left = processes(cluster)
    for other in left:
        _signal(other, signal.SIGKILL)
    _wait(lambda: not processes(cluster), 10.0, None)
    if cluster.alias and Path(cluster.alias).is_symlink():
        Path(cluster.alias).unlink()
    if not before:
        return f"the local Ray cluster (head pid {pid}) was not running"
    forced = (
        (
            f"; {len(left)} {'process' if len(left) == 1 else 'processes'} still running after the head exited "
            f"{'was' if len(left) == 1 else 'were'} killed"
        )
        if left
        else ""
    )
    return f"stopped the local Ray cluster (head pid {pid}, {len(before)} processes){forced}"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(done: Callable[[], bool], timeout: float, child: int | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None:
            try:
                os.waitpid(child, os.WNOHANG)  # reap it when it is our own child
            except ChildProcessError:
                pass
        if done():
            return True
        time.sleep(0.1)
    return done()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "  | (no log)"
    return "\n".join("  | " + line for line in text.splitlines()[-lines:]) or "  | (the log is empty)"
