"""The IPython extension (``%load_ext evkit``) in a real Jupyter kernel.

A notebook is built here, cell by cell, and executed top to bottom by nbclient in a
kernel running this interpreter (as ``test_notebooks.py`` does); the assertions read the
outputs the frontend would receive, in order.
"""

from __future__ import annotations

import json
import re
from typing import Any

import nbformat
import pytest

from tests.test_notebooks import NOTEBOOK_TIMEOUT, execute

SETUP = """\
%load_ext evkit
import json, time, logging
import evkit

logging.getLogger("orders").addHandler(evkit.LoggingHandler())
logging.getLogger("orders").setLevel(logging.INFO)

@evkit.emits("http.get", fields=lambda path: {"path": path})
def get(path):
    time.sleep(0.01)
    return {"path": path}
"""

TRACED = """\
%%trace orders.load -o loaded
rows = [get("/orders"), get("/customers")]
with evkit.span("pandas.merge", rows=len(rows)):
    logging.getLogger("orders").info("merged %d", len(rows))
print("cell ran")
len(rows)
"""

CHECK = """\
df = loaded.events
print(json.dumps({
    "status": loaded.span.status,
    "correlation": sorted(set(df["correlation_id"])),
    "id": loaded.correlation_id,
    "types": list(df["type"]),
    "parents": sorted(set(df.loc[df["type"] == "http.get.started", "parentSpanId"])),
    "root": loaded.span.span_id,
    "log_span": df.loc[df["type"] == "log.info", "spanId"].iloc[0],
    "merge_span": df.loc[df["type"] == "pandas.merge.started", "spanId"].iloc[0],
    "path": list(loaded.critical_path()["operation"]),
}))
"""

FAILING = """\
%%trace orders.fail -o failed
get("/orders")
raise ValueError("no such customer")
"""

FAILED_CHECK = """\
print(json.dumps({"status": failed.span.status, "types": list(failed.events["type"])}))
"""

SERVE = """\
srv = %evkit serve
again = %evkit serve
print(json.dumps({"same": srv is again, "running": srv.running, "url": srv.url}))
"""

TAIL = """\
%evkit tail 3
"""

STATUS = """\
%evkit status
"""

STOP = """\
%evkit stop
%evkit stop
print(json.dumps({"servers": len(evkit.running_servers())}))
"""

AWAITING = """\
%%trace orders.async
import asyncio
await asyncio.sleep(0)
"""


def stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(
        output.text
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def json_line(cell: nbformat.NotebookNode) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout(cell).strip().splitlines()[-1])
    return result


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def kinds(cell: nbformat.NotebookNode) -> list[str]:
    return [output.output_type for output in cell.outputs]


@pytest.mark.notebook
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
def test_trace_magic_and_evkit_verbs_in_a_real_kernel() -> None:
    sources = [SETUP, TRACED, CHECK, FAILING, FAILED_CHECK, SERVE, TAIL, STATUS, STOP, AWAITING]
    cells = [nbformat.v4.new_code_cell(source) for source in sources]
    for index in (3, 9):
        cells[index].metadata["tags"] = ["raises-exception"]
    nb = nbformat.v4.new_notebook(cells=cells)

    execute(nb, "ipython-extension.ipynb")
    setup, traced, check, failing, failed_check, serve, tail, status, stop, awaiting = nb.cells

    assert kinds(setup) == []
    # The cell's own output, its value, then the chart: no plotting call in the cell.
    assert kinds(traced) == ["stream", "execute_result", "display_data"]
    assert stdout(traced) == "cell ran\n"
    assert traced.outputs[1]["data"]["text/plain"] == "2"
    chart = traced.outputs[2]["data"]
    assert {"application/vnd.vegalite.v5+json", "image/png"} <= set(chart)

    trace = json_line(check)
    assert trace["status"] == "completed"
    assert trace["correlation"] == [trace["id"]]
    assert trace["id"].startswith("orders.load-")
    assert trace["types"][0] == "orders.load.started"
    assert trace["types"][-1] == "orders.load.completed"
    assert trace["parents"] == [trace["root"]]  # @emits calls are children of the cell
    assert trace["log_span"] == trace["merge_span"]  # the log line sits in its span
    assert trace["path"][0] == "orders.load"

    # A failing cell: the chart first, then the traceback of the cell's own code.
    assert kinds(failing) == ["display_data", "error"]
    assert "image/png" in failing.outputs[0]["data"]
    error = failing.outputs[1]
    assert (error["ename"], error["evalue"]) == ("ValueError", "no such customer")
    traceback = "\n".join(error["traceback"])
    assert 'raise ValueError("no such customer")' in _plain(traceback)
    assert "Cell In[4], line 3" in _plain(traceback)  # named as IPython names the cell
    failed = json_line(failed_check)
    assert failed["status"] == "failed"
    assert failed["types"][-1] == "orders.fail.failed"

    served = json_line(serve)
    assert served == {"same": True, "running": True, "url": served["url"]}
    assert len(tail.outputs) == 1
    assert "text/html" in tail.outputs[0]["data"]  # a DataFrame of the latest 3 events
    assert any(
        "evkit Collector" in output.get("data", {}).get("text/html", "")
        for output in status.outputs
    )
    assert "stopped ws://" in stdout(stop)
    assert "no server to stop" in stdout(stop)
    assert json_line(stop) == {"servers": 0}

    [refusal] = awaiting.outputs
    assert (refusal["name"], refusal["text"].split(":")[0]) == ("stderr", "UsageError")
    assert "async with evkit.span" in refusal["text"]
