"""The scoring contract's input rules, in one place: the host imports them, the rendered score.py embeds them."""

from __future__ import annotations

# Everything below the marker is copied verbatim into the rendered score.py, which must run without this
# package installed (as on Azure): standard library and numpy only, no annotations that need this module's
# imports, and nothing that looks like template syntax.
# --- contract ---
import json as _json
import math
import threading as _threading

import numpy as np

try:  # simdjson parses a body's numbers straight into one float64 buffer, with no Python object per number
    import simdjson as _simdjson
except ImportError:  # the loads() path below gives the same answers, more slowly
    _simdjson = None  # type: ignore[assignment]
# Bodies up to this size reuse their thread's parser, which keeps buffers sized to the largest it has seen;
# larger bodies get a parser of their own, freed with them.
_reuse_parser_below = 262144  # 256 KiB
# Bodies larger than this that the fast path does not take are checked by simdjson alone (_large_body).
_large_body_over = 1048576  # 1 MiB
_local = _threading.local()


class InputError(ValueError):
    """The request body is not what this service accepts: a client error (HTTP 400)."""


def rows_problem(body, features=None):
    """The first thing wrong with a parsed body {"data": [[...], ...]}, or None when it is well formed."""
    if not isinstance(body, dict) or "data" not in body:
        return 'body must be a JSON object with a "data" array of rows'
    data = body["data"]
    of = " of %d numbers" % features if features else " of numbers"
    if not isinstance(data, list) or not data:
        return '"data" must be a non-empty array of rows' + (of if features else "")
    width = features or (len(data[0]) if isinstance(data[0], list) else None)
    for i, row in enumerate(data):
        if not isinstance(row, list):
            return "data[%d] must be an array%s, got %s" % (i, of, type(row).__name__)
        if width is not None and len(row) != width:
            return "data[%d] has %d values, expected %d" % (i, len(row), width)
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return "data[%d][%d] is not a number: %s" % (i, j, _json.dumps(value)[:40])
            try:
                if not math.isfinite(float(value)):
                    return "data[%d][%d] is not a finite number" % (i, j)
            except OverflowError:
                return "data[%d][%d] is too large for a float64" % (i, j)
    return None


def _has_non_finite(raw_data):
    def refuse(constant):
        raise ValueError("non-finite constant")

    try:
        _json.loads(raw_data, parse_constant=refuse)
    except ValueError as error:
        return str(error) == "non-finite constant"
    return False


def body_problem(raw_data, features, loads):
    """Why a raw request body is not one this service accepts, or None when it is well formed (the slow path)."""
    try:
        body = loads(raw_data)
    except ValueError as exc:
        if _has_non_finite(raw_data):
            return "body holds NaN or Infinity, which are not JSON numbers"
        return "body is not valid JSON: %s" % exc
    return rows_problem(body, features)


def rows_array(raw_data, features):
    """The fast path: a well-formed body's rows as float64 straight from its bytes, or None for the general path.

    Only a body that is exactly {"data": [[f numbers], ...]} is taken: one "data" key, every row an array of
    `features` numbers and no other array anywhere (the count of '[' is rows + 1, so no number hides in a
    nested [x]); true, false, null and strings make as_buffer refuse. Anything else, or anything odd, goes to
    the general path, which gives the answer (or the message) either way: this one is only faster.
    """
    if _simdjson is None or not features:
        return None
    parser = getattr(_local, "parser", None) if len(raw_data) <= _reuse_parser_below else None
    if parser is None:
        parser = _simdjson.Parser()
        if len(raw_data) <= _reuse_parser_below:
            _local.parser = parser
    try:
        doc = parser.parse(raw_data)
        # one "data" key (json.loads keeps the last of several, simdjson the first): leave those to it
        if type(doc) is not _simdjson.Object or len(doc) > 16 or list(doc.keys()).count("data") != 1:
            return None
        data = doc["data"]
        if type(data) is not _simdjson.Array or not len(data):
            return None
        rows = len(data)
        if np.count_nonzero(np.frombuffer(raw_data, np.uint8) == 91) != rows + 1:  # b"[" == 91
            return None
        for row in data:
            if type(row) is not _simdjson.Array or len(row) != features:
                return None
        X = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64).reshape(rows, features)
    except (ValueError, TypeError, KeyError, RuntimeError):
        return None
    finally:
        doc = data = row = None  # the parser may be used again only once nothing refers to its document
    return X if np.isfinite(X).all() else None


