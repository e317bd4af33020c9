"""The Colab notebook, top to bottom, in a fresh kernel: a new virtual environment with nothing but ipykernel,
the project cloned from a file:// URL of this repository (its committed HEAD), installed by the notebook's own
setup cell (the tiny model: the default model's packages are skipped), then trained, solved, evaluated, plotted."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab_quickstart.ipynb"
PROJECT_PACKAGES = ("training", "models", "data", "inference", "evaluation", "sandbox", "reasoning", "common", "scoring")


def code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_the_first_code_cell_gets_and_installs_the_project_before_anything_imports_it():
    first, *rest = code_cells()
    assert "quickstart.sh\", \"setup\"" in first and "git\", \"clone\"" in first
    assert not any(f"import {p}" in first or f"from {p}" in first for p in PROJECT_PACKAGES)
    assert any("from training" in c for c in rest)
    assert 'MODEL = "tiny"' in first


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_in_a_fresh_kernel(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["ipykernel"], check=True)
    subprocess.run([str(python), "-m", "ipykernel", "install", "--prefix", str(venv), "--name", "advcode-fresh"],
                   check=True, capture_output=True)
    monkeypatch.setenv("JUPYTER_PATH", str(venv / "share" / "jupyter"))
    monkeypatch.setenv("ADVCODE_REPO_URL", ROOT.as_uri())
    monkeypatch.setenv("ADVCODE_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.delenv("PYTHONPATH", raising=False)  # nothing of this checkout may leak into the kernel
    monkeypatch.setenv("TQDM_DISABLE", "1")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, kernel_name="advcode-fresh", timeout=1500,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    text = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))
    assert "installing the project and its dependencies" in text  # the fresh environment had nothing
    assert "installing the default model" not in text  # skipped for the tiny model
    assert "generator reward" in text and "## understand" in text and "pass@2" in text
    project = tmp_path / "project"
    assert (project / ".git").is_dir() and (project / "runs/colab/eval/report.json").exists()
    assert (project / "runs/colab/checkpoints/latest.json").exists()
    installed = subprocess.run([str(python), "-c", "import training, sys; print(training.__file__)"],
                               capture_output=True, text=True, cwd=tmp_path)
    assert installed.returncode == 0 and str(project) in installed.stdout  # the clone, installed editable
