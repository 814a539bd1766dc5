"""The one HTTP client for talking to a deployed service: scoring POSTs and health GETs, standard library only."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from pipeline.records import Reply


def post(uri: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Reply:
    """POST JSON to a scoring URI; an HTTP error status is an answer, not an exception.

    Connection errors and timeouts propagate as urllib raises them: the smoke stage retries those.
    """
    request = urllib.request.Request(
        uri, data=body, headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
            return Reply(response.status, data, time.perf_counter() - start, dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), time.perf_counter() - start, dict(exc.headers or {}))


def get(uri: str, timeout: float, *, limit: int = 1 << 16) -> Reply:
    """GET a URI (a health route), reading at most `limit` bytes of the answer."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(uri, timeout=timeout) as response:
            return Reply(response.status, response.read(limit), time.perf_counter() - start, dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(limit), time.perf_counter() - start, dict(exc.headers or {}))


def send(
    method: str, uri: str, body: bytes | None, headers: Mapping[str, str], timeout: float, *, limit: int = 1 << 24
) -> Reply:
    """Any method (PUT, DELETE, ...) to a platform's control API, e.g. Ray's dashboard; an HTTP error is an answer.

    Connection errors and timeouts propagate as urllib raises them, as for post and get.
    """
    request = urllib.request.Request(uri, data=body, headers=dict(headers), method=method)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read(limit), time.perf_counter() - start, dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(limit), time.perf_counter() - start, dict(exc.headers or {}))
