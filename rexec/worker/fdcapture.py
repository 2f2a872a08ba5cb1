"""Output written below Python's ``sys.stdout``: C extensions, ``os.system``, subprocesses.

File descriptors 1 and 2 are pointed at pipes; a thread per pipe reads them and sends the text to
the request that is running, like the kernel's own ``print`` output. The worker's logs keep going
to the original descriptors. Before a request's reply is sent, ``drain`` waits (briefly) until the
pipes are empty, so output a subprocess wrote before finishing is not overtaken by the reply.
"""

from __future__ import annotations

import codecs
import fcntl
import logging
import os
import select
import struct
import sys
import termios
import threading
import time
from typing import TextIO

from rexec.worker import context

DRAIN_TIMEOUT = 0.5


class FdCapture:
    def __init__(self) -> None:
        self._original: dict[int, int] = {}
        self._pipes: dict[int, int] = {}
        self._busy: dict[int, bool] = {}
        # Both pipes: one system call tells whether either has data. A poll object must not be
        # polled by two threads at once; calls finish on many threads.
        self._check = select.poll()
        self._check_lock = threading.Lock()

    def start(self) -> tuple[TextIO, TextIO]:
        """Capture fds 1 and 2; return text streams on the original stdout and stderr."""
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, name in ((1, "stdout"), (2, "stderr")):
            self._original[fd] = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            self._pipes[fd] = read_end
            self._busy[fd] = False
            self._check.register(read_end, select.POLLIN)
            threading.Thread(
                target=self._pump, args=(fd, name), name=f"rexec-fd{fd}", daemon=True
            ).start()
        out = open(self._original[1], "w", buffering=1, closefd=False)  # noqa: SIM115
        err = open(self._original[2], "w", buffering=1, closefd=False)  # noqa: SIM115
        _redirect_log_handlers(err)
        return out, err

    def _pump(self, fd: int, name: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        read_end = self._pipes[fd]
        waiter = select.poll()
        waiter.register(read_end, select.POLLIN)
        while True:
            waiter.poll()
            # Busy before reading: data leaves the pipe only while ``drain`` can see it is busy.
            self._busy[fd] = True
            data = os.read(read_end, 65536)
            if not data:
                return
            text = decoder.decode(data)
            ctx = context.current_context() or context.last_context()
            if ctx is not None and not ctx.finished and text:
                ctx.write_stream(name, text)
            else:
                os.write(self._original[fd], data)
            self._busy[fd] = _pending_bytes(read_end) > 0

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Wait until what was already written to the descriptors has been routed."""
        busy = self._busy
        if not (busy.get(1) or busy.get(2)) and self._check_lock.acquire(False):
            try:
                if not self._check.poll(0):
                    return  # the usual case, checked with one system call
            finally:
                self._check_lock.release()
        deadline = time.monotonic() + timeout
        for fd, read_end in self._pipes.items():
            while (self._busy[fd] or _pending_bytes(read_end)) and time.monotonic() < deadline:
                time.sleep(0.001)


def _pending_bytes(fd: int) -> int:
    data = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", data)[0])


def _redirect_log_handlers(stream: TextIO) -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
