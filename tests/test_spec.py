"""Tests for pipeline.spec: the golden table of invalid specs, defaults, paths, frozen records, the schema."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import spec as specs
from pipeline import targets
from pipeline.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
INVALID = ROOT / "tests" / "data" / "specs" / "invalid"
VALID = ROOT / "tests" / "data" / "specs" / "valid"
MNIST = ROOT / "specs" / "mnist.yaml"

# Every file in tests/data/specs/invalid/ and the exact lines `validate` prints for it when run from
# the repository root. Each was read as a user would: the file, the line, the field and what was expected.
GOLDEN: dict[str, list[str]] = {
    "aci-over-limits.yaml": [
        "tests/data/specs/invalid/aci-over-limits.yaml:34: deploy.cpu_cores: Azure Container Instances allows at most 4 cores, got 8",
        "tests/data/specs/invalid/aci-over-limits.yaml:35: deploy.memory_gb: Azure Container Instances allows at most 16 GB, got 32",
    ],
    "aks-replicas-and-autoscale.yaml": [
        "tests/data/specs/invalid/aks-replicas-and-autoscale.yaml:41: deploy.azureml.autoscale: cannot be combined with deploy.azureml.replicas (a fixed count disables autoscaling)",
    ],
    "aks-without-compute-target.yaml": [
        "tests/data/specs/invalid/aks-without-compute-target.yaml:38: deploy.azureml.compute_target: required for target 'aks': the name of the attached AKS cluster",
    ],
    "bad-model-format.yaml": [
        "tests/data/specs/invalid/bad-model-format.yaml:12: model.format: 'onnx' is not one of ['joblib', 'pickle', 'skops']",
    ],
    "bad-scoring-output.yaml": [
        "tests/data/specs/invalid/bad-scoring-output.yaml:22: scoring.output: 'classes' is not one of ['labels', 'probabilities']",
    ],
    "bad-target.yaml": [
        "tests/data/specs/invalid/bad-target.yaml:33: deploy.target: 'azur' is not one of ['local', 'aci', 'aks', 'azureml-online', 'ray', 'kubernetes']",
    ],
    "bad-test-format.yaml": [
        "tests/data/specs/invalid/bad-test-format.yaml:27: test.format: 'parquet' is not one of ['auto', 'idx', 'npz', 'csv']",
    ],
    "comments-only.yaml": [
        "tests/data/specs/invalid/comments-only.yaml:1: the spec must be a YAML mapping (apiVersion: pipeline/v1, name: ...), found an empty document",
    ],
    "conda-package-injection.yaml": [
        "tests/data/specs/invalid/conda-package-injection.yaml:17: environment.conda_packages[1]: 'numpy\\n  - evil: 1' must be a conda package spec such as scikit-learn or numpy>=1.26",
    ],
    "cpu-cores-zero.yaml": [
        "tests/data/specs/invalid/cpu-cores-zero.yaml:34: deploy.cpu_cores: must be > 0, got 0",
    ],
    "description-too-long.yaml": [
        "tests/data/specs/invalid/description-too-long.yaml:4: description: length must be <= 1024, got 1119",
    ],
    "duplicate-key-nested.yaml": [
        "tests/data/specs/invalid/duplicate-key-nested.yaml:36: deploy.cpu_cores: duplicate key (first defined on line 34); YAML would silently keep only the last one",
    ],
    "duplicate-key-top.yaml": [
        "tests/data/specs/invalid/duplicate-key-top.yaml:5: name: duplicate key (first defined on line 3); YAML would silently keep only the last one",
    ],
    "empty-file.yaml": [
        "tests/data/specs/invalid/empty-file.yaml:1: the spec must be a YAML mapping (apiVersion: pipeline/v1, name: ...), found an empty document",
    ],
    "idx-without-labels.yaml": [
        "tests/data/specs/invalid/idx-without-labels.yaml:24: test.labels: required with IDX images: the labels file (e.g. test-labels.gz)",
    ],
    "memory-negative.yaml": [
        "tests/data/specs/invalid/memory-negative.yaml:35: deploy.memory_gb: must be > 0, got -2",
    ],
    "min-accuracy-too-high.yaml": [
        "tests/data/specs/invalid/min-accuracy-too-high.yaml:28: test.min_accuracy: must be <= 1, got 1.5",
    ],
    "missing-apiversion.yaml": [
        "tests/data/specs/invalid/missing-apiversion.yaml:2: apiVersion: required field is missing; a spec starts with apiVersion: pipeline/v1, and nothing else is checked without it",
    ],
    "missing-data-file.yaml": [
        "tests/data/specs/invalid/missing-data-file.yaml:25: test.images: file not found: ../../../../examples/mnist/data/t10k-images.gz (resolved against the spec's folder: examples/mnist/data/t10k-images.gz)",
    ],
    "missing-model-file.yaml": [
        "tests/data/specs/invalid/missing-model-file.yaml:10: model.source: file not found: ../../../../examples/mnist/model.pkl (resolved against the spec's folder: examples/mnist/model.pkl)",
    ],
    "missing-model-source.yaml": [
        "tests/data/specs/invalid/missing-model-source.yaml:7: model.source: required field is missing",
    ],
    "missing-model.yaml": [
        "tests/data/specs/invalid/missing-model.yaml:2: model: required field is missing",
    ],
    "missing-name.yaml": [
        "tests/data/specs/invalid/missing-name.yaml:2: name: required field is missing",
    ],
    "missing-scoring-features.yaml": [
        "tests/data/specs/invalid/missing-scoring-features.yaml:20: scoring.features: required field is missing",
    ],
    "missing-test-images.yaml": [
        "tests/data/specs/invalid/missing-test-images.yaml:24: test.images: required field is missing",
    ],
    "model-source-bad-registry.yaml": [
        "tests/data/specs/invalid/model-source-bad-registry.yaml:10: model.source.registry: 'mlflow' is not one of ['azureml']",
    ],
    "model-source-bad-type.yaml": [
        "tests/data/specs/invalid/model-source-bad-type.yaml:10: model.source: expected a file path or a mapping {registry: azureml, file: ...}, got integer 42",
    ],
    "model-source-missing-file.yaml": [
        "tests/data/specs/invalid/model-source-missing-file.yaml:10: model.source.file: required field is missing",
    ],
    "model-version-zero.yaml": [
        "tests/data/specs/invalid/model-version-zero.yaml:9: model.version: must be >= 1, got 0",
    ],
    "name-empty.yaml": [
        "tests/data/specs/invalid/name-empty.yaml:3: name: '' must be 3-32 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'",
    ],
    "name-leading-digit.yaml": [
        "tests/data/specs/invalid/name-leading-digit.yaml:3: name: '1-mnist-svc' must be 3-32 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'",
    ],
    "name-template-injection.yaml": [
        "tests/data/specs/invalid/name-template-injection.yaml:3: name: '{{ 7*7 }}' must be 3-32 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'",
    ],
    "name-too-long.yaml": [
        "tests/data/specs/invalid/name-too-long.yaml:3: name: 'sklearn-mnist-service-with-long-name' must be 3-32 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'",
    ],
    "name-too-short.yaml": [
        "tests/data/specs/invalid/name-too-short.yaml:3: name: 'ab' must be 3-32 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'",
    ],
    "name-trailing-dash.yaml": [
        "tests/data/specs/invalid/name-trailing-dash.yaml:3: name: 'sklearn-mnist-' must be 3-32 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'",
    ],
    "name-uppercase.yaml": [
        "tests/data/specs/invalid/name-uppercase.yaml:3: name: 'Sklearn-MNIST' must be 3-32 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'",
    ],
    "not-utf8.yaml": [
        "tests/data/specs/invalid/not-utf8.yaml:4: not UTF-8 text: byte 0xe9 at offset 98 (invalid continuation byte); save the file as UTF-8",
    ],
    "pip-package-injection.yaml": [
        "tests/data/specs/invalid/pip-package-injection.yaml:18: environment.pip_packages[0]: 'orjson --index-url http://evil.example/simple' must be a pip requirement such as orjson or joblib>=1.3",
    ],
    "port-too-large.yaml": [
        "tests/data/specs/invalid/port-too-large.yaml:38: deploy.local.port: must be <= 65535, got 70000",
    ],
    "python-unquoted.yaml": [
        'tests/data/specs/invalid/python-unquoted.yaml:15: environment.python: must be a Python 3 version as a quoted string such as "3.11", got number 3.1',
    ],
    "request-timeout-zero.yaml": [
        "tests/data/specs/invalid/request-timeout-zero.yaml:37: deploy.request_timeout_ms: must be >= 1, got 0",
    ],
    "sample-size-too-large.yaml": [
        "tests/data/specs/invalid/sample-size-too-large.yaml:29: test.sample_size: 5000 is larger than the test set (1000 rows in ../../../../examples/mnist/data/test-images.gz)",
    ],
    "sample-size-zero.yaml": [
        "tests/data/specs/invalid/sample-size-zero.yaml:29: test.sample_size: must be >= 1, got 0",
    ],
    "several-problems.yaml": [
        "tests/data/specs/invalid/several-problems.yaml:3: name: 'Bad_Name' must be 3-32 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'",
        "tests/data/specs/invalid/several-problems.yaml:10: model.colour: unknown key; expected one of: format, name, sha256, source, trusted_types, version",
        "tests/data/specs/invalid/several-problems.yaml:22: scoring.features: expected an integer, got string '784'",
        "tests/data/specs/invalid/several-problems.yaml:34: deploy.target: 'azur' is not one of ['local', 'aci', 'aks', 'azureml-online', 'ray', 'kubernetes']",
        "tests/data/specs/invalid/several-problems.yaml:35: deploy.cpu_cores: must be > 0, got 0",
    ],
    "sha256-integer.yaml": [
        "tests/data/specs/invalid/sha256-integer.yaml:11: model.sha256: must be 64 lowercase hexadecimal digits (the output of sha256sum), got integer 11111111111111111111111111111111111111111111111111111111…; quote it to make it a string",
    ],
    "sha256-non-hex.yaml": [
        "tests/data/specs/invalid/sha256-non-hex.yaml:11: model.sha256: 'zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz…' must be 64 lowercase hexadecimal digits (the output of sha256sum)",
    ],
    "sha256-short.yaml": [
        "tests/data/specs/invalid/sha256-short.yaml:11: model.sha256: 'f2ff0eb82e26' must be 64 lowercase hexadecimal digits (the output of sha256sum)",
    ],
    "sha256-uppercase.yaml": [
        "tests/data/specs/invalid/sha256-uppercase.yaml:11: model.sha256: 'F2FF0EB82E268BED56F626BA0D3A7862E0C9E0653FFAB40C46FE8B7…' must be 64 lowercase hexadecimal digits (the output of sha256sum)",
    ],
    "tag-name-empty.yaml": [
        "tests/data/specs/invalid/tag-name-empty.yaml:5: tags: keys must not be empty",
    ],
    "test-images-not-idx.yaml": [
        "tests/data/specs/invalid/test-images-not-idx.yaml:25: test.images: not an IDX file: it starts with 22 22 22 54, an IDX file starts with 00 00, a type code (08 09 0b 0c 0d 0e) and a dimension count",
    ],
    "top-level-list.yaml": [
        "tests/data/specs/invalid/top-level-list.yaml:1: the spec must be a YAML mapping (apiVersion: pipeline/v1, name: ...), found a list",
    ],
    "top-level-string.yaml": [
        "tests/data/specs/invalid/top-level-string.yaml:1: the spec must be a YAML mapping (apiVersion: pipeline/v1, name: ...), found a string",
    ],
    "type-bool-for-string.yaml": [
        "tests/data/specs/invalid/type-bool-for-string.yaml:4: description: expected a string, got boolean true; quote it to make it a string",
    ],
    "type-float-for-int.yaml": [
        "tests/data/specs/invalid/type-float-for-int.yaml:29: test.sample_size: expected an integer, got number 2.5",
    ],
    "type-list-for-mapping.yaml": [
        "tests/data/specs/invalid/type-list-for-mapping.yaml:38: deploy.local: expected a mapping, got list [0]",
    ],
    "type-null-section.yaml": [
        "tests/data/specs/invalid/type-null-section.yaml:20: scoring: expected a mapping, got null (an empty value)",
    ],
    "type-string-for-bool.yaml": [
        "tests/data/specs/invalid/type-string-for-bool.yaml:36: deploy.auth: expected a boolean, got string 'no'",
    ],
    "type-string-for-int.yaml": [
        "tests/data/specs/invalid/type-string-for-int.yaml:21: scoring.features: expected an integer, got string '784'",
    ],
    "type-string-for-number.yaml": [
        "tests/data/specs/invalid/type-string-for-number.yaml:35: deploy.memory_gb: expected a number, got string '1GB'",
    ],
    "type-tag-value.yaml": [
        "tests/data/specs/invalid/type-tag-value.yaml:5: tags.version: expected a string, got integer 2; quote it to make it a string",
    ],
    "unknown-key-deploy-azureml.yaml": [
        "tests/data/specs/invalid/unknown-key-deploy-azureml.yaml:40: deploy.azureml.cluster: unknown key; expected one of: autoscale, base_image, compute_target, instance_type, replicas, token_auth, workspace_config",
    ],
    "unknown-key-deploy-local.yaml": [
        "tests/data/specs/invalid/unknown-key-deploy-local.yaml:38: deploy.local.host: unknown key; expected one of: body_timeout_s, header_timeout_s, keep_alive_s, max_connections, port",
    ],
    "unknown-key-deploy.yaml": [
        "tests/data/specs/invalid/unknown-key-deploy.yaml:36: deploy.memory: unknown key; expected one of: auth, azureml, cpu_cores, kubernetes, local, memory_gb, ray, ready_timeout_s, request_timeout_ms, target",
    ],
    "unknown-key-environment.yaml": [
        "tests/data/specs/invalid/unknown-key-environment.yaml:19: environment.packages: unknown key; expected one of: channels, conda_packages, pip_packages, python",
    ],
    "unknown-key-model-source.yaml": [
        "tests/data/specs/invalid/unknown-key-model-source.yaml:13: model.source.workspace: unknown key; expected one of: file, registry, workspace_config",
    ],
    "unknown-key-model.yaml": [
        "tests/data/specs/invalid/unknown-key-model.yaml:10: model.path: unknown key; expected one of: format, name, sha256, source, trusted_types, version",
    ],
    "unknown-key-scoring.yaml": [
        "tests/data/specs/invalid/unknown-key-scoring.yaml:23: scoring.feature: unknown key; expected one of: entry_script, features, output",
    ],
    "unknown-key-test.yaml": [
        "tests/data/specs/invalid/unknown-key-test.yaml:31: test.shuffle: unknown key; expected one of: format, images, label_column, labels, min_accuracy, sample_size, scale, seed",
    ],
    "unknown-key-top.yaml": [
        "tests/data/specs/invalid/unknown-key-top.yaml:5: replicas: unknown key; expected one of: apiVersion, deploy, description, environment, model, name, scoring, state, tags, templates, test",
    ],
    "wrong-apiversion.yaml": [
        "tests/data/specs/invalid/wrong-apiversion.yaml:2: apiVersion: must be pipeline/v1, got 'pipeline/v2'",
    ],
    "yaml-merge-key.yaml": [
        "tests/data/specs/invalid/yaml-merge-key.yaml:32: defaults: unknown key; expected one of: apiVersion, deploy, description, environment, model, name, scoring, state, tags, templates, test",
        "tests/data/specs/invalid/yaml-merge-key.yaml:34: deploy: YAML merge keys ('<<') are not supported in specs",
    ],
    "yaml-python-tag.yaml": [
        "tests/data/specs/invalid/yaml-python-tag.yaml:4: YAML error: could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'",
    ],
    "yaml-python-tag-on-list.yaml": [
        "tests/data/specs/invalid/yaml-python-tag-on-list.yaml:4: description: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed in specs",
    ],
    "yaml-syntax-error.yaml": [
        "tests/data/specs/invalid/yaml-syntax-error.yaml:4: YAML syntax error: mapping values are not allowed in this context (a value containing ': ' must be quoted)",
    ],
    "yaml-tab-indent.yaml": [
        "tests/data/specs/invalid/yaml-tab-indent.yaml:21: YAML syntax error: found character that cannot start any token (a tab in the indentation: YAML indents with spaces only)",
    ],
}


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Messages show paths relative to the working directory: run from the repository root, as the CLI would."""
    monkeypatch.chdir(ROOT)
    return ROOT


