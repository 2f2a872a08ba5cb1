"""The ``rexec`` kernelspec: a pure ``make_kernel_dict()`` and a small ``install()``.

``pip install rexec[jupyter]`` installs the spec as shared data
(``share/jupyter/kernels/rexec/kernel.json``); ``python -m rexec_kernel install`` writes it
for this interpreter, for the user or into a prefix::

    $ python -m rexec_kernel install --user
    Installed kernelspec rexec in ~/.local/share/jupyter/kernels/rexec
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

KERNEL_NAME = "rexec"
DISPLAY_NAME = "Rexec (remote)"


def make_kernel_dict(executable: str | None = None) -> dict[str, Any]:
    """The ``kernel.json`` content that starts the Rexec kernel with ``executable``.

    >>> make_kernel_dict("python")["argv"]
    ['python', '-m', 'rexec_kernel', '-f', '{connection_file}']
    """
    return {
        "argv": [executable or sys.executable, "-m", "rexec_kernel", "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False},
        "kernel_protocol_version": "5.3",
    }


def write_kernel_spec(path: Path | None = None, executable: str | None = None) -> Path:
    """Write a kernelspec directory (``kernel.json``) to ``path`` or a new temporary one."""
    target = path or Path(tempfile.mkdtemp(suffix="_kernels")) / KERNEL_NAME
    target.mkdir(parents=True, exist_ok=True)
    spec = json.dumps(make_kernel_dict(executable), indent=1) + "\n"
    (target / "kernel.json").write_text(spec)
    return target


def install(
    *, user: bool = False, prefix: str | None = None, kernel_name: str = KERNEL_NAME
) -> str:
    """Install the kernelspec with jupyter_client; return the directory it went to."""
    from jupyter_client.kernelspec import KernelSpecManager

    staging = Path(tempfile.mkdtemp(suffix="_kernels"))
    try:
        source = write_kernel_spec(staging / kernel_name)
        return str(
            KernelSpecManager().install_kernel_spec(
                str(source), kernel_name, user=user, prefix=prefix
            )
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m rexec_kernel install [--user | --sys-prefix | --prefix DIR] [--name NAME]``."""
    parser = argparse.ArgumentParser(
        prog="python -m rexec_kernel install",
        description="Install the 'Rexec (remote)' Jupyter kernelspec for this Python.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user only")
    where.add_argument(
        "--sys-prefix", action="store_true", help=f"install into {sys.prefix} (this environment)"
    )
    where.add_argument("--prefix", help="install into this prefix (share/jupyter/kernels)")
    parser.add_argument("--name", default=KERNEL_NAME, help="kernelspec name (default: rexec)")
    args = parser.parse_args(argv)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        path = install(user=args.user, prefix=prefix, kernel_name=args.name)
    except OSError as exc:
        print(f"cannot install the kernelspec: {exc}; try --user or --sys-prefix", file=sys.stderr)
        return 1
    print(f"Installed kernelspec {args.name} in {path}")
    return 0
