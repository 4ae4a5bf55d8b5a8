from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.md"))
#: Tutorials that read a real dataset from shared/data (never shipped; see conftest.shared_data).
SHARED_DATA_TUTORIALS = {
    "integration": "pbmc_3tech_batches_counts.h5ad",
    "reference_mapping": "pbmc_3tech_batches_counts.h5ad",
}


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_executes(path, tmp_path, request, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    if path.stem in SHARED_DATA_TUTORIALS:
        folder = request.getfixturevalue("shared_data")  # skips when shared/data is absent
        if not (folder / SHARED_DATA_TUTORIALS[path.stem]).is_file():
            pytest.skip(f"real dataset {SHARED_DATA_TUTORIALS[path.stem]} not found in {folder}")
        monkeypatch.setenv("SCDLKIT_SHARED_DATA", str(folder))  # the kernel inherits it
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