def load_errors(path: str | Path) -> list[str]:
    with pytest.raises(SpecError) as err:
        specs.load(path)
    assert err.value.exit_code == 2
    return err.value.messages


# -- the golden table ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_invalid_spec_gives_exact_messages(name: str, at_root: Path) -> None:
    assert load_errors(f"tests/data/specs/invalid/{name}") == GOLDEN[name]


def test_every_invalid_file_has_a_golden_entry() -> None:
    on_disk = {p.name for p in INVALID.iterdir() if p.is_file()}
    assert on_disk == set(GOLDEN), "add the new file's messages to GOLDEN, or remove the stale entry"
    assert len(GOLDEN) >= 30


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_messages_are_one_readable_line_each(name: str) -> None:
    prefix = re.compile(rf"^tests/data/specs/invalid/{re.escape(name)}:[1-9][0-9]*: \S")
    for message in GOLDEN[name]:
        assert prefix.match(message), message
        assert "\n" not in message and "\r" not in message
        # raw jsonschema or Python wording that a user should never see
        for leak in (
            "is not valid under any of the given schemas",
            "is not of type",
            "Additional properties",
            "is a required property",
            "NoneType",
            "Traceback",
            "<class",
            "None",
        ):
            assert leak not in message, (leak, message)


def test_golden_messages_are_sorted_by_line() -> None:
    for name, messages in GOLDEN.items():
        lines = [int(m.split(":")[1]) for m in messages]
        assert lines == sorted(lines), name


