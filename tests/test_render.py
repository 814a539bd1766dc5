"""Tests for pipeline.render: deterministic output, inert spec strings, template overrides, a working score.py."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import render, yamlsource
from pipeline import spec as specs
from pipeline.errors import RenderError

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "specs" / "mnist.yaml"
EXAMPLE = ROOT / "examples" / "mnist"
MODEL = EXAMPLE / "sklearn_mnist_model.pkl"
VALID = ROOT / "tests" / "data" / "specs" / "valid"

# Rendering the azureml-online target loads the Azure SDK, whose own deprecation warnings are not ours.
pytestmark = pytest.mark.filterwarnings("ignore:::azure.*", "ignore:::marshmallow.*")

# Strings a spec may carry into rendered Python, YAML and JSON; each must come out as the same string.
CORPUS = [
    'double " quote',
    "single ' quote",
    "back\\slash \\n \\x41 \\u0041",
    "new\nline",
    "carriage\rreturn",
    "tab\tend",
    "{{ 7*7 }}",
    "{% raw %}",
    "{% raw %}x{% endraw %}",
    "{# comment",
    "{%- if true %}y{% endif -%}",
    "# hash",
    "key: value",
    "- item",
    "&anchor *alias !tag %percent @at `tick`",
    "[a, {b: c}]",
    '"""',
    "'''",
    "\"\"\"\nimport os\n'''",
    "__import__('os').system('x')",
    "');import os;os.system('x');('",
    "line\u2028separator\u2029paragraph",
    "\x85next line",
    "\x00nul",
    "\u00e9\u00e8 \u4e2d\u6587 \u2713",
    "emoji \U0001f680",
    "  lead and trail  ",
    "${HOME} $(id) `id`",
    "</script><!--",
    "yes",
    "null",
    "1e3",
    "0x1F",
]
ASTRAL = "emoji \U0001f680"
CASES = [pytest.param(text, id=str(i)) for i, text in enumerate(CORPUS)]


def _data(**sections: Any) -> dict[str, Any]:
    """specs/mnist.yaml as data with absolute paths (so it may live anywhere), sections updated."""
    data = yaml.safe_load(MNIST.read_text(encoding="utf-8"))
    data["model"]["source"] = str(MODEL)
    data["test"].update(
        images=str(EXAMPLE / "data" / "test-images.gz"), labels=str(EXAMPLE / "data" / "test-labels.gz")
    )
    for key, value in sections.items():
        if key in ("model", "environment", "scoring", "test", "deploy"):  # sections merge, other keys replace
            data[key].update(value)
        else:
            data[key] = value
    return data


def write_spec(folder: Path, name: str = "spec.yaml", **sections: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(_data(**sections), allow_unicode=False, sort_keys=False), encoding="utf-8")
    return path


def constants(source: str) -> dict[str, Any]:
    """The module-level UPPER_CASE = literal assignments of a Python file, evaluated without running it."""
    out = {}
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id.isupper():
            out[target.id] = ast.literal_eval(node.value)  # type: ignore[attr-defined]
    return out


