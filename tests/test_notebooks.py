"""Every notebook runs top to bottom with small settings (IL2TREG_NOTEBOOK_SMALL=1) and no error."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # `make test-all` and CI run these; `make test` leaves them out

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_six_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_simulate_lupil2", "02_fit_treg_dynamics", "03_alternative_regimens", "04_sledai_link_and_trials", "05_batch_fits",
        "06_write_a_model",
    ]  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_small_settings(path, monkeypatch, tmp_path):
    monkeypatch.setenv("IL2TREG_NOTEBOOK_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel shows figures inline
    book = nbformat.read(path, as_version=4)
    # run in a scratch copy of the folder layout so that nothing is written into notebooks/
    work = tmp_path / "notebooks"
    work.mkdir()
    (tmp_path / "fits").symlink_to(path.parents[1] / "fits")
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert images >= 1, "every notebook shows at least one figure"
