"""The smoke stage's pieces on their own: seeded samples, the retry policy, answer comparison."""

from __future__ import annotations

import json
import urllib.error
from types import SimpleNamespace

import pytest

from pipeline.errors import StageFailed
from pipeline.stages import smoke
from pipeline.targets.base import Reply, ServiceRecord


def test_samples_are_the_same_every_run_and_differ_by_seed():
    first = smoke.sample_indices(1000, 30, 42)
    assert first == smoke.sample_indices(1000, 30, 42)
    assert len(set(first)) == 30 and all(0 <= i < 1000 for i in first)
    assert first != smoke.sample_indices(1000, 30, 43)


class FlakyTarget:
    """A target whose invoke fails at the network boundary `failures` times, then answers."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def invoke(self, record, body, *, timeout, service_dir):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return Reply(200, b"[1]", 0.001)


def _ctx(target):
    spec = SimpleNamespace(deploy=SimpleNamespace(request_timeout_ms=100))
    return SimpleNamespace(target=target, spec=spec, paths=SimpleNamespace(service=None))


def test_connection_errors_are_retried_with_a_bounded_back_off(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(smoke.time, "sleep", sleeps.append)
    target = FlakyTarget(3, ConnectionRefusedError(111, "Connection refused"))
    reply = smoke._invoke(_ctx(target), ServiceRecord("local", "http://127.0.0.1:9/score"), b"{}")
    assert reply.status == 200 and target.calls == 4
    assert sleeps == [0.2, 0.4, 0.8]


def test_a_service_that_never_answers_fails_cleanly_after_the_retries(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(smoke.time, "sleep", sleeps.append)
    target = FlakyTarget(99, urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")))
    with pytest.raises(StageFailed, match=r"cannot reach http://127.0.0.1:9/score: .*Connection refused"):
        smoke._invoke(_ctx(target), ServiceRecord("local", "http://127.0.0.1:9/score"), b"{}")
    assert target.calls == smoke.RETRIES + 1
    assert max(sleeps) <= 2.0 and sum(sleeps) < 10  # bounded


def test_a_timeout_is_not_retried(monkeypatch):
    monkeypatch.setattr(smoke.time, "sleep", lambda s: None)
    target = FlakyTarget(99, TimeoutError("timed out"))
    with pytest.raises(StageFailed, match="did not answer within the timeout"):
        smoke._invoke(_ctx(target), ServiceRecord("local", "http://127.0.0.1:9/score"), b"{}")
    assert target.calls == 1


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"[7, 2, 1]", [7, 2, 1]),
        (json.dumps("[7, 2, 1]").encode(), [7, 2, 1]),  # the tutorial's run() returns a JSON string
    ],
)
def test_answers_accept_both_shapes(body, expected):
    assert smoke._answers(Reply(200, body, 0.0), "uri") == expected


def test_answers_reject_errors_and_non_lists():
    with pytest.raises(StageFailed, match="answered HTTP 500: oops"):
        smoke._answers(Reply(500, b"oops", 0.0), "uri")
    with pytest.raises(StageFailed, match="not JSON"):
        smoke._answers(Reply(200, b"<html>", 0.0), "uri")
    with pytest.raises(StageFailed, match="answered dict"):
        smoke._answers(Reply(200, b'{"a": 1}', 0.0), "uri")


def test_probabilities_agree_within_1e_9_and_labels_exactly():
    assert smoke._same([0.1, 0.9], [0.1 + 5e-10, 0.9 - 5e-10], "probabilities")
    assert not smoke._same([0.1, 0.9], [0.1 + 2e-9, 0.9], "probabilities")
    assert not smoke._same([0.1], [0.1, 0.9], "probabilities")
    assert smoke._same(3, 3, "labels") and not smoke._same(3, "3", "labels")
