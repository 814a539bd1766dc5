"""A score.py whose init() fails, as when the model file is missing."""


def init():
    raise FileNotFoundError("sklearn_mnist_model.pkl is not in AZUREML_MODEL_DIR")


def run(raw_data):
    return []
