"""Core performance, measured against a raw pyzmq floor in the same run.

    python -m benchmarks.core [--calls 2000] [--mb 100]

Prints a table: medians and p99 of the raw broker-hop echo RTT (three processes over loopback
TCP) and of a warm ``remote_func`` no-op call through the real local stack with auth on;
pipelined throughput of both; a large numpy round trip against raw ``copy=False`` frames.
Targets: no-op <= 1.3x the floor, pipelined >= 0.7x raw, bandwidth >= 0.7x raw.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import zmq

from benchmarks.report import percentile, print_table
from rexec.localstack import StackOptions, free_port, start_stack


@contextmanager
def raw_stack() -> Iterator[zmq.Socket]:
    front, back = (
        f"tcp://127.0.0.1:{free_port('127.0.0.1')}",
        f"tcp://127.0.0.1:{free_port('127.0.0.1')}",
    )
    procs = [
        subprocess.Popen([sys.executable, "-m", "benchmarks.rawzmq", "broker", front, back]),
    ]
    time.sleep(0.3)
    procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.rawzmq", "echo", back]))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(front)
    try:
        for _ in range(50):  # until the echo worker is attached
            sock.send(b"x")
            if sock.poll(200):
                sock.recv()
                break
        yield sock
    finally:
        sock.close()
        for proc in procs:
            proc.kill()
            proc.wait()


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def noop() -> None:
    return None


def echo(value: object) -> object:
    return value


@dataclass
class Target:
    """One side of the comparison: how to make one call, a pipelined batch, and a big echo."""

    rtt: Callable[[], object]
    pipelined: Callable[[int], object]
    big: Callable[[], object]


def raw_target(sock: zmq.Socket, array: np.ndarray) -> Target:
    header = b'{"v":1,"t":"request","id":"x-1","op":"call"}'

    def rtt() -> None:
        sock.send_multipart([header, b"args"])
        sock.recv_multipart()

    def pipelined(calls: int) -> None:
        window, sent, received = 500, 0, 0
        while received < calls:
            while sent < calls and sent - received < window:
                sock.send_multipart([header, b"args"])
                sent += 1
            sock.recv_multipart()
            received += 1

    def big() -> None:
        sock.send_multipart([header, array], copy=False)
        sock.recv_multipart(copy=False)

    return Target(rtt, pipelined, big)


def rexec_target(session: Any, array: np.ndarray) -> Target:
    def pipelined(calls: int) -> None:
        futures = [session.submit(noop) for _ in range(calls)]
        for future in futures:
            future.result(timeout=120)

    return Target(lambda: session.call(noop), pipelined, lambda: session.call(echo, (array,)))


@contextmanager
def rexec_stack() -> Iterator[Any]:
    os.environ["REXEC_HOME"] = tempfile.mkdtemp(prefix="rexec-bench-")
    os.environ["REXEC_QUIET"] = "1"
    stack = start_stack(StackOptions(broker_port=0, backend_port=0, spawner_port=0))
    from rexec.client.session import Session

    session = Session(stack.profile).connect()
    try:
        yield session
    finally:
        session.close()
        stack.stop()


def measure(
    targets: dict[str, Target], calls: int, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Both sides in alternating rounds, so drift of a shared VM affects them alike."""
    results: dict[str, dict[str, list[float]]] = {
        name: {"latency": [], "pipelined": [], "bandwidth": []} for name in targets
    }
    for target in targets.values():  # warm up: connections, caches, the function on the worker
        timed(target.rtt, 200)
        target.big()
    block = max(1, calls // rounds)
    for _ in range(rounds):
        for name, target in targets.items():
            results[name]["latency"] += timed(target.rtt, block)
            results[name]["pipelined"] += timed(partial(target.pipelined, calls), 1)
            results[name]["bandwidth"] += timed(target.big, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    array = np.ones(args.mb * 1024 * 1024 // 8)
    with raw_stack() as sock, rexec_stack() as session:
        results = measure(
            {"raw": raw_target(sock, array), "rexec": rexec_target(session, array)},
            args.calls,
            args.rounds,
        )
    raw, ours = results["raw"], results["rexec"]
    megabytes = 2 * array.nbytes / 1e6
    rows = []
    raw_lat, our_lat = statistics.median(raw["latency"]), statistics.median(ours["latency"])
    rows.append(
        ("no-op RTT median (us)", raw_lat * 1e6, our_lat * 1e6, our_lat / raw_lat, "<= 1.3")
    )
    raw_p99, our_p99 = percentile(raw["latency"], 99), percentile(ours["latency"], 99)
    rows.append(("no-op RTT p99 (us)", raw_p99 * 1e6, our_p99 * 1e6, our_p99 / raw_p99, ""))
    raw_tp = args.calls / statistics.median(raw["pipelined"])
    our_tp = args.calls / statistics.median(ours["pipelined"])
    rows.append(("pipelined calls/s", raw_tp, our_tp, our_tp / raw_tp, ">= 0.7"))
    raw_bw = megabytes / statistics.median(raw["bandwidth"])
    our_bw = megabytes / statistics.median(ours["bandwidth"])
    rows.append((f"{args.mb} MB round trip MB/s", raw_bw, our_bw, our_bw / raw_bw, ">= 0.7"))
    print_table(
        f"Rexec core benchmark ({args.calls} calls in {args.rounds} alternating rounds, "
        f"{args.mb} MB array, {os.cpu_count()} cores)",
        "raw pyzmq",
        rows,
    )


if __name__ == "__main__":
    main()
