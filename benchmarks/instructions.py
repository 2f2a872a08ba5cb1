"""Instructions each process executes per warm no-op call, counted by valgrind's callgrind.

    python -m benchmarks.instructions [--calls 300]

Wall-clock latency on a shared two-core VM moves by 20% between runs, which hides any single
change worth a few percent. Instruction counts do not move: callgrind counts them the same
whatever else the machine does. For the raw pyzmq floor, the minimal Python relay
(``benchmarks/minimal.py``) and Rexec, each of the three processes -- client, broker, worker --
is run in turn under callgrind, with counting switched on only for the measured calls (after a
warm-up), so imports and start-up are left out. Counts cover every thread of the process,
libzmq's I/O thread included. Needs valgrind (``apt-get install valgrind``); takes a few minutes.

On this machine a warm no-op round trip costs roughly 0.5 us per thousand instructions added on
its path (cold caches: every process wakes up for every message), so this table tells where
latency can still be won and checks that a change really removed work.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import zmq

from benchmarks import minimal
from benchmarks.core import noop, stop_processes
from benchmarks.report import print_table
from rexec.localstack import StackOptions, free_port, start_stack

STACKS = ("raw", "minimal", "rexec")
ROLES = ("client", "broker", "worker")
WARMUP = 200
# Python under valgrind starts in tens of seconds (the worker imports IPython).
START_TIMEOUT = 300.0
RESULT = "instructions per call:"


def callgrind_command(out_dir: Path, role: str) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir / role}.%p",
    ]


def set_counting(pid: int, on: bool) -> None:
    state = "on" if on else "off"
    subprocess.run(
        ["callgrind_control", f"--instr={state}", str(pid)], check=True, capture_output=True
    )


def dump_and_read(pid: int, out_dir: Path, role: str) -> int:
    """Ask callgrind for a dump and return the largest instruction total among its files."""
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    time.sleep(0.5)
    total = 0
    for path in out_dir.glob(f"{role}.*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


@contextlib.contextmanager
def relay(module: str, worker_role: str, wrap: dict[str, list[str]]) -> Iterator[str]:
    front = f"tcp://127.0.0.1:{free_port('127.0.0.1')}"
    back = f"tcp://127.0.0.1:{free_port('127.0.0.1')}"
    procs = [
        subprocess.Popen(
            [*wrap.get("broker", []), sys.executable, "-m", module, "broker", front, back]
        ),
        subprocess.Popen(
            [*wrap.get("worker", []), sys.executable, "-m", module, worker_role, back]
        ),
    ]
    try:
        yield front
    finally:
        stop_processes(procs)


def raw_caller(front: str) -> Callable[[], None]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(front)
    header = b'{"v":2,"t":"request","id":"x-1","op":"call"}'
    deadline = time.monotonic() + START_TIMEOUT
    while True:  # until both relay processes run (slowly, under valgrind)
        sock.send(b"x")
        if sock.poll(1000):
            sock.recv()
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the raw relay did not answer")
    while sock.poll(500):  # echoes of the probes sent before the relay was up
        sock.recv()

    def call() -> None:
        sock.send_multipart([header, b"args"])
        sock.recv_multipart()

    return call


def minimal_caller(front: str) -> Callable[[], None]:
    client = minimal.MinimalClient(front, timeout_ms=int(START_TIMEOUT * 1000))
    return lambda: client.call(minimal.noop)


@contextlib.contextmanager
def rexec_caller(wrap: dict[str, list[str]]) -> Iterator[Callable[[], None]]:
    os.environ["REXEC_HOME"] = tempfile.mkdtemp(prefix="rexec-instructions-")
    os.environ["REXEC_QUIET"] = "1"
    if "worker" in wrap:
        command = [*wrap["worker"], sys.executable, "-m", "rexec", "worker"]
        os.environ["REXEC_WORKER_COMMAND"] = shlex.join(command)
    options = StackOptions(
        broker_port=0, backend_port=0, spawner_port=0, broker_prefix=tuple(wrap.get("broker", ()))
    )
    stack = start_stack(options)
    from rexec.client.session import Session

    session = Session(
        stack.profile, worker_ready_timeout=START_TIMEOUT, connect_timeout=START_TIMEOUT
    ).connect()
    try:
        yield lambda: session.call(noop, timeout=START_TIMEOUT)
    finally:
        session.close()
        stack.stop()


def measure_child(stack: str, role: str, calls: int, out_dir: Path) -> int:
    """Run one stack with ``role`` under callgrind (the client: this very process)."""
    wrap = {} if role == "client" else {role: callgrind_command(out_dir, role)}
    with contextlib.ExitStack() as cleanup:
        if stack == "rexec":
            call = cleanup.enter_context(rexec_caller(wrap))
        else:
            module, worker_role = (
                ("benchmarks.rawzmq", "echo")
                if stack == "raw"
                else ("benchmarks.minimal", "worker")
            )
            front = cleanup.enter_context(relay(module, worker_role, wrap))
            call = raw_caller(front) if stack == "raw" else minimal_caller(front)
        for _ in range(WARMUP):
            call()
        pid = os.getpid() if role == "client" else find_callgrind_pid(out_dir, role)
        set_counting(pid, True)
        for _ in range(calls):
            call()
        set_counting(pid, False)
        return dump_and_read(pid, out_dir, role) // calls


def find_callgrind_pid(out_dir: Path, role: str) -> int:
    """The pid of the process callgrind runs: its command line names ``out_dir``."""
    marker = f"{out_dir / role}."
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "callgrind" in cmdline:
            return int(entry.name)
    raise RuntimeError(f"no {role} runs under callgrind")


def run_one(stack: str, role: str, calls: int) -> int:
    out_dir = Path(tempfile.mkdtemp(prefix="rexec-callgrind-"))
    command = [sys.executable, "-m", "benchmarks.instructions", "--child", stack, role]
    command += ["--calls", str(calls), "--out", str(out_dir)]
    if role == "client":
        command = [*callgrind_command(out_dir, role), *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT * 3)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return int(line.split()[-1])
    raise RuntimeError(
        f"measuring the {stack} {role} failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--child", nargs=2, metavar=("STACK", "ROLE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stack, role = args.child
        print(RESULT, measure_child(stack, role, args.calls, args.out), flush=True)
        return
    if shutil.which("valgrind") is None:
        sys.exit("this benchmark needs valgrind: apt-get install valgrind")
    counts = {stack: {role: run_one(stack, role, args.calls) for role in ROLES} for stack in STACKS}
    for stack in STACKS:
        counts[stack]["total"] = sum(counts[stack].values())
    for baseline in ("raw", "minimal"):
        print_table(
            f"Instructions per warm no-op call ({args.calls} calls), thousands: Rexec against "
            f"{'the raw pyzmq floor' if baseline == 'raw' else 'the minimal Python relay'}",
            baseline,
            [
                (
                    role,
                    counts[baseline][role] / 1000,
                    counts["rexec"][role] / 1000,
                    counts["rexec"][role] / counts[baseline][role],
                    "",
                )
                for role in (*ROLES, "total")
            ],
        )


if __name__ == "__main__":
    main()
