"""``python -m rexec_spawner``: run the spawner."""

from __future__ import annotations

import sys

from rexec_spawner.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m rexec_spawner"))
