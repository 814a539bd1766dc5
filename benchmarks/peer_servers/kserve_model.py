"""The model behind KServe's ModelServer, as its sklearn server does it: joblib.load, then predict(instances)."""

import sys

import joblib
import numpy as np
from kserve import Model, ModelServer


class Mnist(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.model = joblib.load(self.path)
        self.ready = True
        return True

    def predict(self, payload, headers=None):  # sync: KServe calls it on the event loop, no thread hop
        return {"predictions": self.model.predict(np.asarray(payload["instances"], dtype=np.float64)).tolist()}


if __name__ == "__main__":
    port, model_file = int(sys.argv[1]), sys.argv[2]
    ModelServer(http_port=port, workers=2, enable_grpc=False).start([Mnist("mnist", model_file)])
