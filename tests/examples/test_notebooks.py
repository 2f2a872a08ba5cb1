"""Every example notebook runs top to bottom with nbclient against a real local stack."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.kernel.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_notebook(stack: LocalStack, name: str, workdir: Path) -> Any:
    source = EXAMPLES / name
    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "outputs must be stripped"
    shutil.copy(source, workdir / name)
    specs = KernelSpecManager()
    specs.kernel_dirs = [str(stack.jupyter_path / "kernels"), *specs.kernel_dirs]
    km = KernelManager(kernel_name=notebook.metadata.kernelspec.name, kernel_spec_manager=specs)
    client = NotebookClient(
        notebook, km=km, timeout=180, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute(env=stack.env(REXEC_QUIET="1"), cwd=str(workdir))
    return notebook


def text_of(cell: Any) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(str(output.data.get("text/plain", "")))
    return "".join(parts)


def test_kernel_quickstart(local_stack, tmp_path):
    nb = run_notebook(local_stack, "kernel_quickstart.ipynb", tmp_path)
    codes = [c for c in nb.cells if c.cell_type == "code"]
    assert "running on" in text_of(codes[0])
    assert text_of(codes[1]) == "55" and text_of(codes[2]) == "110"
    assert "done" in text_of(codes[3])
    assert "caught on the worker" in text_of(codes[-1])


def test_magics_quickstart(local_stack, tmp_path):
    nb = run_notebook(local_stack, "magics_quickstart.ipynb", tmp_path)
    codes = [c for c in nb.cells if c.cell_type == "code"]
    by_source = {c.source.splitlines()[0]: c for c in codes}
    assert "worker: default (pid" in text_of(by_source["%rexec_status"])
    assert text_of(by_source["%rexec print(remote_answer)"]) == "42\n"
    assert text_of(by_source["%rexec_pull average"]) == "3.5"
    live = next(c for c in codes if c.source.startswith("%%rexec\nimport os"))
    assert [o.output_type for o in live.outputs] == ["display_data"]  # the widget
    widget_state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    shown = [
        m["state"].get("outputs")
        for m in widget_state.values()
        if m["model_name"] == "OutputModel" and m["state"].get("outputs")
    ]
    assert any("working 100%" in str(outputs) for outputs in shown)
    raised = next(c for c in codes if "raises-exception" in c.metadata.get("tags", []))
    assert [o.ename for o in raised.outputs if o.output_type == "error"] == ["RemoteCellError"]


def test_remote_func_quickstart(local_stack, tmp_path):
    nb = run_notebook(local_stack, "remote_func_quickstart.ipynb", tmp_path)
    codes = [c for c in nb.cells if c.cell_type == "code"]
    assert text_of(codes[0]) == "111"
    assert text_of(codes[1]) == "[118, 178, 261, 350]"
    assert "searched 1000 numbers on the worker" in text_of(codes[2])
    assert "(871, 178)" in text_of(codes[2])
    assert "raised remotely: ZeroDivisionError" in text_of(codes[3])
    assert text_of(codes[4]) == "111"


def test_environments(local_stack, tmp_path):
    nb = run_notebook(local_stack, "environments.ipynb", tmp_path)
    codes = [c for c in nb.cells if c.cell_type == "code"]
    assert "six 1.16.0 is importable on the worker" in text_of(codes[2])
    assert "variables kept: False" in text_of(codes[2])
    assert "already active" in text_of(codes[5]) and "active environment " in text_of(codes[5])
    assert "six 1.16.0 again" not in text_of(codes[6]) and "again" in text_of(codes[6])
    raised = next(c for c in codes if "raises-exception" in c.metadata.get("tags", []))
    # IPython prints a UsageError (no traceback) instead of an error output
    assert "UsageError: requirements line 1" in text_of(raised)