def trusted_argument(source: str) -> Any:
    """The literal passed as `trusted=` to skops.io.load in init()."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "trusted":
                    return ast.literal_eval(keyword.value)
    raise AssertionError("no trusted= argument in score.py")


@pytest.fixture(scope="module")
def mnist_files() -> dict[str, str]:
    return render.render_all(specs.load(MNIST))


# -- determinism ---------------------------------------------------------------------------------


def test_render_is_deterministic(mnist_files: dict[str, str]) -> None:
    assert sorted(mnist_files) == ["local.json", "myenv.yml", "score.py", "swagger.json"]
    again = render.render_all(specs.load(MNIST))
    assert {k: v.encode() for k, v in again.items()} == {k: v.encode() for k, v in mnist_files.items()}


def test_render_does_not_depend_on_cwd_or_the_spec_folder(
    mnist_files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert render.render_all(specs.load(MNIST)) == mnist_files
    # a copy of the spec with its examples in another folder, loaded through a relative path
    shutil.copytree(EXAMPLE, tmp_path / "copy" / "examples" / "mnist", ignore=shutil.ignore_patterns("train-*"))
    (tmp_path / "copy" / "specs").mkdir()
    shutil.copy(MNIST, tmp_path / "copy" / "specs" / "mnist.yaml")
    moved = render.render_all(specs.load("copy/specs/mnist.yaml"))
    assert moved["score.py"].encode() == mnist_files["score.py"].encode()
    assert moved["myenv.yml"].encode() == mnist_files["myenv.yml"].encode()
    assert moved == mnist_files
    assert str(tmp_path) not in "".join(moved.values()) and str(ROOT) not in "".join(mnist_files.values())


@pytest.mark.parametrize("path", sorted(VALID.glob("*.yaml")), ids=lambda p: p.name)
def test_every_valid_spec_renders(path: Path) -> None:
    files = render.render_all(specs.load(path))
    assert files == render.render_all(specs.load(path))
    render.check_python(files["score.py"], "score.py")
    for name, text in files.items():
        assert text.endswith("\n") and "\r" not in text, name
        if name.endswith(".json"):
            json.loads(text)
        elif name.endswith((".yml", ".yaml")):
            assert isinstance(yaml.safe_load(text), dict)


# -- the rendered files --------------------------------------------------------------------------


def test_score_py_parses_and_defines_the_contract(mnist_files: dict[str, str]) -> None:
    tree = ast.parse(mnist_files["score.py"])
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"init", "run", "parse_rows", "predict_rows"} <= functions
    assert constants(mnist_files["score.py"]) == {
        "SERVICE": "sklearn-mnist-svc",
        "MODEL_NAME": "sklearn_mnist",
        "MODEL_VERSION": 1,
        "MODEL_FILE": "sklearn_mnist_model.pkl",
        "MODEL_SHA256": "f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4",
        "FEATURES": 784,
        "OUTPUT": "labels",
        "BATCH_ROWS": True,
    }


def test_myenv_yml_is_a_conda_environment(mnist_files: dict[str, str]) -> None:
    env = yaml.safe_load(mnist_files["myenv.yml"])
    assert env == {
        "name": "sklearn-mnist-svc-env",
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "scikit-learn", "numpy", "pip", {"pip": ["orjson"]}],
    }


def test_myenv_yml_has_no_pip_section_without_pip_packages() -> None:
    env = yaml.safe_load(render.render(specs.load(VALID / "minimal.yaml"))["myenv.yml"])
    assert env == {
        "name": "minimal-svc-env",
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "scikit-learn", "numpy"],
    }


def test_extra_pip_packages_of_a_target_are_added_once() -> None:
    loaded = specs.load(MNIST)
    env = yaml.safe_load(render.render(loaded, extra_pip=["orjson", "azureml-defaults"])["myenv.yml"])
    assert env["dependencies"][-1] == {"pip": ["orjson", "azureml-defaults"]}


def test_skops_and_probabilities_render_their_branches() -> None:
    skops = render.render(specs.load(VALID / "skops-registry.yaml"))["score.py"]
    assert "import skops.io" in skops and "joblib" not in skops.split("def init", 1)[1].split("def _bad_row")[0]
    assert trusted_argument(skops) == ["collections.Counter", "sklearn.linear_model._logistic.LogisticRegression"]
    assert constants(skops)["MODEL_SHA256"] is None and constants(skops)["MODEL_FILE"] == "sklearn_mnist.skops"
    assert constants(render.render(specs.load(VALID / "probabilities.yaml"))["score.py"])["OUTPUT"] == "probabilities"


# -- injection corpus ----------------------------------------------------------------------------


def test_corpus_survives_a_yaml_round_trip() -> None:
    for text in CORPUS:  # the precondition for writing the corpus into spec files
        assert yamlsource.parse(yaml.safe_dump({"a": text})).data == {"a": text}, repr(text)


@pytest.mark.parametrize("text", CASES)
def test_free_text_fields_render_as_inert_data(text: str, tmp_path: Path, mnist_files: dict[str, str]) -> None:
    """description, tags, a registry file name and trusted types hold anything; they come out unchanged."""
    path = write_spec(
        tmp_path,
        description=text,
        tags={text: text, "plain": text},
        model={"source": {"registry": "azureml", "file": text}},
    )
    files = render.render_all(specs.load(path))
    score = files["score.py"]
    assert len(score.splitlines()) == len(mnist_files["score.py"].splitlines())  # no line was injected
    assert "\x00" not in score and "{{" not in score.replace(repr(text), "")
    assert score.count("49") == mnist_files["score.py"].count("49")  # {{ 7*7 }} was not evaluated
    assert constants(score)["MODEL_FILE"] == text
    local = json.loads(files["local.json"])
    assert local["description"] == text and local["tags"] == {text: text, "plain": text}
    assert json.loads(files["swagger.json"])["info"]["description"] == text
    assert yaml.safe_load(files["myenv.yml"]) == yaml.safe_load(mnist_files["myenv.yml"])

    skops = write_spec(tmp_path, "skops.yaml", model={"format": "skops", "trusted_types": [text, "x.Y"]})
    score = render.render(specs.load(skops))["score.py"]
    assert trusted_argument(score) == [text, "x.Y"]

    aci = write_spec(
        tmp_path, "aci.yaml", description=text, tags={text: text}, deploy={"target": "aci", "local": {}}
    )  # the ACI config is JSON built from the same values
    config = json.loads(render.render_all(specs.load(aci))["aciconfig.json"])
    assert config["description"] == text and config["tags"] == {text: text}

    online = write_spec(
        tmp_path,
        "online.yaml",
        description=text,
        tags={"k": text},  # ARM limits tag names
        deploy={"target": "azureml-online", "auth": True, "local": {}},
    )
    endpoint = yaml.safe_load(render.render_all(specs.load(online))["endpoint.yml"])
    assert endpoint["description"] == text and endpoint["tags"] == {"k": text}


@pytest.mark.parametrize("text", CASES)
def test_pattern_checked_fields_render_safely_even_unchecked(
    text: str, tmp_path: Path, mnist_files: dict[str, str]
) -> None:
    """The schema refuses such names and packages; render must be safe without relying on that."""
    data = specs.apply_defaults(_data(), specs.schema())
    data["name"] = text
    data["model"]["name"] = text
    data["environment"].update(python=text, channels=[text], conda_packages=[text, "numpy"], pip_packages=[text])
    files = render.render(specs.build(tmp_path / "spec.yaml", data))
    env = yaml.safe_load(files["myenv.yml"])
    assert env == {
        "name": f"{text}-env",
        "channels": [text],
        "dependencies": [f"python={text}", text, "numpy", "pip", {"pip": [text]}],
    }
    assert len(files["myenv.yml"].splitlines()) == len(mnist_files["myenv.yml"].splitlines())
    values = constants(files["score.py"])
    assert (values["SERVICE"], values["MODEL_NAME"]) == (text, text)
    assert len(files["score.py"].splitlines()) == len(mnist_files["score.py"].splitlines())


def test_tricky_strings_spec_file_renders_inert() -> None:
    loaded = specs.load(VALID / "tricky-strings.yaml")
    files = render.render_all(loaded)
    assert json.loads(files["local.json"])["description"] == loaded.description
    assert "{{ 7*7 }}" in loaded.description and "49" not in files["local.json"] + files["swagger.json"]


# -- template overrides and the sandbox -----------------------------------------------------------

OVERRIDE = """# custom scoring script for {{ name|py }}
NAME = {{ name|py }}
TAGS = {{ tags|py }}


