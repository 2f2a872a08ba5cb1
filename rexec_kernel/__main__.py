"""``python -m rexec_kernel -f CONNECTION_FILE`` runs the kernel; ``... install`` installs it."""

from __future__ import annotations

import sys


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "install":
        from rexec_kernel.kernelspec import main as install_main

        return install_main(sys.argv[2:])
    from ipykernel.kernelapp import IPKernelApp

    from rexec_kernel.kernel import RexecKernel

    IPKernelApp.launch_instance(kernel_class=RexecKernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
