"""The figures benchmarks/peers.py derives: which goals are not met, and how a py-spy profile is broken down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import peers, profile_worker

# py-spy's raw format (`record --format raw`), one line per distinct stack: frames outermost first, then samples
RAW = """\
process 7:"python -m pipeline.serve.worker";<module> (worker.py:194);main (worker.py:60);Runner.run (runners.py:118) 40
<module> (worker.py:194);GuardedProtocol.data_received (pipeline/serve/guard.py:197);ScoringApp.finish (app.py:143);\
parse_rows (score.py:80);rows_array (score.py:90) 30
<module> (worker.py:194);ScoringApp.finish (app.py:150);MicroBatcher.queue (batching.py:120);\
predict_rows (score.py:99) 10
<module> (worker.py:194);_Reply.set_result (app.py:503);ScoringApp._answer (app.py:194) 15
<module> (worker.py:194);GuardedProtocol.on_headers_complete (guard.py:210);ScoringApp._scan (app.py:272) 5
"""


def test_breakdown_shares_a_profile_by_what_each_stack_is_spent_on(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    shares = profile_worker.breakdown(raw)
    assert shares == {
        "the event loop's own time (waiting for sockets, mostly)": 0.40,
        "run()'s parse: parse_rows()": 0.30,
        "writing the answer (its send() call)": 0.15,
        "run()'s predict: predict_rows()": 0.10,
        "the rest of the host (HTTP parsing, checks, batching, headers, log)": 0.05,
    }
    # the process frame py-spy may put first is not a function: it is left out of the functions' table
    table = profile_worker.summarize(raw, 3)
    assert table.splitlines()[0] == "100 samples"
    assert "| 40.0% | `Runner.run (runners.py)` |" in table
    assert "| 100.0% | `<module> (worker.py)` |" in table
    assert "process 7" not in table


def _results(ours: dict[tuple[int, int], tuple[float, int]], ceiling_rps: float, run_ms: float) -> dict[str, Any]:
    """A peers.py run's figures: ours (req/s, p50 us) per cell, the ceiling and one peer at fixed figures."""
    cells: dict[str, Any] = {}
    for images, conns in peers.CELLS:
        rps, p50 = ours[images, conns]
        cells[f"ours {images} {conns}"] = {"rps": rps, "p50_us": p50}
        cells[f"ceiling {images} {conns}"] = {"rps": ceiling_rps, "p50_us": 100}
        cells[f"kserve {images} {conns}"] = {"rps": 1000.0, "p50_us": 900}
    parts = {"run": {1: run_ms, 30: run_ms}, "parse": {1: 0.04, 30: 0.6}, "predict": {1: 0.01, 30: 0.06, 64: 0.1}}
    return {"cells": cells, "parts_ms": [parts], "pss_mb": {"ours": {"idle": 200.0, "after_load": 201.0}}}


@pytest.mark.parametrize(
    ("slow", "unmet", "missed"),
    [
        (set(), [], 0),
        ({(1, 8)}, [(1, 8)], 1),  # under 2.5x the best peer
        ({(30, 32)}, [(30, 32)], 2),  # under 2.5x the peer and under 30% of the ceiling: profiled once
        ({(30, 1), (1, 1)}, [(1, 1), (30, 1)], 4),  # the peer ratio and the p50 of each, in the table's order
    ],
)
def test_goals_name_the_cells_of_the_goals_not_met(
    slow: set[tuple[int, int]], unmet: list[tuple[int, int]], missed: int
) -> None:
    # met: 3,000 req/s is 3x the peer and 75% of the ceiling, p50 0.15 ms is run() (0.1 ms) + 0.05; not met:
    # 1,000 req/s is 1x the peer and 25% of the ceiling, p50 0.4 ms is run() + 0.3
    ours = {cell: (1000.0, 400) if cell in slow else (3000.0, 150) for cell in peers.CELLS}
    lines, cells = peers.goals(_results(ours, 4000.0, 0.1), ["ours", "ceiling", "kserve"], {1: 0.1, 30: 0.1})
    assert cells == unmet
    assert sum("| NO |" in line for line in lines) == missed


def _with_bare_floor(
    ours: dict[tuple[int, int], tuple[float, int]], ceiling_rps: float, bare: dict[str, float]
) -> tuple[list[tuple[int, int]], str]:
    """goals() of a run with the bare floor at `bare` in every cell: the cells not met, and the one line not met."""
    results = _results(ours, ceiling_rps, 0.1)
    for images, conns in peers.CELLS:
        results["cells"][f"bare {images} {conns}"] = bare
    lines, cells = peers.goals(results, ["ours", "ceiling", "bare", "kserve"], {1: 0.1, 30: 0.1})
    (missed,) = [line for line in lines if "| NO |" in line]
    return cells, missed


def test_a_latency_goal_not_met_names_the_bare_floor_beside_the_round_trip() -> None:
    ours = {cell: (3000.0, 400 if cell == (1, 1) else 150) for cell in peers.CELLS}
    cells, missed = _with_bare_floor(ours, 4000.0, {"rps": 5000.0, "p50_us": 180})
    assert cells == [(1, 1)]
    assert missed.startswith("| 1 img, 1 conn: p50 within 0.1 ms of run() | +0.300 ms | NO |")
    # the ceiling's p50 (0.1 ms) and the bare floor's (0.18 ms, so run() + 0.08) beside ours
    assert "the bare round trip (the ceiling's p50) is 0.100 ms of it; this host's own path +0.200 ms" in missed
    assert "the bare floor (run()'s parts and one write, no HTTP library) is +0.080 ms" in missed


def test_a_ceiling_share_just_under_its_goal_is_not_shown_rounded_up_to_it() -> None:
    ours = dict.fromkeys(peers.CELLS, (3000.0, 150))
    ours[1, 32] = (2620.0, 150)  # 2.62x the peer, 59.5% of the ceiling: "60%" would read as met
    cells, missed = _with_bare_floor(ours, 4400.0, {"rps": 3400.0, "p50_us": 150})
    assert cells == [(1, 32)]
    assert missed.startswith("| 1 img, 32 conn: >= 60% of the ceiling | 59.5% | NO |")
    assert missed.endswith("; the bare floor reaches 77.3% |")
