"""The user's score.py inside a worker: load it, time-box its calls, turn its answers into HTTP bodies."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal in C: its getsignal() returns the handler as is
import importlib.util
import inspect
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

import orjson

from pipeline import contract
from pipeline.errors import TargetError

JSON_TYPE = b"application/json"


class RunTimeout(BaseException):
    """Raised into run()/predict_rows() by the alarm; a BaseException, so user code's `except Exception` misses it."""


@dataclass(frozen=True)
class ScoringScript:
    """The entry points found in score.py; parse_rows and predict_rows only when both exist."""

    module: ModuleType
    init: Callable[[], Any]
    run: Callable[..., Any]
    run_takes_headers: bool
    parse_rows: Callable[[bytes], Any] | None
    predict_rows: Callable[[Any], list[Any]] | None
    batch_rows: bool = True  # score.py's BATCH_ROWS: may rows of concurrent requests share one predict_rows() call

    @property
    def batching(self) -> bool:
        return self.parse_rows is not None and self.predict_rows is not None


def load_script(path: str) -> ScoringScript:
    """Import score.py from its path, as Azure's server does; its directory is already on sys.path."""
    spec = importlib.util.spec_from_file_location("score", path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot import entry script {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before exec so pickles and dataclasses that look up their module by name work.
    sys.modules["score"] = module
    spec.loader.exec_module(module)
    init, run = getattr(module, "init", None), getattr(module, "run", None)
    if not callable(init) or not callable(run):
        raise TargetError(f"entry script {path} must define init() and run(raw_data)")
    parse_rows, predict_rows = getattr(module, "parse_rows", None), getattr(module, "predict_rows", None)
    fast = callable(parse_rows) and callable(predict_rows)
    takes_headers = "request_headers" in inspect.signature(run).parameters
    return ScoringScript(
        module,
        init,
        run,
        takes_headers,
        parse_rows if fast else None,
        predict_rows if fast else None,
        bool(getattr(module, "BATCH_ROWS", True)),
    )


# --- time-boxing --------------------------------------------------------------------------
# run() is sync code called on the event-loop thread (a thread hop per request costs more
# than the whole 1-image HTTP stack).  Like Azure's server, an interval timer (SIGALRM)
# raises into it when it overruns; C code that never returns to Python is only stopped
# when it does.  The timer is not set and cleared around every call: one set for an earlier
# call that goes off no later than this call's deadline serves it too (when it goes off
# early, the handler sets it again for the time left), so under load it is set about once
# per timeout instead of twice per call.
_armed = False
_deadline = 0.0  # time.monotonic() at which the running call's time is up
_fires_at = 0.0  # when the timer goes off, if it is set (0: it is not)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    global _fires_at
    _fires_at = 0.0
    if not _armed:
        return
    left = _deadline - time.monotonic()
    if left > 0:  # set for an earlier call: this one still has time
        _fires_at = _deadline
        signal.setitimer(signal.ITIMER_REAL, left)
        return
    raise RunTimeout()


def install_alarm() -> None:
    """Once per worker, on the main thread (signals are delivered only there)."""
    signal.signal(signal.SIGALRM, _on_alarm)


def call_with_timeout(function: Callable[..., Any], timeout_s: float, *args: Any) -> Any:
    global _armed, _deadline, _fires_at
    now = time.monotonic()
    _deadline = deadline = now + max(timeout_s, 1e-4)
    # The timer is left set only while _on_alarm is the handler: under any other (the default one ends the
    # process) it is cleared after each call, as it always was.
    lasting = _signal.getsignal(signal.SIGALRM) is _on_alarm  # signal.getsignal() costs 7 us: it makes an enum
    if not lasting or _fires_at <= now or _fires_at > deadline:  # not set, gone off, or too late for this call
        _fires_at = deadline
        signal.setitimer(signal.ITIMER_REAL, deadline - now)
    _armed = True
    try:
        return function(*args)
    finally:
        _armed = False
        if not lasting:
            _fires_at = 0.0
            signal.setitimer(signal.ITIMER_REAL, 0)


# --- answers ------------------------------------------------------------------------------
def _default(value: Any) -> Any:
    for attribute in ("tolist", "item"):
        if hasattr(value, attribute):
            return getattr(value, attribute)()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """orjson (numpy arrays and scalars included), falling back to json for what orjson refuses."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return json.dumps(value, default=_default).encode()


def encode_output(value: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """run()'s return value as (status, body, headers); a str is JSON-encoded, as Azure's server does."""
    get_data = getattr(value, "get_data", None)
    status = getattr(value, "status_code", None)
    if callable(get_data) and isinstance(status, int):
        body = get_data()
        if isinstance(body, str):
            body = body.encode()
        headers: list[tuple[bytes, bytes]] = []
        content_type = None
        source = getattr(value, "headers", None)
        if source is not None and hasattr(source, "items"):
            for name, header_value in source.items():
                lowered = str(name).lower()
                # Framing headers are ours to set; the rest pass through (as Azure's does).
                if lowered in (
                    "content-length",
                    "connection",
                    "transfer-encoding",
                    "server",
                    "date",
                    "x-ms-run-function-failed",
                ):
                    continue
                if lowered == "content-type":
                    content_type = str(header_value).encode("latin-1")
                    continue
                headers.append((lowered.encode("latin-1"), str(header_value).encode("latin-1")))
        headers.append((b"content-type", content_type or JSON_TYPE))
        return status, bytes(body), headers
    return 200, dumps(value), [(b"content-type", JSON_TYPE)]


def describe_bad_input(body: bytes, exc: BaseException, features: int | None = None) -> str | None:
    """Why a body that made run() raise is the client's fault, or None when it may be the script's.

    Only called after run() failed, so the success path pays nothing.  Bodies that are not
    UTF-8 JSON are always the client's; a ValueError/KeyError/TypeError/IndexError on a body
    that is not `{"data": [[numbers...], ...]}` with equal-length rows of finite numbers is
    too.  Anything else stays a 500: the host can't tell a bug from bad data.  The words are
    the rendered score.py's own (pipeline.contract), so a client sees one contract.
    """
    # the exception first: an AttributeError (say) is the script's bug whatever the body looks like
    if not isinstance(exc, (ValueError, KeyError, TypeError, IndexError)):
        return None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"body is not UTF-8: {error}"
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        if not isinstance(exc, ValueError):  # json.loads fails with ValueError; a KeyError is the script's own
            return None
        return contract.body_problem(body, features, orjson.loads)
    return contract.rows_problem(document, features)
