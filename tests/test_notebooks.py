"""The notebooks in ``notebooks/``, executed top to bottom in a real Jupyter kernel.

The kernel runs this test's own interpreter (``sys.executable``), so the evkit under test
is the one the notebooks import, whatever kernelspecs the machine has installed. Any
cell error fails the test (nbclient raises ``CellExecutionError`` with the traceback), as
does a warning or traceback written to a cell's stderr, or a chart cell that shows no
image. Executed copies, outputs included, go to ``artifacts/notebooks/`` (git-ignored)
for inspection.

The quick start is also run twice in one kernel, the way a user re-runs a notebook: the
second run must succeed, give a DataFrame with the same columns, and leave no more
threads alive than the first (evkit keeps one loop thread; the last cell stops the
collector and the server).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "artifacts" / "notebooks"
QUICKSTART = NOTEBOOKS / "01-quickstart.ipynb"
CELL_TIMEOUT = 120
# Whole-notebook budget for pytest-timeout: kernel start plus a few slow cells, well
# over the usual ten seconds, so a hung cell is reported by nbclient's cell timeout.
NOTEBOOK_TIMEOUT = 600
# What in a cell's stderr means something went wrong (plain notices such as
# matplotlib's "building the font cache" on a fresh machine do not).
STDERR_PROBLEM = re.compile(r"Warning|Error|Traceback|evkit")

PROBE = """\
import json, sys, threading
import evkit, evkit.analysis
print(json.dumps({
    "executable": sys.executable,
    "columns": sorted(map(str, col.df.columns)),
    "operations": sorted(evkit.analysis.bottlenecks(col.df).index),
    "collector": col.stats["state"],
    "servers": len(evkit.running_servers()),
    "threads": threading.active_count(),
    "thread_names": sorted(thread.name for thread in threading.enumerate()),
}))
"""


class ThisInterpreterKernelManager(AsyncKernelManager):
    """Starts ipykernel with this process's interpreter, not what a kernelspec names."""

    @property
    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (tests)",
            language="python",
        )


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def execute(nb: nbformat.NotebookNode, artifact_name: str) -> float:
    """Run every cell of ``nb`` in one fresh kernel (outputs land in ``nb``); save a copy.

    Returns the seconds it took. The executed notebook is saved even when a cell fails,
    so the artifact shows the failing cell's traceback.
    """
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        kernel_manager_class=ThisInterpreterKernelManager,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    started = time.perf_counter()
    try:
        client.execute()
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / artifact_name)
    return time.perf_counter() - started


def stderr_problems(nb: nbformat.NotebookNode) -> list[str]:
    return [
        f"cell {index}: {output['text'].strip()}"
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
        and output.name == "stderr"
        and STDERR_PROBLEM.search(output.text)
    ]


def charts_not_shown(nb: nbformat.NotebookNode) -> list[str]:
    """Cells ending in a ``plot_...`` call whose figure did not display as an image."""
    missing = []
    for index, cell in enumerate(nb.cells):
        lines = cell.source.strip().splitlines()
        if cell.cell_type != "code" or not lines or "plot_" not in lines[-1]:
            continue
        if not any("image/png" in output.get("data", {}) for output in cell.outputs):
            shown = [output.get("data", {}).get("text/plain") for output in cell.outputs]
            missing.append(f"cell {index} ({lines[-1].strip()}) showed {shown}")
    return missing


def probe_result(cell: nbformat.NotebookNode) -> dict[str, Any]:
    text = "".join(
        output.text
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )
    result: dict[str, Any] = json.loads(text)
    return result


def test_notebooks_are_committed_without_outputs() -> None:
    paths = notebook_paths()
    assert paths, f"no notebooks found in {NOTEBOOKS}"
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = [
            index
            for index, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
        ]
        assert not dirty, (
            f"{path.name}: code cells {dirty} were saved with outputs or execution counts; "
            "clear them before committing (e.g. jupyter nbconvert --clear-output --inplace)"
        )


@pytest.mark.notebook
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("path", notebook_paths(), ids=lambda path: path.name)
def test_notebook_runs_top_to_bottom(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)

    seconds = execute(nb, path.name)

    print(f"{path.name}: executed in {seconds:.1f} s")
    assert not stderr_problems(nb), "\n".join(stderr_problems(nb))
    assert not charts_not_shown(nb), "\n".join(charts_not_shown(nb))


@pytest.mark.notebook
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
def test_quickstart_runs_twice_in_one_kernel() -> None:
    quickstart = nbformat.read(QUICKSTART, as_version=4)
    code_cells = [cell.source for cell in quickstart.cells if cell.cell_type == "code"]
    sources = [*code_cells, PROBE, *code_cells, PROBE]
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in sources],
        metadata=quickstart.metadata,
    )

    seconds = execute(nb, "01-quickstart.twice.ipynb")

    print(f"quick start twice in one kernel: {seconds:.1f} s")
    first = probe_result(nb.cells[len(code_cells)])
    second = probe_result(nb.cells[-1])
    assert first["executable"] == sys.executable
    assert second["columns"] == first["columns"]
    assert second["operations"] == first["operations"]
    for run in (first, second):
        assert run["collector"] == "stopped"
        assert run["servers"] == 0
    assert second["threads"] <= first["threads"], (
        f"threads alive after the first run: {first['thread_names']}; "
        f"after the second: {second['thread_names']}"
    )
    assert not stderr_problems(nb), "\n".join(stderr_problems(nb))
    assert not charts_not_shown(nb), "\n".join(charts_not_shown(nb))
