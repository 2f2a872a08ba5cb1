"""Worker environments on the real local stack: cold build vs cached switch vs no-op.

    python -m benchmarks.environments [--rounds 3]

For one small set (``six==1.16.0``, downloaded from the package index) and a second one
(``idna==3.6``) to switch away to: the time of the first ``apply_requirements`` (venv + pip +
worker restart + registration), of switching back to it once built (restart only), and of
asking for the set the worker already runs (no pip, no restart). Each round uses a fresh
environment root so the cold build is really cold. Medians over the rounds.
Targets: cached switch <= 3 s, no-op <= 0.1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.report import print_table
from rexec.client.environment import apply_requirements
from rexec.client.outputs import CollectingOutput
from rexec.client.session import Session
from rexec.localstack import StackOptions, start_stack

SET_A = "six==1.16.0"
SET_B = "idna==3.6"


def timed(session: Session, requirements: str, expected: str) -> float:
    started = time.perf_counter()
    result = apply_requirements(session, requirements, CollectingOutput())
    elapsed = time.perf_counter() - started
    if result["status"] != expected:
        raise SystemExit(f"expected {expected!r} for {requirements}, got {result['status']!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rexec-bench-envs-"))
    os.environ["REXEC_HOME"] = str(home)
    os.environ["REXEC_QUIET"] = "1"
    stack = start_stack(StackOptions(broker_port=0, backend_port=0, spawner_port=0))
    cold: list[float] = []
    cached: list[float] = []
    noop: list[float] = []
    try:
        with Session(stack.profile) as session:
            for _ in range(args.rounds):
                if (session.worker_info or {}).get("env_id") != "base":
                    timed(session, "", "base")
                shutil.rmtree(home / "stack" / "envs", ignore_errors=True)
                cold.append(timed(session, SET_A, "built"))
                noop.append(timed(session, SET_A, "active"))
                timed(session, SET_B, "built")
                cached.append(timed(session, SET_A, "cached"))
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    ms = [statistics.median(values) * 1000 for values in (cold, cached, noop)]
    print_table(
        f"environments: median of {args.rounds} rounds, ms (baseline = the cold build)",
        "cold build",
        [
            ("cold build (venv + pip + restart)", ms[0], ms[0], 1.0, "-"),
            ("switch to a built set (restart)", ms[0], ms[1], ms[1] / ms[0], "<= 3000"),
            ("same set again (no-op)", ms[0], ms[2], ms[2] / ms[0], "<= 100"),
        ],
    )


if __name__ == "__main__":
    main()
