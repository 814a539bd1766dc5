"""Score MNIST images with sklearn_mnist: Azure's init()/run() plus the host's batching fast path."""
import json
import math
import os

import joblib
import numpy as np

try:
    from orjson import loads as _loads
except ImportError:  # orjson is an optimisation, not a requirement
    from json import loads as _loads

MODEL_FILE = "sklearn_mnist_model.pkl"
FEATURES = 784


class ErrorResponse:
    """What the host (and Azure's AMLResponse) offers: a status code and a JSON body."""

    def __init__(self, status_code, message):
        self.status_code = status_code
        self.message = message

    def get_data(self):
        return json.dumps({"error": self.message}).encode()


def init():
    global model
    model = joblib.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], MODEL_FILE))


def parse_rows(raw_data):
    """`{"data": [[784 numbers], ...]}` as an (n, 784) float64 array; ValueError says what is wrong."""
    if isinstance(raw_data, str):
        raw_data = raw_data.encode("utf-8")
    try:
        document = _loads(raw_data)
    except ValueError as error:  # orjson's JSONDecodeError is a ValueError
        if b"NaN" in raw_data or b"Infinity" in raw_data:
            raise ValueError("body has NaN or Infinity, which JSON does not allow") from None
        raise ValueError(f"body is not valid JSON: {error}") from None
    rows = document.get("data") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ValueError(_describe(document))
    # numpy would quietly turn "0.5" or true into numbers; when nothing after the "data" key is
    # quoted and no true/false/null appears ('u', 'l'), only numbers and lists can be there.
    plain = raw_data.find(b'"', raw_data.find(b'"data"') + 6) == -1 and b"u" not in raw_data and b"l" not in raw_data
    if plain or _describe(document) is None:
        try:
            matrix = np.array(rows, dtype=np.float64)
        except (ValueError, TypeError):
            matrix = None
        if matrix is not None and matrix.ndim == 2 and matrix.shape[1] == FEATURES and np.isfinite(matrix).all():
            return matrix
    raise ValueError(_describe(document) or "data must be rows of numbers")


def _describe(document):
    """The first thing wrong with the body, or None; only run once a body has failed the fast checks."""
    if not isinstance(document, dict) or "data" not in document:
        return 'body must be a JSON object with a "data" field'
    rows = document["data"]
    if not isinstance(rows, list) or not rows:
        return '"data" must be a non-empty list of rows'
    for index, row in enumerate(rows):
        if not isinstance(row, list):
            return f"data[{index}] must be an array of {FEATURES} numbers"
        if len(row) != FEATURES:
            return f"data[{index}] has {len(row)} values, expected {FEATURES}"
        for column, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"data[{index}][{column}] is not a number: {json.dumps(value)[:40]}"
            if not math.isfinite(value):
                return f"data[{index}][{column}] is not a finite number"
    return None


def predict_rows(matrix):
    """One label per row."""
    return model.predict(matrix).tolist()


def run(raw_data):
    try:
        matrix = parse_rows(raw_data)
    except ValueError as error:
        return ErrorResponse(400, str(error))
    return predict_rows(matrix)
