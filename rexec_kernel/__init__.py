"""The "Rexec (remote)" Jupyter kernel: every cell runs on your Rexec worker.

Install the kernelspec (``pip install "rexec[jupyter]"`` does it, or
``python -m rexec_kernel install --user``), start a stack (``rexec up``), then pick
"Rexec (remote)" in Jupyter.
"""

from __future__ import annotations

from rexec import __version__

__all__ = ["__version__"]
