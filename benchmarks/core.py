"""Core performance, measured against a raw pyzmq floor in the same run.

    python -m benchmarks.core [--calls 2000] [--mb 100]

Prints a table: medians and p99 of the raw broker-hop echo RTT (three processes over loopback
TCP) and of a warm ``remote_func`` no-op call through the real local stack with auth on;
pipelined throughput of both; a large numpy round trip against raw ``copy=False`` frames.
Targets: no-op <= 1.3x the floor, pipelined >= 0.7x raw, bandwidth >= 0.7x raw.

A second table measures, in the same alternating rounds, a minimal Python relay
(``benchmarks/minimal.py``): how far from the floor any Python implementation lands on this
machine before it does anything Rexec does.
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

from benchmarks import minimal
from benchmarks.report import Row, percentile, print_table
from rexec.localstack import StackOptions, free_port, start_stack


def relay_processes(module: str, worker_role: str) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Start ``python -m module broker ...`` and its worker; return the frontend URL."""
    front, back = (
        f"tcp://127.0.0.1:{free_port('127.0.0.1')}",
        f"tcp://127.0.0.1:{free_port('127.0.0.1')}",
    )
    procs = [subprocess.Popen([sys.executable, "-m", module, "broker", front, back])]
    time.sleep(0.3)
    procs.append(subprocess.Popen([sys.executable, "-m", module, worker_role, back]))
    return front, procs


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


@contextmanager
def raw_stack() -> Iterator[zmq.Socket]:
    front, procs = relay_processes("benchmarks.rawzmq", "echo")
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
        stop_processes(procs)


@contextmanager
def minimal_stack() -> Iterator[minimal.MinimalClient]:
    # Requests sent before the worker registers wait in the broker's queue.
    front, procs = relay_processes("benchmarks.minimal", "worker")
    client = minimal.MinimalClient(front)
    try:
        yield client
    finally:
        client.close()
        stop_processes(procs)


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
    header = b'{"v":2,"t":"request","id":"x-1","op":"call"}'

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


def minimal_target(client: minimal.MinimalClient, array: np.ndarray) -> Target:
    return Target(
        lambda: client.call(minimal.noop),
        lambda calls: client.pipelined(minimal.noop, calls),
        lambda: client.call(minimal.echo, (array,)),
    )


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
    with raw_stack() as sock, minimal_stack() as relay, rexec_stack() as session:
        results = measure(
            {
                "raw": raw_target(sock, array),
                "minimal": minimal_target(relay, array),
                "rexec": rexec_target(session, array),
            },
            args.calls,
            args.rounds,
        )
    title = (
        f"{args.calls} calls in {args.rounds} alternating rounds, {args.mb} MB array, "
        f"{os.cpu_count()} cores"
    )
    raw = results["raw"]
    print_table(f"Rexec core benchmark ({title})", "raw pyzmq", rows(raw, results["rexec"], args))
    print_table(
        "Reference, same run: a minimal Python relay (JSON header, pickle; no auth, no features)",
        "raw pyzmq",
        rows(raw, results["minimal"], args),
        label="minimal",
    )


def rows(
    base: dict[str, list[float]], ours: dict[str, list[float]], args: argparse.Namespace
) -> list[Row]:
    """Medians (and the latency p99) of ``ours`` against ``base``, with the targets."""
    megabytes = 2 * args.mb * 1024 * 1024 / 1e6
    base_lat, our_lat = statistics.median(base["latency"]), statistics.median(ours["latency"])
    base_p99, our_p99 = percentile(base["latency"], 99), percentile(ours["latency"], 99)
    base_tp = args.calls / statistics.median(base["pipelined"])
    our_tp = args.calls / statistics.median(ours["pipelined"])
    base_bw = megabytes / statistics.median(base["bandwidth"])
    our_bw = megabytes / statistics.median(ours["bandwidth"])
    return [
        ("no-op RTT median (us)", base_lat * 1e6, our_lat * 1e6, our_lat / base_lat, "<= 1.3"),
        ("no-op RTT p99 (us)", base_p99 * 1e6, our_p99 * 1e6, our_p99 / base_p99, ""),
        ("pipelined calls/s", base_tp, our_tp, our_tp / base_tp, ">= 0.7"),
        (f"{args.mb} MB round trip MB/s", base_bw, our_bw, our_bw / base_bw, ">= 0.7"),
    ]


if __name__ == "__main__":
    main()
