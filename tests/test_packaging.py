"""Packaging: a built wheel ships the templates and the schema, and an installed copy finds and renders them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [
    "pipeline/__main__.py",
    "pipeline/templates/score.py.j2",
    "pipeline/templates/myenv.yml.j2",
    "pipeline/schema/spec.schema.json",
]
# the target configs live in a subfolder, which package_data globs do not reach on their own
AZUREML_TEMPLATES = [
    "pipeline/templates/azureml/aciconfig.json.j2",
    "pipeline/templates/azureml/aksconfig.json.j2",
    "pipeline/templates/azureml/deployment.yml.j2",
    "pipeline/templates/azureml/endpoint.yml.j2",
]

pytestmark = pytest.mark.slow

PROBE = """
import json, sys
import pipeline, pipeline.render as render, pipeline.spec as specs
out = {"package": pipeline.__file__, "templates": str(render.builtin_templates()), "schema": str(specs.SCHEMA_PATH)}
out["files"] = render.render_all(specs.load(sys.argv[1]))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The project built from a clean copy of its sources: (folder holding the installed files, how it was built).

    A wheel via `pip wheel --no-build-isolation` when the venv can build one; the venv has setuptools but
    may lack the `wheel` package (setuptools < 70.1 needs it for bdist_wheel), and nothing is installed
    for this test: then setuptools' build_py, which lays out exactly the files a wheel's purelib holds.
    """
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment; cannot build the project without network")
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    source.mkdir()
    for name in ("pipeline", "templates"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    wheel_dir = tmp / "dist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(wheel_dir),
            str(source),
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    installed = tmp / "installed"
    if proc.returncode == 0:
        (wheel,) = wheel_dir.glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(installed)
        return installed, "wheel"
    if "bdist_wheel" not in proc.stdout + proc.stderr:
        pytest.fail(f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(installed),
        ],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return installed, "build_py"


def test_build_ships_templates_and_schema(built: tuple[Path, str]) -> None:
    folder, _how = built
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    missing = [name for name in SHIPPED if name not in files]
    assert not missing, f"not in the built package: {missing}"
    assert not any(name.startswith(("tests/", "examples/", "specs/")) for name in files)
    assert (folder / "pipeline/templates/score.py.j2").read_bytes() == (ROOT / "templates/score.py.j2").read_bytes()


def test_build_ships_the_azureml_templates(built: tuple[Path, str]) -> None:
    folder, _how = built
    assert [name for name in AZUREML_TEMPLATES if not (folder / name).is_file()] == []


def probe(folder: Path, spec: Path, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(folder)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(spec)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_installed_copy_finds_its_templates_and_renders(built: tuple[Path, str], tmp_path: Path) -> None:
    from pipeline import render
    from pipeline import spec as specs

    folder, _how = built
    out = probe(folder, ROOT / "specs" / "mnist.yaml", cwd=tmp_path)
    assert Path(out["package"]).parent == folder / "pipeline"  # the built copy, not the checkout
    assert Path(out["templates"]) == folder / "pipeline" / "templates"
    assert Path(out["schema"]) == folder / "pipeline" / "schema" / "spec.schema.json"
    # byte for byte what the checkout renders
    assert out["files"] == render.render_all(specs.load(ROOT / "specs" / "mnist.yaml"))


@pytest.mark.parametrize("name", ["mnist-aci.yaml", "mnist-aks.yaml"])
def test_installed_copy_renders_the_azure_configs(name: str, built: tuple[Path, str], tmp_path: Path) -> None:
    from pipeline import render
    from pipeline import spec as specs

    folder, _how = built
    out = probe(folder, ROOT / "specs" / name, cwd=tmp_path)
    assert out["files"] == render.render_all(specs.load(ROOT / "specs" / name))


def test_installed_copy_renders_the_kubernetes_manifests(built: tuple[Path, str], tmp_path: Path) -> None:
    """The templates in templates/kubernetes/ ship, and image/ takes the scoring host from the installed package."""
    pytest.importorskip("kubernetes_validate")
    from pipeline import render
    from pipeline import spec as specs

    folder, _how = built
    out = probe(folder, ROOT / "specs" / "mnist-kubernetes.yaml", cwd=tmp_path)
    assert out["files"] == render.render_all(specs.load(ROOT / "specs" / "mnist-kubernetes.yaml"))
    assert "image/pipeline/serve/supervisor.py" in out["files"] and "k8s/hpa.yaml" in out["files"]