def _large_body(raw_data, features):
    """A large body the fast path did not take, checked by simdjson alone: its array, or the message saying why not.

    The general path builds a Python object per value, about 0.1 s per MiB of [[], [], ...]: while it runs
    the worker answers no one. This one materializes at most the one row it complains about. It returns the
    message rather than raising it: a traceback would keep the parser's document (10x the body) alive.
    """
    of = " of %d numbers" % features
    try:
        doc = _simdjson.Parser().parse(raw_data)
    except ValueError as exc:
        if b"NaN" in raw_data or b"Infinity" in raw_data:
            return "body holds NaN or Infinity, which are not JSON numbers"
        return "body is not valid JSON: %s" % exc
    keys = list(doc.keys()) if type(doc) is _simdjson.Object else []
    if type(doc) is not _simdjson.Object or "data" not in keys:
        return 'body must be a JSON object with a "data" array of rows'
    if keys.count("data") > 1:  # json.loads would keep the last silently; a large body says which it means
        return 'body has the key "data" %d times; send it once' % keys.count("data")
    data = doc["data"]
    if type(data) is not _simdjson.Array or not len(data):
        return '"data" must be a non-empty array of rows' + of
    for i, row in enumerate(data):
        if type(row) is not _simdjson.Array:
            return "data[%d] must be an array%s, got %s" % (
                i,
                of,
                "dict" if type(row) is _simdjson.Object else type(row).__name__,
            )
        if len(row) != features:
            return "data[%d] has %d values, expected %d" % (i, len(row), features)
        try:
            nested = row.mini.count(b"[") != 1  # type: ignore[arg-type]  # mini is bytes at run time
            ok = np.frombuffer(row.as_buffer(of_type="d")).size == features and not nested
        except (ValueError, TypeError):
            ok = False
        if not ok:  # a value that is not a number: the general rules word it, for this one row
            problem = rows_problem({"data": [row.as_list()]}, features) or "data[0] must be an array%s" % of
            return "data[%d]" % i + problem[len("data[0]") :]
    X = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64).reshape(len(data), features)
    if not np.isfinite(X).all():
        i, j = np.argwhere(~np.isfinite(X))[0]
        return "data[%d][%d] is not a finite number" % (i, j)
    return X


def parse_body(raw_data, features, loads):
    """The body {"data": [[...], ...]} as a float64 array of shape (rows, features); InputError says why not."""
    if isinstance(raw_data, str):
        raw_data = raw_data.encode("utf-8")
    X = rows_array(raw_data, features)
    if X is not None:
        return X
    if _simdjson is not None and features and len(raw_data) > _large_body_over:
        X = _large_body(raw_data, features)
        if isinstance(X, str):
            raise InputError(X)
        return X
    try:
        body = loads(raw_data)
    except ValueError:
        raise InputError(body_problem(raw_data, features, loads)) from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        raise InputError(rows_problem(body, features))
    # numpy would quietly turn "0.5" or true into numbers: when nothing after "data" is quoted and no
    # true/false/null can be there (no 'u' or 'l' anywhere), only numbers and arrays remain.
    plain = raw_data.find(b'"', raw_data.find(b'"data"') + 6) == -1 and b"u" not in raw_data and b"l" not in raw_data
    if plain or rows_problem(body, features) is None:
        try:
            X = np.array(data, dtype=np.float64)
        except (ValueError, TypeError):
            X = None
        if X is not None and X.ndim == 2 and X.shape[1] == features and np.isfinite(X).all():
            return X
    raise InputError(rows_problem(body, features) or "data must be rows of %d numbers" % features)
