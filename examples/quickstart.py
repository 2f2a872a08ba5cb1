"""Run Python functions on your Rexec worker.

Start a local stack and run this file against it in one command:

    rexec up -- python examples/quickstart.py
"""

import os
import socket

from rexec import remote_func


@remote_func
def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


@remote_func
def where(greeting: str, *, punctuation: str = "!") -> dict:
    print(f"{greeting} from the worker{punctuation}")  # streams back live
    return {"pid": os.getpid(), "host": socket.gethostname()}


@remote_func
def squares(n: int):
    for i in range(n):
        yield i * i


if __name__ == "__main__":
    print(f"Collatz(27) halts in {collatz_steps(27)} steps")
    remote = where("Hello", punctuation="!!")
    print(f"this process: pid {os.getpid()}; the worker: pid {remote['pid']} on {remote['host']}")
    print("squares streamed from a remote generator:", list(squares(5)))
    futures = [collatz_steps.submit(n) for n in (97, 871, 6171)]
    print("concurrent calls:", [f.result(timeout=60) for f in futures])