def init():
    pass


def run(raw_data):
    return NAME
"""


def override(tmp_path: Path, text: str, name: str = "score.py.j2") -> Path:
    folder = tmp_path / "my-templates"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return write_spec(tmp_path, templates="my-templates")


def test_templates_folder_overrides_score_py(tmp_path: Path, mnist_files: dict[str, str]) -> None:
    files = render.render(specs.load(override(tmp_path, OVERRIDE)))
    assert files["score.py"] == (
        "# custom scoring script for 'sklearn-mnist-svc'\nNAME = 'sklearn-mnist-svc'\n"
        "TAGS = {'data': 'MNIST', 'method': 'sklearn'}\n\n\ndef init():\n    pass\n\n\n"
        "def run(raw_data):\n    return NAME\n"
    )
    assert files["myenv.yml"] == mnist_files["myenv.yml"]  # not overridden: the built-in one


def test_templates_folder_overrides_myenv_only(tmp_path: Path, mnist_files: dict[str, str]) -> None:
    files = render.render(specs.load(override(tmp_path, "name: {{ environment.name|yaml }}\n", "myenv.yml.j2")))
    assert files["myenv.yml"] == 'name: "sklearn-mnist-svc-env"\n'
    assert files["score.py"] == mnist_files["score.py"]


def test_override_printing_a_raw_string_is_refused(tmp_path: Path) -> None:
    path = override(tmp_path, OVERRIDE.replace("NAME = {{ name|py }}", "NAME = '{{ name }}'"))
    with pytest.raises(
        RenderError,
        match=r"^template score.py.j2: template printed the raw string 'sklearn-mnist-svc'; pass it through \|py, \|yaml or \|json",
    ):
        render.render(specs.load(path))


def test_override_using_an_undefined_name_is_refused(tmp_path: Path) -> None:
    path = override(tmp_path, OVERRIDE.replace("TAGS = {{ tags|py }}", "TAGS = {{ tagz }}"))
    with pytest.raises(RenderError, match=r"^template score.py.j2: 'tagz' is undefined$"):
        render.render(specs.load(path))
    path = override(tmp_path, OVERRIDE.replace("TAGS = {{ tags|py }}", "TAGS = {{ model.nope }}"))
    with pytest.raises(RenderError, match=r"has no attribute 'nope'"):
        render.render(specs.load(path))


@pytest.mark.parametrize("expression", ["tagz|py", "tagz|yaml"])
def test_undefined_name_through_a_filter_is_refused(expression: str, tmp_path: Path) -> None:
    path = override(tmp_path, OVERRIDE.replace("{{ tags|py }}", "{{ " + expression + " }}"))
    with pytest.raises(RenderError, match="tagz"):
        render.render(specs.load(path))


@pytest.mark.parametrize(
    "body, message",
    [
        ("X = {{ ''.__class__.__mro__|py }}\n", "unsafe"),
        ("{% include '../../../../etc/passwd' %}\n", "etc/passwd"),
        ("def init():\n    pass\ndef run(raw_data:\n", "not valid Python"),
        ("def init():\n    pass\n", r"must define run\(\)"),
        ("{% for %}\n", "score.py.j2 line 1"),
    ],
)
def test_bad_override_templates_fail_with_render_error(body: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(RenderError, match=message):
        render.render(specs.load(override(tmp_path, body)))


def test_entry_script_is_used_as_it_is(tmp_path: Path) -> None:
    script = "def init():\n    pass\n\n\ndef run(raw_data):\n    return [1]\n"
    (tmp_path / "mine.py").write_text(script)
    path = write_spec(tmp_path, scoring={"entry_script": "mine.py"})
    assert render.render(specs.load(path))["score.py"] == script


# -- the rendered score.py, run for real ---------------------------------------------------------

HARNESS = r"""
import importlib.util, json, sys
score_path, mode, images = sys.argv[1:4]
if mode == "no-orjson":
    sys.modules["orjson"] = None  # import orjson now raises ImportError: the json fallback runs
