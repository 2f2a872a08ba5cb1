"""The threads that run function calls on the worker.

Like ``concurrent.futures.ThreadPoolExecutor`` without futures: a call's result travels back as a
message, so nothing needs a Future, and the per-call cost stays small. Threads start on demand,
up to ``size``, and stay for later calls.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Task = tuple[Callable[..., Any], tuple[Any, ...]]


class CallPool:
    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._tasks.put((fn, args))
        if self._idle.acquire(False):
            return  # an idle thread takes it
        with self._lock:
            if len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            fn, args = task
            try:
                fn(*args)
            except BaseException:
                log.exception("a call thread's task failed")
            self._idle.release()

    def shutdown(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._tasks.put(None)
