"""pipeline.contract: the fast parse (simdjson, straight to float64) takes only what the general path would, and gives
the very same array; everything else falls through to the general path and its message."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from pipeline import contract

pytest.importorskip("simdjson")

ROW = [0.0] * 784
GOOD = {
    "floats": json.dumps({"data": [[i / 255 for i in range(784)], ROW]}).encode(),
    "ints": json.dumps({"data": [list(range(784))]}).encode(),
    "mixed and exponents": b'{"data": [[1E2, -0.0, -0, 2.5e-3' + b", 1" * 780 + b"]]}",
    "whitespace": b' {\n "data" : [ [ 0.5' + b" ,\t0" * 783 + b" ] ]\n} ",
    "another key first": b'{"id": 7, "data": [[0.25' + b", 1" * 783 + b"]]}",
    "big integers": b'{"data": [[123456789012345678' + b", 1" * 783 + b"]]}",
}
BAD = {
    "nested single": b'{"data": [[[0.5]' + b", 1" * 783 + b"]]}",
    "ragged": json.dumps({"data": [ROW + [1.0], ROW[:-1]]}).encode(),
    "a row that is a number": json.dumps({"data": [5, ROW]}).encode(),
    "a row that is an object": json.dumps({"data": [{"a": ROW}]}).encode(),
    "a boolean": json.dumps({"data": [[True, *ROW[1:]]]}).encode(),
    "a null": json.dumps({"data": [[None, *ROW[1:]]]}).encode(),
    "a string": json.dumps({"data": [["0.5", *ROW[1:]]]}).encode(),
    "NaN": b'{"data": [[NaN' + b", 0" * 783 + b"]]}",
    "too large": b'{"data": [[1e400' + b", 0" * 783 + b"]]}",
    "duplicate data": json.dumps({"data": [ROW]}).encode()[:-1] + b', "data": [[1]]}',
    "empty": b'{"data": []}',
    "not an object": json.dumps([ROW]).encode(),
    "trailing garbage": json.dumps({"data": [ROW]}).encode() + b" x",
    "wrong width": json.dumps({"data": [ROW[:12]]}).encode(),
}


def general(body: bytes) -> np.ndarray | None:
    """The general path alone (the fast path turned off)."""
    saved = contract._simdjson
    contract._simdjson = None
    try:
        return contract.parse_body(body, 784, orjson.loads)
    except contract.InputError:
        return None
    finally:
        contract._simdjson = saved


@pytest.mark.parametrize("case", sorted(GOOD))
def test_the_fast_path_gives_the_general_paths_array(case: str) -> None:
    fast = contract.rows_array(GOOD[case], 784)
    slow = general(GOOD[case])
    assert fast is not None and slow is not None
    assert fast.dtype == slow.dtype == np.float64 and fast.shape == slow.shape
    assert np.array_equal(fast, slow) and np.array_equal(np.signbit(fast), np.signbit(slow))


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_fast_path_leaves_anything_else_to_the_general_path(case: str) -> None:
    assert contract.rows_array(BAD[case], 784) is None
    with pytest.raises(contract.InputError):
        contract.parse_body(BAD[case], 784, orjson.loads)


def test_a_large_body_gets_a_parser_of_its_own_and_results_outlive_the_next_parse() -> None:
    big = json.dumps({"data": [[i % 7 / 7 for i in range(784)]] * 60}).encode()
    assert len(big) > contract._reuse_parser_below
    first = contract.rows_array(GOOD["floats"], 784)
    assert first is not None
    kept = first.copy()
    assert contract.rows_array(big, 784).shape == (60, 784)  # type: ignore[union-attr]
    assert contract.rows_array(GOOD["ints"], 784) is not None  # the thread's parser, reused
    assert np.array_equal(first, kept)  # an earlier answer is its own memory, not the parser's


ROWS = [[(i * 7 + j) % 256 / 255 for j in range(784)] for i in range(400)]  # about 1.5 MiB as JSON
LARGE = {
    "valid, with a '[' in a string": json.dumps({"note": "[", "data": ROWS}).encode(),
    "[[], [], ...]": b'{"data": [' + b",".join([b"[]"] * 700_000) + b"]}",
    "a string in the last row": json.dumps({"data": [*ROWS, ["x", *ROW[1:]]]}).encode(),
    "a nested [x]": json.dumps({"data": [*ROWS, [[0.5], *ROW[1:]]]}).encode(),
    "an object row": json.dumps({"data": [*ROWS, {"a": 1}]}).encode(),
    "a short row": json.dumps({"data": [*ROWS, ROW[:5]]}).encode(),
    "a boolean": json.dumps({"data": [*ROWS, [True, *ROW[1:]]]}).encode(),
    "data is a number": json.dumps({"data": 5, "pad": "x" * 1_100_000}).encode(),
    "NaN": json.dumps({"data": ROWS}).encode()[:-2] + b", [NaN" + b", 0" * 783 + b"]]}",
}


@pytest.mark.parametrize("case", sorted(LARGE))
def test_a_large_body_is_judged_without_python_objects_and_as_the_general_path_would(case: str) -> None:
    body = LARGE[case]
    assert len(body) > contract._large_body_over
    outcomes = []
    for fast in (True, False):
        saved = contract._simdjson
        if not fast:
            contract._simdjson = None
        try:
            outcomes.append(contract.parse_body(body, 784, orjson.loads))
        except contract.InputError as error:
            outcomes.append(str(error))
        finally:
            contract._simdjson = saved
    if isinstance(outcomes[1], str):
        assert outcomes[0] == outcomes[1]
    else:
        assert np.array_equal(outcomes[0], outcomes[1])


def test_a_large_body_with_two_data_keys_is_refused_not_guessed() -> None:
    body = json.dumps({"data": [[1]]}).encode()[:-1] + b', "data": ' + json.dumps(ROWS).encode() + b"}"
    with pytest.raises(contract.InputError, match='the key "data" 2 times'):
        contract.parse_body(body, 784, orjson.loads)
