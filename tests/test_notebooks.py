"""Execute every notebook in notebooks/ (with JIT_JAX_SMALL=1) so that none of them rots."""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


# curvature, boundary_2d, sigmoid and objectives take 10-45 s each; their maths is tested in
# test_curvature, test_toys and test_objectives (which runs the objectives as methods too), and
# they run with -m slow. The quickstart stays in the default suite.
_SLOW_NOTEBOOKS = {"curvature.ipynb", "boundary_2d.ipynb", "sigmoid.ipynb", "objectives.ipynb"}
_PARAMS = [pytest.param(p, marks=pytest.mark.slow) if p.name in _SLOW_NOTEBOOKS else p
           for p in NOTEBOOKS]


@pytest.mark.parametrize("path", _PARAMS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JIT_JAX_SMALL", "1")  # os.environ: the kernel inherits it
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: stored with outputs; strip them"
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError (with the failing cell and traceback) on failure