def test_every_problem_of_a_file_is_reported_at_once(at_root: Path) -> None:
    messages = load_errors("tests/data/specs/invalid/several-problems.yaml")
    fields = [m.split(": ")[1] for m in messages]
    assert fields == ["name", "model.colour", "scoring.features", "deploy.target", "deploy.cpu_cores"]


def test_messages_show_the_path_as_given_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    messages = load_errors(INVALID / "bad-target.yaml")
    shown = Path(messages[0].split(":")[0])
    assert not shown.is_absolute() and (tmp_path / shown).resolve() == INVALID / "bad-target.yaml"


def test_file_checks_can_be_skipped(at_root: Path) -> None:
    loaded = specs.load("tests/data/specs/invalid/missing-model-file.yaml", check_files=False)
    assert loaded.model.source == ROOT / "examples" / "mnist" / "model.pkl"
    # rules that need no file still apply
    with pytest.raises(SpecError) as err:
        specs.load("tests/data/specs/invalid/aci-over-limits.yaml", check_files=False)
    assert err.value.messages == GOLDEN["aci-over-limits.yaml"]


def test_missing_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_errors("nope.yaml") == ["nope.yaml: no such file"]
    (tmp_path / "folder.yaml").mkdir()
    assert load_errors("folder.yaml") == ["folder.yaml: is a directory, not a spec file"]


