"""One worker process: import score.py, run init() once, then serve on its own SO_REUSEPORT socket."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING

from pipeline.errors import TargetError
from pipeline.serve.config import ServeConfig
from pipeline.serve.ipc import (
    CONFIG_ENV,
    PORT_ENV,
    READY_FD_ENV,
    STAGING_PORT_ENV,
    SUPERVISOR_ENV,
    bind,
    die_with_parent,
    report,
)
from pipeline.serve.logs import setup_logging

if TYPE_CHECKING:
    from pipeline.serve.app import ScoringApp

# gunicorn's "boot error" code, which Azure's server also uses when init() fails.
EXIT_INIT_FAILED = 3

log = logging.getLogger("pipeline.serve")


def read_keys(path: str | None) -> list[str]:
    """The accepted keys; the messages name the file, never a key."""
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot read keys file {path}: {type(exc).__name__}") from None
    found = [data.get(name) for name in ("primary", "secondary")] if isinstance(data, dict) else []
    keys = [key for key in found if isinstance(key, str) and key]
    if not keys:
        raise TargetError(f"keys file {path} has no 'primary' or 'secondary' key")
    return keys


def main() -> int:
    setup_logging()
    if not die_with_parent(int(os.environ[SUPERVISOR_ENV])):
        return 1
    config = ServeConfig.from_dict(json.loads(os.environ[CONFIG_ENV]))
    port = int(os.environ[PORT_ENV])
    staging_port = int(os.environ[STAGING_PORT_ENV]) if os.environ.get(STAGING_PORT_ENV) else None
    ready_fd = int(os.environ[READY_FD_ENV])
    app_root = config.resolved_app_root
    os.environ["AZUREML_MODEL_DIR"] = config.model_dir
    os.environ["AML_APP_ROOT"] = app_root
    os.environ["AZUREML_ENTRY_SCRIPT"] = config.entry_script
    sys.path.insert(0, app_root)

    # Imported here, after the environment is set, so score.py and its imports see it.
    from pipeline.serve.app import ScoringApp
    from pipeline.serve.script import install_alarm, load_script

    step = "startup"
    try:
        keys = read_keys(config.keys_file)
        step = "import"
        script = load_script(config.entry_script)
        step = "init()"
        log.info("worker %d: running init() of %s", os.getpid(), config.entry_script)
        script.init()
        step = "listen"
        # The service's port, in its SO_REUSEPORT group; a staged version listens there only when told, and
        # until then serves on its own staging port, where the new version is tested alone.
        sock = bind(config.host, port)
        staging = None
        if staging_port is None:
            sock.listen(2048)
        else:
            staging = bind(config.host, staging_port)
            staging.listen(2048)
    except BaseException as exc:  # noqa: BLE001  whatever score.py raises, the supervisor must hear why
        if isinstance(exc, TargetError):
            log.error("worker %d: %s", os.getpid(), exc)
        else:
            log.error(
                "worker %d: %s of %s failed:\n%s",
                os.getpid(),
                step,
                config.entry_script,
                traceback.format_exc().rstrip(),
            )
        report(ready_fd, "failed", f"{step} failed: {type(exc).__name__}: {exc}")
        return EXIT_INIT_FAILED
    install_alarm()
    from pipeline.serve.access import AccessLog
    from pipeline.serve.budget import body_limit, rss_mb

    max_body = body_limit(config.max_body_bytes, config.memory_limit_mb, config.workers, rss_mb(), rss_mb(os.getppid()))
    app = ScoringApp(
        script,
        request_timeout_ms=config.request_timeout_ms,
        max_body_bytes=max_body,
        keys=keys,
        swagger=config.swagger,
        features=config.features,
        access_log=AccessLog(config.access_log, config.access_log_max_bytes) if config.access_log else None,
    )
    mode = "micro-batching (parse_rows/predict_rows)" if script.batching else "run() per request"
    where = f"staging port {staging_port}" if staging is not None else f"{config.host}:{port}"
    log.info("worker %d: ready on %s, %s; bodies up to %d bytes", os.getpid(), where, mode, max_body)
    from pipeline.serve.rolling import hold_early_signals

    hold_early_signals()  # the supervisor may signal as soon as it reads the report below
    report(ready_fd, "ready", "" if staging is not None else "live")
    return _serve(app, sock, staging, config, ready_fd)


def _serve(
    app: ScoringApp, sock: socket.socket, staging: socket.socket | None, config: ServeConfig, ready_fd: int
) -> int:
    import uvicorn

    from pipeline.serve.guard import Guard, connection_cap, nofile_limit
    from pipeline.serve.rolling import RollingServer

    cap = connection_cap(config.max_connections, nofile_limit())
    if cap < config.max_connections:
        log.warning(
            "worker %d: at most %d open connections (the open-file limit), not %d",
            os.getpid(),
            cap,
            config.max_connections,
        )

    def count(counts: dict[str, int]) -> None:  # to the supervisor, which keeps them in the events file
        report(ready_fd, "count", " ".join(f"{kind}={n}" for kind, n in counts.items()))

    guard = Guard(
        header_timeout_s=config.header_timeout_s,
        body_timeout_s=config.body_timeout_s,
        max_connections=cap,
        report=count,
    )
    if app.batcher is not None:
        guard.direct = app  # POST /score served in the protocol's callbacks (pipeline.serve.app.Direct)
    server = RollingServer(
        sock,
        ready_fd,
        config.request_timeout_ms / 1000,
        uvicorn.Config(
            app,
            loop="uvloop",
            http=guard.protocol(),
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            server_header=False,
            proxy_headers=False,  # on 127.0.0.1 no proxy speaks for the client: no X-Forwarded-For rewriting
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  # a float: loop.call_later's
            # In-flight requests get their own timeout plus a margin to finish on SIGTERM.
            timeout_graceful_shutdown=config.request_timeout_ms // 1000 + 5,
            backlog=2048,
        ),
    )

    # Until uvicorn installs its own handlers, a SIGTERM (the supervisor died: PR_SET_PDEATHSIG) must
    # still stop the server; afterwards uvicorn re-raises the signal that stopped it, and this handler
    # makes that a clean exit 0. A no-op here would swallow a SIGTERM that comes during start-up.
    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    try:
        server.run(sockets=[sock] if staging is None else [staging])
    finally:
        if app.access_log is not None:
            app.access_log.close()
    log.info("worker %d: stopped", os.getpid())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
