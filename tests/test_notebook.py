"""notebooks/quickstart.ipynb: committed without outputs, and it runs headless end to end.

The run registers a tiny trained checkpoint as the `champion` in a temporary MLflow store and executes
the notebook with nbclient in a fresh kernel (the virtualenv's python), offline, in tmp_path: the
notebook finds the model through the registry as a user's would after `make main`.
"""
from __future__ import annotations

from pathlib import Path

import mlflow
import nbformat
import pytest

from helpers import make_checkpoint
from pfgm import data as pdata

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_committed_notebook_is_valid_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code"
    stripped = [cell for cell in code if cell.outputs == [] and cell.execution_count is None]
    assert len(stripped) == len(code), "outputs are committed: clear them (Jupyter: Edit > Clear Outputs of All Cells)"
    assert notebook.metadata.kernelspec.name == "python3"


def _outputs(cell) -> tuple[str, list[str]]:
    """The text a cell printed and the mime types of its rich outputs."""
    text = "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")
    rich = [kind for out in cell.outputs if out.output_type == "display_data" for kind in out.data]
    return text, rich


@pytest.mark.slow
def test_notebook_runs_headless_on_the_registered_champion(tracking, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    from flows.registry import log_pyfunc, register

    data = tmp_path / "prepared"
    pdata.write_prepared(pdata.build_digits(seed=0, test_fraction=0.167), data)
    checkpoint = make_checkpoint(tmp_path / "trained" / "model.pt", data=pdata.load_split(data, "train"), steps=30)
    with mlflow.start_run() as run:
        info = log_pyfunc(checkpoint)
    register(info.model_uri, "quickstart-test", run_id=run.info.run_id, metrics={"fid": 1.0}, champion_metric="fid")

    # The kernel inherits this environment: the registry store of `tracking`, and every Jupyter,
    # IPython and matplotlib folder under tmp_path.
    for name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR", "MPLCONFIGDIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("PFGM_CHECKPOINT", raising=False)
    monkeypatch.setenv("PFGM_MODEL_NAME", "quickstart-test")
    monkeypatch.setenv("PFGM_DATA", str(data))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # jupyter_client starts the python3 kernel with sys.executable: this virtualenv's python.
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors
    loaded, samples, interpolation, norms = (_outputs(cell) for cell in code[1:5])
    assert "champion: quickstart-test version 1" in loaded[0] and "FieldMLP, objective pfgm" in loaded[0]
    assert "64 samples, NFE 39" in samples[0] and "image/png" in samples[1]
    assert "encoded and decoded in" in interpolation[0] and "image/png" in interpolation[1]
    assert "sampling: 39 heights" in norms[0] and "training (perturbed): " in norms[0] and "image/png" in norms[1]
    assert nbformat.read(NOTEBOOK, as_version=4).cells[1].outputs == [], "the committed file is left unexecuted"
