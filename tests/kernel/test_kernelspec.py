"""The kernelspec: the pure kernel dict, the shipped kernel.json and ``install``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from rexec_kernel.history import CellHistory
from rexec_kernel.kernelspec import DISPLAY_NAME, KERNEL_NAME, make_kernel_dict

SHIPPED = Path(__file__).resolve().parents[2] / "rexec_kernel" / "resources" / "kernel.json"


def test_kernel_dict_starts_this_module():
    spec = make_kernel_dict("/opt/py/bin/python")
    assert spec["argv"] == ["/opt/py/bin/python", "-m", "rexec_kernel", "-f", "{connection_file}"]
    assert spec["display_name"] == DISPLAY_NAME == "Rexec (remote)"
    assert spec["language"] == "python"
    assert spec["interrupt_mode"] == "signal"


def test_shipped_kernel_json_is_the_pure_dict_for_any_python():
    # jupyter_client replaces a bare "python" with the interpreter that runs Jupyter.
    assert json.loads(SHIPPED.read_text()) == make_kernel_dict("python")


def test_install_into_a_prefix_is_found_by_jupyter(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "rexec_kernel", "install", "--prefix", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    kernel_dir = tmp_path / "share" / "jupyter" / "kernels" / KERNEL_NAME
    assert str(kernel_dir) in done.stdout
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir.parent)])
    spec = specs.get_kernel_spec(KERNEL_NAME)
    assert spec.display_name == "Rexec (remote)"
    assert spec.argv[0] == sys.executable


def test_install_refuses_two_locations():
    done = subprocess.run(
        [sys.executable, "-m", "rexec_kernel", "install", "--user", "--sys-prefix"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "not allowed with argument" in done.stderr


def test_history_tail_range_and_search():
    history = CellHistory()
    for count, source in enumerate(["a = 1", "b = 2", "a = 1", "print(a)"], start=1):
        history.add(count, source)
    assert history.tail(2) == [(0, 3, "a = 1"), (0, 4, "print(a)")]
    assert history.range(2, 4) == [(0, 2, "b = 2"), (0, 3, "a = 1")]
    assert history.search("a =*") == [(0, 1, "a = 1"), (0, 3, "a = 1")]
    assert history.search("a =*", unique=True) == [(0, 3, "a = 1")]
    assert history.search("*", n=1) == [(0, 4, "print(a)")]