# -- valid specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(VALID.glob("*.yaml")) + [MNIST], ids=lambda p: p.name)
def test_valid_spec_loads(path: Path) -> None:
    loaded = specs.load(path)
    assert loaded.path == path.resolve()
    assert loaded.name == yaml.safe_load(path.read_text(encoding="utf-8"))["name"]


def test_defaults_are_applied() -> None:
    loaded = specs.load(VALID / "minimal.yaml")
    assert (loaded.description, dict(loaded.tags), loaded.templates) == ("", {}, None)
    assert (loaded.model.version, loaded.model.format, loaded.model.trusted_types) == (1, "joblib", ())
    assert loaded.environment == specs.EnvironmentSpec("3.11", ("conda-forge",), ("scikit-learn", "numpy"), ())
    assert loaded.scoring == specs.ScoringSpec(784, "labels", None)
    t = loaded.test
    assert (t.format, t.label_column, t.scale, t.min_accuracy, t.sample_size, t.seed) == (
        "auto",
        None,
        1.0,
        0.0,
        30,
        42,
    )
    d = loaded.deploy
    assert (d.target, d.cpu_cores, d.memory_gb, d.auth, d.request_timeout_ms, d.ready_timeout_s) == (
        "local",
        1,
        1,
        False,
        5000,
        600,
    )
    local = {"port": 0, "header_timeout_s": 10, "body_timeout_s": 30, "keep_alive_s": 5, "max_connections": 1024}
    assert dict(d.block("local")) == local and dict(d.settings()) == local
    assert set(d.blocks) == {
        "local",
        "azureml",
        "ray",
        "kubernetes",
    }  # every target's settings block, with its defaults
    # the recorded document carries the defaults too: digests and diffs see what will run
    assert loaded.data["deploy"]["request_timeout_ms"] == 5000
    assert loaded.data["environment"]["channels"] == ("conda-forge",)
    assert "labels" not in specs.load(VALID / "npz.yaml").data["test"]  # no default invented for optional fields


