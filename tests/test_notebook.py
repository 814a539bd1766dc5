"""examples/mnist/deploy.ipynb, the tutorial's part 2 on the Python API: kept without outputs, and it runs.

The run executes every cell headless (nbclient, a real ipykernel) in a copy of the project, against the real
local target: a scoring service started on 127.0.0.1, scored through svc.run and a raw requests.post, deleted.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, _stop_services, _stop_strays

NOTEBOOK = ROOT / "examples" / "mnist" / "deploy.ipynb"
PNG = b"\x89PNG\r\n\x1a\n"

nbformat = pytest.importorskip("nbformat")


def _by_tag(nb) -> dict[str, dict]:
    return {tag: cell for cell in nb.cells for tag in cell.metadata.get("tags", [])}


def _text(cell) -> str:
    parts = []
    for out in cell.outputs:
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _png(cell) -> bytes:
    images = [out["data"]["image/png"] for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(images) == 1, f"expected one figure, got {len(images)}: {cell.outputs}"
    return base64.b64decode(images[0])


def test_the_notebook_is_kept_with_its_outputs_stripped() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"outputs left in: {cell.source[:60]!r}"
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, nb.metadata  # no widget state, no run times
    # the tutorial's steps, each in its own cell
    steps = {"evaluate", "confusion-figure", "deploy", "svc-run", "samples-plot", "requests", "delete"}
    assert steps <= set(_by_tag(nb))


def _project_copy(tmp_path: Path) -> Path:
    """What a fresh clone holds that the notebook uses: the specs and the example (data, model); its own state."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "specs", root / "specs")
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__", ".ipynb_*"))
    (root / ".pipeline").mkdir()  # the project root marker, as a clone's .git would be
    return root


def _local_files() -> list[str]:
    return sorted(
        str(p) for folder in (ROOT / ".pipeline", ROOT / "reports") if folder.exists() for p in folder.rglob("*")
    )


@pytest.mark.slow
def test_the_notebook_runs_end_to_end_against_the_local_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    root = _project_copy(tmp_path)
    for name in ("PIPELINE_HOME", "PIPELINE_REPORTS", "PIPELINE_STATE", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)  # the kernel inherits this environment: only the copy is touched
    monkeypatch.setenv("NO_COLOR", "1")
    before = _local_files()
    nb = nbformat.read(root / "examples" / "mnist" / "deploy.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root / "examples" / "mnist")}}
    )
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    finally:
        _stop_services(root / ".pipeline")
        _stop_strays(root)
    cells = _by_tag(nb)

    assert "Overall accuracy: 0.887" in _text(cells["evaluate"])
    assert _png(cells["confusion-figure"]).startswith(PNG)
    assert "text/markdown" in cells["per-class"].outputs[0]["data"]
    assert "deploy" in _text(cells["deploy"]) and "smoke" in _text(cells["deploy"])
    uri = _text(cells["scoring-uri"]).strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/score", uri), uri
    answers = json.loads(_text(cells["svc-run"]).strip())
    assert len(answers) == 30 and all(isinstance(a, int) and 0 <= a <= 9 for a in answers)
    assert _png(cells["samples-plot"]).startswith(PNG)
    assert _text(cells["smoke-figure"]).startswith("True ") and _png(cells["smoke-figure"]).startswith(PNG)
    raw = _text(cells["requests"])
    assert f"POST to url {uri}" in raw and re.search(r"prediction: \[\d\]", raw), raw
    assert "running init()" in _text(cells["logs"])
    assert "Deployment report" in cells["report"].outputs[0]["data"]["text/markdown"]
    assert "stopped service process" in _text(cells["delete"])

    state = json.loads((root / ".pipeline" / "sklearn-mnist-svc" / "state.json").read_text())
    assert state["service"] is None and state["history"][-1]["command"].startswith("delete ")
    assert (root / "reports" / "sklearn-mnist-svc" / "report.md").is_file()
    pid = re.search(r"stopped service process (\d+)", _text(cells["delete"]))
    assert pid and not _running(int(pid.group(1)))
    assert _local_files() == before  # nothing was written to the repository's own state or reports


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited: only its parent's wait is missing
