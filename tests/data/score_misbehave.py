"""A score.py that misbehaves on request, to test the host: sleep, allocate, raise, odd return values."""
import json
import time

import numpy as np

_hoard = []


def init():
    global ready
    ready = True


class Teapot:
    status_code = 418

    def get_data(self):
        return b'{"error": "short and stout"}'


def run(raw_data):
    body = json.loads(raw_data)
    if "sleep_ms" in body:
        time.sleep(body["sleep_ms"] / 1000)
    if "alloc_mb" in body:
        # Touch every page so the memory is resident, not just reserved.
        _hoard.append(np.ones(body["alloc_mb"] * 2**20 // 8))
    if "spike_mb" in body:
        # Resident for a moment only, then freed: a container's limit still sees it.
        spike = np.ones(body["spike_mb"] * 2**20 // 8)
        del spike
    if body.get("raise"):
        raise RuntimeError("the score script failed on purpose")
    if body.get("return") == "str":
        return "[7, 2]"
    if body.get("return") == "numpy":
        return {"labels": np.arange(3), "score": np.float32(0.5)}
    if body.get("return") == "teapot":
        return Teapot()
    return {"ok": True, "pid_seen": True}
