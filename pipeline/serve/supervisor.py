"""The supervisor: starts the workers, replaces the dead, enforces the memory limit, writes the ready file."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil

from pipeline.errors import PipelineError, TargetError
from pipeline.serve.config import ServeConfig
from pipeline.serve.events import EventLog, write_json_atomic
from pipeline.serve.ipc import (
    CONFIG_ENV,
    PORT_ENV,
    READY_FD_ENV,
    STAGING_PORT_ENV,
    SUPERVISOR_ENV,
    claim_port,
    join_port,
)
from pipeline.serve.logs import setup_logging

POLL_S = 0.2
# A process tree's children are rescanned this often (it walks /proc); RSS itself every poll.
CHILD_SCAN_S = 2.0
MAX_BACKOFF_S = 30.0
# A worker that dies (or is killed for memory) sooner than this after it became ready counts as a failed
# start for the back-off: replacing it in a tight loop would drop requests forever.
STABLE_S = 10.0
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

log = setup_logging()


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    ready: bool = False
    ready_at: float = 0.0
    live: bool = False  # serving on the service's port (not only on the staging port)
    told_live: bool = False  # sent SIGUSR1, waiting for its "live" report
    killed_for_memory: bool = False
    children: list[psutil.Process] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Owns `workers` worker processes for the life of the service; single-threaded, polled."""

    def __init__(self, config: ServeConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.workers: list[Worker] = []
        self.events = EventLog(config.resolved_events_file)
        self.started = False
        self.failures = 0  # replacements in a row that died before they were ready
        self.next_spawn = 0.0
        self.port = 0
        self.staging_port: int | None = None  # while staged: where the new version is tested alone
        self.live = not config.staged  # the workers serve on the service's port
        self.go_live = threading.Event()  # SIGUSR1: leave the staging port for the service's port
        self.drain = threading.Event()  # SIGUSR2: a newer version took over; finish in-flight requests, exit
        self._drain_sent = False
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        self._buffer = b""
        self._published: tuple[list[int], bool] | None = None

    def run(self) -> int:
        # Held for the whole life of the service, so the port stays ours while a worker is replaced; a
        # rolling update shares it with the version it replaces.
        claim = join_port if self.config.join else claim_port
        reservation = claim(self.config.host, self.config.port)
        self.port = reservation.getsockname()[1]
        staging = claim_port(self.config.host, 0) if self.config.staged else None
        self.staging_port = staging.getsockname()[1] if staging else None
        try:
            where = f"staging port {self.staging_port}, then {self.port}" if staging else str(self.port)
            log.info(
                "supervisor %d: starting %d worker(s) for %s on %s:%s",
                os.getpid(),
                self.config.workers,
                self.config.entry_script,
                self.config.host,
                where,
            )
            self.events.write()
            for _ in range(self.config.workers):
                self._spawn()
            last_children_scan = 0.0
            while not self.stop.is_set():
                readable, _, _ = select.select([self._ready_r], [], [], POLL_S)
                if readable:
                    self._read_reports()
                self._reap()
                if self.drain.is_set():
                    if self._drained():
                        log.info("supervisor %d: drained: every worker finished its requests", os.getpid())
                        return 0
                    continue
                if self.go_live.is_set() and self.started:
                    self._go_live()
                now = time.monotonic()
                if self.started and len(self.workers) < self.config.workers and now >= self.next_spawn:
                    self._spawn()
                if self.config.memory_limit_mb is not None:
                    if now - last_children_scan >= CHILD_SCAN_S:
                        self._scan_children()
                        last_children_scan = now
                    self._enforce_memory()
                self._publish()
            log.info("supervisor %d: stopping: letting in-flight requests finish", os.getpid())
            return 0
        finally:
            self._shutdown()
            reservation.close()
            if staging is not None:
                staging.close()
            os.close(self._ready_r)
            os.close(self._ready_w)

    # --- rolling updates -------------------------------------------------------------------
    def _go_live(self) -> None:
        """Tell every ready worker still on the staging port to serve on the service's port too."""
        for worker in self.workers:
            if worker.ready and not worker.live and not worker.told_live:
                worker.told_live = True
                _signal(worker, signal.SIGUSR1)
        if not self.live and self.workers and all(w.live for w in self.workers if not w.killed_for_memory):
            self.live = True
            log.info(
                "supervisor %d: live: %d worker(s) on http://%s:%d/score",
                os.getpid(),
                len(self.workers),
                self.config.host,
                self.port,
            )

    def _drained(self) -> bool:
        """Workers stop accepting, answer what they hold (with Connection: close), then exit; none is replaced."""
        if not self._drain_sent:
            self._drain_sent = True
            log.info("supervisor %d: draining: a newer version serves the port", os.getpid())
            for worker in self.workers:
                _signal(worker, signal.SIGUSR2)
        return not self.workers

    # --- workers ---------------------------------------------------------------------------
    def _spawn(self) -> None:
        env = dict(os.environ)
        env[CONFIG_ENV] = self.config.to_json()
        env[PORT_ENV] = str(self.port)
        if self.staging_port is not None and not self.go_live.is_set():
            env[STAGING_PORT_ENV] = str(self.staging_port)  # a replacement after go-live starts on the port
        else:
            env.pop(STAGING_PORT_ENV, None)
        env[READY_FD_ENV] = str(self._ready_w)
        env[SUPERVISOR_ENV] = str(os.getpid())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
        # One worker per core: BLAS threads inside each would only fight over the same cores.
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, "1")
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve.worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=_stderr_fd(),  # print() in score.py lands in the service log, as on Azure
            pass_fds=(self._ready_w,),
        )
        self.workers.append(Worker(process))
        self.events.record("worker_started", pid=process.pid)

    def _read_reports(self) -> None:
        try:
            self._buffer += os.read(self._ready_r, 65536)
        except BlockingIOError:
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            kind, _, rest = line.decode(errors="replace").partition(" ")
            pid_text, _, reason = rest.partition(" ")
            worker = next((w for w in self.workers if str(w.pid) == pid_text), None)
            if worker is None:
                continue
            if kind == "ready":
                worker.ready = True
                worker.ready_at = time.monotonic()
                worker.live = self.staging_port is None or reason.strip() == "live"
            elif kind == "live":
                worker.live = True
            elif kind == "count":  # what the worker's guard did to slow or abusive clients, since its last report
                for item in reason.split():
                    name, _, number = item.partition("=")
                    if name and number.isdigit():
                        self.events.record(name, count=int(number), pid=worker.pid)
            elif kind == "failed" and not self.started:
                raise TargetError(f"worker {pid_text} failed to start: {reason}")

    def _reap(self) -> None:
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is None:
                continue
            self.workers.remove(worker)
            if self.drain.is_set():
                continue  # a drained worker exits when it is done: nothing to replace
            if not self.started:  # any worker lost before the whole service is up is a failed start
                raise TargetError(
                    f"worker {worker.pid} exited with code {code} before the service was ready; see the log above"
                )
            if worker.ready and time.monotonic() - worker.ready_at >= STABLE_S:
                self.failures = 0  # it served a while: the next replacement starts at once
            if not worker.ready or time.monotonic() - worker.ready_at < STABLE_S:
                # A replacement that can't start (or whose init() alone passes the memory limit)
                # is retried with backoff, not in a tight loop.
                self.failures += 1
                delay = min(MAX_BACKOFF_S, 2.0**self.failures)
                self.next_spawn = time.monotonic() + delay
                when = (
                    "before it was ready"
                    if not worker.ready
                    else f"{time.monotonic() - worker.ready_at:.1f} s after it became ready"
                )
                log.error("worker %d exited with code %s %s; retrying in %.0f s", worker.pid, code, when, delay)
            elif not worker.killed_for_memory:  # an out-of-memory kill was logged when it was made
                log.error("worker %d exited with code %s; replacing it", worker.pid, code)
            if not worker.killed_for_memory:
                self.events.record("worker_exited", pid=worker.pid, code=code)

    def _publish(self) -> None:
        """Write the ready file once every worker is up, and again whenever the workers or the phase change."""
        ready = sorted(w.pid for w in self.workers if w.ready and not w.killed_for_memory)
        if not self.started:
            if len(ready) < self.config.workers:
                return
            self.started = True
            where = self.staging_port if self.staging_port is not None and not self.live else self.port
            log.info(
                "supervisor %d: ready: %d worker(s) on http://%s:%d/score",
                os.getpid(),
                len(ready),
                self.config.host,
                where,
            )
        if (ready, self.live) == self._published:
            return
        self._published = (ready, self.live)
        if self.config.ready_file:
            host = "127.0.0.1" if self.config.host in ("0.0.0.0", "", "::") else self.config.host

            def base(port: int) -> str:
                return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"

            staging = base(self.staging_port) if self.staging_port is not None else None
            write_json_atomic(
                self.config.ready_file,
                {
                    "pid": os.getpid(),
                    "port": self.port,
                    "host": self.config.host,
                    "workers": ready,
                    "scoring_uri": f"{base(self.port)}/score",
                    "swagger_uri": f"{base(self.port)}/swagger.json",
                    "service_name": self.config.service_name,
                    "events_file": self.config.resolved_events_file,
                    "live": self.live,
                    "staging_port": self.staging_port,
                    "staging_uri": f"{staging}/score" if staging else None,
                    "drains": True,  # this supervisor drains on SIGUSR2 (an older one would die of it)
                },
            )

    # --- memory ----------------------------------------------------------------------------
    def _scan_children(self) -> None:
        for worker in self.workers:
            try:
                worker.children = psutil.Process(worker.pid).children(recursive=True)
            except psutil.Error:
                worker.children = []

    def _enforce_memory(self) -> None:
        """The limit is over the whole service (supervisor, workers and their children), like a container's."""
        limit_mb = self.config.memory_limit_mb
        assert limit_mb is not None
        total = _rss(psutil.Process())
        sizes: list[tuple[int, Worker]] = []
        for worker in self.workers:
            if worker.killed_for_memory:
                continue
            size = _rss(worker.process.pid) + sum(_rss(child) for child in worker.children)
            sizes.append((size, worker))
            total += size
        if total <= limit_mb * 2**20 or not sizes:
            return
        size, worker = max(sizes, key=lambda pair: pair[0])
        for victim in [*worker.children, worker.process]:
            try:
                victim.kill()
            except (psutil.Error, ProcessLookupError):
                pass
        worker.killed_for_memory = True
        used, over = size / 2**20, total / 2**20
        log.error(
            "out of memory: worker %d used %.0f MB (service total %.0f MB > limit %d MB); killed and replaced",
            worker.pid,
            used,
            over,
            limit_mb,
        )
        self.events.record(
            "out_of_memory", pid=worker.pid, rss_mb=round(used, 1), total_mb=round(over, 1), limit_mb=limit_mb
        )

    # --- stopping --------------------------------------------------------------------------
    def _shutdown(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.request_timeout_ms / 1000 + 10
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time; killing it", worker.pid)
                worker.process.kill()
                worker.process.wait()
        if self.config.ready_file and self._published is not None:
            try:
                os.unlink(self.config.ready_file)  # no ready file: nothing is serving
            except FileNotFoundError:
                pass
        self.events.write()
        log.info("supervisor %d: stopped", os.getpid())


def _signal(worker: Worker, sig: int) -> None:
    try:
        worker.process.send_signal(sig)
    except ProcessLookupError:
        pass


def _rss(process: int | psutil.Process) -> int:
    """Resident memory at its peak since the last poll, so that a spike between polls still counts.

    Linux keeps the high-water mark (VmHWM) and resets it when 5 is written to clear_refs; a container's
    limit sees every spike, and so must this. Elsewhere, the current RSS.
    """
    pid = process.pid if isinstance(process, psutil.Process) else process
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            peak = next((int(line.split()[1]) * 1024 for line in f if line.startswith(b"VmHWM:")), None)
        if peak is not None:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
            return peak
    except (OSError, ValueError):
        pass
    try:
        target = process if isinstance(process, psutil.Process) else psutil.Process(process)
        return int(target.memory_info().rss)
    except psutil.Error:
        return 0


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def serve(config: ServeConfig, stop: threading.Event | None = None) -> int:
    """Run the service in the foreground until SIGTERM/SIGINT (or `stop` is set); 0 after a clean stop."""
    supervisor = Supervisor(config, stop)
    if threading.current_thread() is not threading.main_thread():
        return supervisor.run()
    previous = {sig: signal.signal(sig, lambda *_: supervisor.stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: supervisor.go_live.set())
    previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, lambda *_: supervisor.drain.set())
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str]) -> int:
    """`python -m pipeline.serve CONFIG_JSON`: no traceback for an expected failure."""
    # the deploy that started us held SIGINT/SIGTERM while it did; a blocked mask is inherited
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2})
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m pipeline.serve CONFIG_JSON", file=sys.stderr)
        return 2
    try:
        return serve(ServeConfig.from_json(argv[0]))
    except PipelineError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except OSError as exc:  # e.g. the port is taken
        log.error("cannot start the scoring service: %s", exc)
        return 1