module_spec = importlib.util.spec_from_file_location("score", score_path)
score = importlib.util.module_from_spec(module_spec)
module_spec.loader.exec_module(score)
out = {"loads": score._loads.__module__}
try:
    score.init()
except Exception as exc:
    out["init_error"] = [type(exc).__name__, str(exc)]
    print(json.dumps(out))
    sys.exit(0)
import joblib
from pipeline.data import read_idx
X = read_idx(__import__("pathlib").Path(images))[:40].reshape(40, -1) / 255.0
model = joblib.load(score._model_path())
expected = model.predict_proba(X).tolist() if score.OUTPUT == "probabilities" else model.predict(X).tolist()
body = json.dumps({"data": X.tolist()})
answers = [score.run(body), score.run(body.encode()), score.run(json.dumps({"data": X[:1].tolist()}))]
out["answers"] = [[a if isinstance(a, list) else repr(a)] for a in answers]
out["expected"] = expected
zero = [0.0] * score.FEATURES
bad = {
    "malformed": b'{"data": [[0.0,',
    "not utf-8": b'{"data": [[\xff]]}',
    "not an object": json.dumps([zero]),
    "missing data": json.dumps({"rows": [zero]}),
    "empty data": json.dumps({"data": []}),
    "data not a list": json.dumps({"data": 5}),
    "row not a list": json.dumps({"data": [5]}),
    "short row": json.dumps({"data": [zero[:-1]]}),
    "ragged rows": json.dumps({"data": [zero, zero[:-1]]}),
    "string value": json.dumps({"data": [zero[:3] + ["0.5"] + zero[4:]]}),
    "true in a row": json.dumps({"data": [zero, [True] + zero[1:]]}),
    "null in a row": json.dumps({"data": [[None] + zero[1:]]}),
    "NaN": '{"data": [[NaN' + ', 0.0' * (score.FEATURES - 1) + ']]}',
    "Infinity": '{"data": [[Infinity' + ', 0.0' * (score.FEATURES - 1) + ']]}',
    "huge": '{"data": [[1e999' + ', 0.0' * (score.FEATURES - 1) + ']]}',
}
out["bad"] = {}
for name, body in bad.items():
    reply = score.run(body)
    answer = json.loads(reply.get_data()) if hasattr(reply, "get_data") else repr(reply)
    out["bad"][name] = [getattr(reply, "status_code", None), answer]
