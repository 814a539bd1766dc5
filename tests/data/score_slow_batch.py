"""A batching score.py whose predict_rows sleeps when a row starts with a negative number."""
import time

import numpy as np
import orjson


def init():
    pass


def parse_rows(raw_data):
    rows = orjson.loads(raw_data)["data"]
    return np.array(rows, dtype=np.float64)


def predict_rows(matrix):
    if (matrix[:, 0] < 0).any():
        time.sleep(2)
    return [int(value) for value in matrix[:, 0]]


def run(raw_data):
    return predict_rows(parse_rows(raw_data))