def test_relative_paths_resolve_against_the_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the spec's folder: the working directory must not matter
    loaded = specs.load(MNIST)
    example = ROOT / "examples" / "mnist"
    assert loaded.model.source == example / "sklearn_mnist_model.pkl"
    assert loaded.model.file_name == "sklearn_mnist_model.pkl"
    assert loaded.test.images == example / "data" / "test-images.gz"
    assert loaded.test.labels == example / "data" / "test-labels.gz"
    assert loaded.folder == ROOT / "specs"

    # the same spec copied elsewhere resolves against its new folder, through a relative path to it
    other = tmp_path / "elsewhere" / "specs"
    other.mkdir(parents=True)
    shutil.copytree(example, tmp_path / "elsewhere" / "examples" / "mnist", ignore=shutil.ignore_patterns("train-*"))
    shutil.copy(MNIST, other / "mnist.yaml")
    moved = specs.load(Path("elsewhere/specs/mnist.yaml"))
    assert moved.path == other / "mnist.yaml"
    assert moved.model.source == tmp_path / "elsewhere" / "examples" / "mnist" / "sklearn_mnist_model.pkl"
    assert moved.test.images.is_relative_to(tmp_path)


def test_registry_source_and_templates_folder(tmp_path: Path) -> None:
    loaded = specs.load(VALID / "skops-registry.yaml")
    assert loaded.model.source == specs.RegistrySource("azureml", "sklearn_mnist.skops", None)
    assert loaded.model.file_name == "sklearn_mnist.skops"
    assert loaded.model.trusted_types == ("collections.Counter", "sklearn.linear_model._logistic.LogisticRegression")
    assert dict(loaded.deploy.settings())["token_auth"] is False

    (tmp_path / "my-templates").mkdir()
    data = yaml.safe_load(MNIST.read_text())
    data["templates"] = "my-templates"
    data["model"]["source"] = str(ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl")  # absolute stays absolute
    data["test"].update(
        images=str(ROOT / "examples/mnist/data/test-images.gz"), labels=str(ROOT / "examples/mnist/data/test-labels.gz")
    )
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    loaded = specs.load(tmp_path / "s.yaml")
    assert loaded.templates == tmp_path / "my-templates"
    assert loaded.model.source == ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"


def test_records_are_frozen() -> None:
    loaded = specs.load(MNIST)
    for record, attribute in [
        (loaded, "name"),
        (loaded.model, "sha256"),
        (loaded.environment, "python"),
        (loaded.scoring, "features"),
        (loaded.test, "sample_size"),
        (loaded.deploy, "cpu_cores"),
    ]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, attribute, None)
    with pytest.raises(TypeError):
        loaded.tags["data"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        loaded.data["name"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        loaded.deploy.block("local")["port"] = 1  # type: ignore[index]
    assert isinstance(loaded.environment.conda_packages, tuple) and isinstance(
        loaded.data["environment"]["channels"], tuple
    )


def test_tags_are_kept_exactly() -> None:
    assert dict(specs.load(MNIST).tags) == {"data": "MNIST", "method": "sklearn"}
    tricky = specs.load(VALID / "tricky-strings.yaml")
    assert dict(tricky.tags) == {
        "key: with colon": "value # with hash",
        "{{ 7*7 }}": "{% if true %}x{% endif %}",
        "quotes": "'''\"\"\"",
        "emoji": "\U0001f680",
    }
    assert list(tricky.tags) == ["key: with colon", "{{ 7*7 }}", "quotes", "emoji"]  # order as written
    assert tricky.description.endswith("\\ \u2028 \u2713")


def _reversed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed(v) for k, v in reversed(list(value.items()))}
    return value


def test_reordered_keys_give_equal_data(tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    original = yaml.safe_load(MNIST.read_text())
    (folder / "reordered.yaml").write_text(yaml.safe_dump(_reversed(original), sort_keys=False))
    (folder / "flow.yaml").write_text(json.dumps(original, sort_keys=True))  # JSON is YAML too
    first, second, third = specs.load(MNIST), specs.load(folder / "reordered.yaml"), specs.load(folder / "flow.yaml")
    assert next(iter(yaml.safe_load((folder / "reordered.yaml").read_text()))) == "deploy"
    assert first.data == second.data == third.data
    # the records are equal but for where the spec lives (paths through the symlink resolve to the same files)
    assert dataclasses.replace(second, path=first.path) == first
    assert dataclasses.replace(third, path=first.path) == first


# -- the schema and the reference ----------------------------------------------------------------


def _walk_properties(node: Any, where: str = "$") -> list[str]:
    """Every property (in every `properties` mapping, at any depth) that lacks a description."""
    missing = []
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            if not (isinstance(sub, dict) and isinstance(sub.get("description"), str) and sub["description"].strip()):
                missing.append(f"{where}.{key}")
        for key, sub in node.items():
            missing += _walk_properties(sub, f"{where}.{key}" if key != "properties" else where)
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            missing += _walk_properties(sub, f"{where}[{i}]")
    return missing


def test_schema_command_prints_a_valid_draft_2020_12_schema(run_cli) -> None:
    from jsonschema import Draft202012Validator

    result = run_cli("schema")
    assert result.code == 0 and result.err == ""
    schema = json.loads(result.out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema == specs.schema()
    assert _walk_properties(schema) == []
    # every spec we ship is valid against it, before our own rules run
    for path in [MNIST, *sorted(VALID.glob("*.yaml"))]:
        assert list(Draft202012Validator(schema).iter_errors(yaml.safe_load(path.read_text()))) == []


def test_the_published_schema_file_is_the_assembled_schema() -> None:
    # editors read pipeline/schema/spec.schema.json; it must say what validate enforces
    assert specs.SCHEMA_PATH.read_text(encoding="utf-8") == specs.schema_text(), (
        "regenerate it: python -m pipeline schema > pipeline/schema/spec.schema.json"
    )
    assert specs.schema()["properties"]["deploy"]["properties"]["target"]["enum"] == list(targets.TARGETS)


def _unbounded(node: Any, where: str = "$") -> list[str]:
    """Every number without a maximum, string without a length bound, list without maxItems, open mapping without
    maxProperties: what a hostile spec could make as large as its file (a 5,000-digit integer, 100,000 tags)."""
    found = []
    if isinstance(node, dict):
        kind = node.get("type")
        if kind in ("integer", "number") and not {"maximum", "exclusiveMaximum"} & set(node):
            found.append(f"{where}: no maximum")
        bounded_pattern = "pattern" in node and not re.search(r"[+*]|\{\d+,\}", node["pattern"])
        if kind == "string" and "maxLength" not in node and not bounded_pattern and "enum" not in node:
            found.append(f"{where}: no maxLength")
        if kind == "array" and "maxItems" not in node:
            found.append(f"{where}: no maxItems")
        if kind == "object" and node.get("additionalProperties", True) is not False and "maxProperties" not in node:
            found.append(f"{where}: no maxProperties")
        for key, sub in node.items():
            found += _unbounded(sub, f"{where}.{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            found += _unbounded(sub, f"{where}[{i}]")
    return found


def test_every_field_is_bounded() -> None:
    assert _unbounded(specs.schema()) == []
    assert _unbounded(
        {
            "type": "object",
            "properties": {
                "n": {"type": "integer"},
                "s": {"type": "string", "pattern": "^a+$"},
                "ok": {"type": "string", "pattern": "^a{1,3}$"},
            },
        }
    ) == ["$: no maxProperties", "$.properties.n: no maximum", "$.properties.s: no maxLength"]
    tags = specs.schema()["properties"]["tags"]
    assert (tags["maxProperties"], tags["additionalProperties"]["maxLength"]) == (50, 256)  # Azure's own limits


def test_property_walk_finds_a_missing_description() -> None:
    schema = {
        "properties": {
            "a": {"description": "x", "type": "object", "properties": {"b": {"oneOf": [{"properties": {"c": {}}}]}}}
        }
    }
    assert _walk_properties(schema) == ["$.a.b", "$.a.b.oneOf[0].c"]


def test_readme_spec_reference_matches_the_schema(run_cli) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^<!-- spec-reference\b[^\n]*-->\n(.*?)^<!-- /spec-reference -->$", readme, re.S | re.M)
    assert block, "README.md lost its <!-- spec-reference --> ... <!-- /spec-reference --> block"
    assert block.group(1) == specs.reference(), "regenerate it: python -m pipeline schema --markdown"
    result = run_cli("schema", "--markdown")
    assert result.code == 0 and result.out == specs.reference()
    for key in ("`deploy.local.port`", "`model.source`", "`test.sample_size`", "`environment.python`"):
        assert key in block.group(1)


# -- validate stays light ------------------------------------------------------------------------

VALIDATE_PROBE = """
import sys, time, glob
import pipeline.cli
start = time.perf_counter()
code = pipeline.cli.main(['validate', 'specs/mnist.yaml'])
print('modules', 'sklearn' in sys.modules, 'matplotlib' in sys.modules, 'numpy' in sys.modules, 'jinja2' in sys.modules)
files = sorted(glob.glob('specs/*.yaml') + glob.glob('tests/data/specs/valid/*.yaml') + glob.glob('tests/data/specs/invalid/*.yaml'))
start_all = time.perf_counter()
pipeline.cli.main(['validate', '--quiet', *files])
print('seconds', time.perf_counter() - start_all, len(files), code)
"""


def test_validate_imports_no_heavy_modules_and_is_fast() -> None:
    proc = subprocess.run([sys.executable, "-c", VALIDATE_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert "modules False False False False" in lines, proc.stdout + proc.stderr
    seconds, count, code = next(line.split()[1:] for line in lines if line.startswith("seconds"))
    assert code == "0" and int(count) > 50
    assert float(seconds) < 3.0, f"validating {count} files took {seconds} s"