out["after"] = score.run(json.dumps({"data": X[:2].tolist()}))  # still serving
print(json.dumps(out))
"""


def run_score(tmp_path: Path, spec_path: Path, mode: str = "orjson", model: bytes | None = None) -> dict[str, Any]:
    """Render score.py, put the model where AZUREML_MODEL_DIR says, and run HARNESS in a fresh interpreter."""
    build = tmp_path / "build"
    render.write_files(build, render.render(specs.load(spec_path)))
    model_dir = tmp_path / "azureml-models" / "sklearn_mnist" / "1"
    model_dir.mkdir(parents=True)
    (model_dir / MODEL.name).write_bytes(MODEL.read_bytes() if model is None else model)
    env = {**os.environ, "AZUREML_MODEL_DIR": str(model_dir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, str(build / "score.py"), mode, str(EXAMPLE / "data" / "test-images.gz")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


BAD_ANSWERS = {
    "not an object": 'body must be a JSON object with a "data" array of rows',
    "missing data": 'body must be a JSON object with a "data" array of rows',
    "empty data": '"data" must be a non-empty array of rows of 784 numbers',
    "data not a list": '"data" must be a non-empty array of rows of 784 numbers',
    "row not a list": "data[0] must be an array of 784 numbers, got int",
    "short row": "data[0] has 783 values, expected 784",
    "ragged rows": "data[1] has 783 values, expected 784",
    "string value": 'data[0][3] is not a number: "0.5"',
    "true in a row": "data[1][0] is not a number: true",
    "null in a row": "data[0][0] is not a number: null",
}


@pytest.mark.parametrize("mode", ["orjson", "no-orjson"])
def test_rendered_score_py_scores_and_refuses_bad_bodies(mode: str, tmp_path: Path) -> None:
    out = run_score(tmp_path, MNIST, mode)
    assert out["loads"] == ("orjson" if mode == "orjson" else "json")
    expected = out["expected"]
    assert len(expected) == 40 and len(set(expected)) > 3
    assert out["answers"] == [[expected], [expected], [expected[:1]]]
    assert out["after"] == expected[:2]
    for name, (status, body) in out["bad"].items():
        assert status == 400, (name, status, body)
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], name
    for name, message in BAD_ANSWERS.items():
        assert out["bad"][name][1]["error"] == message, name
    for name in ("malformed", "not utf-8"):
        assert out["bad"][name][1]["error"].startswith("body is not valid JSON: "), name
    if mode == "no-orjson":  # json.loads accepts NaN, Infinity and 1e999; the finiteness check refuses them
        for name in ("NaN", "Infinity", "huge"):
            assert out["bad"][name][1]["error"] == "data[0][0] is not a finite number", name


def test_rendered_score_py_answers_probabilities(tmp_path: Path) -> None:
    out = run_score(tmp_path, VALID / "probabilities.yaml")
    expected = out["expected"]
    assert len(expected) == 40 and all(len(row) == 10 and abs(sum(row) - 1) < 1e-9 for row in expected)
    assert out["answers"][0] == [expected]


def test_rendered_score_py_refuses_a_tampered_model(tmp_path: Path) -> None:
    out = run_score(tmp_path, MNIST, model=MODEL.read_bytes() + b"\n")
    kind, message = out["init_error"]
    assert kind == "RuntimeError"
    assert (
        "refusing to load it" in message
        and "expected f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4" in message
    )
