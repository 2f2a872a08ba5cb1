"""The worker process: registers with the broker and runs its user's requests.

Threads:

* the channel's I/O thread owns the socket and dispatches requests;
* the main thread runs cells one after another in the persistent IPython namespace, so an
  interrupt is a real SIGINT and reaches code blocked in ``time.sleep`` or I/O;
* a pool runs function calls concurrently; an interrupt there is a KeyboardInterrupt raised
  asynchronously in the call's thread;
* calls of a function whose recent calls each returned within a couple of milliseconds run in
  place on the I/O thread instead, which saves two thread hand-overs per call; should one run
  long, the channel's standby thread reads and dispatches meanwhile, so other requests and
  cancels wait at most ``STANDBY_AFTER``, and that function goes back to the pool.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from rexec import protocol as p
from rexec.channel import DISCONNECTED, READY, REFUSED, BrokerChannel
from rexec.client.skew import local_info
from rexec.credentials import credential_expiry
from rexec.worker import context
from rexec.worker import environment as envs
from rexec.worker import shell as shell_ops
from rexec.worker.calls import FunctionCache, call_function, exception_reply, run_call
from rexec.worker.context import RequestContext, RoutedStream
from rexec.worker.fdcapture import FdCapture
from rexec.worker.pool import CallPool

log = logging.getLogger("rexec.worker")

EXIT_OK = 0
EXIT_REFUSED = 3
MAX_CALL_THREADS = 64
# A call run in place on the I/O thread (a function whose calls return quickly) that runs longer
# than this has a standby thread read and dispatch other messages until it returns.
STANDBY_AFTER = 0.05
# How often the worker looks for a renewed credential.
CREDENTIAL_CHECK = 30.0
STATUS_HEARTBEAT = 2.0  # seconds between rewrites of the status file


def worker_info() -> dict[str, Any]:
    """What the worker reports at registration; clients compare it with their own."""
    return {
        **local_info(),
        "implementation": platform.python_implementation(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        **envs.describe(),
    }


@dataclass(frozen=True)
class WorkerSettings:
    broker_url: str
    credential: str
    broker_public_key: str | None = None
    status_file: Path | None = None
    parent_pid: int | None = None
    # Re-read for renewals (see ``Worker._watch_credential``).
    credential_file: Path | None = None


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._credential = settings.credential
        self._state = "connecting"
        self._status_lock = threading.Lock()
        self.info = worker_info()
        self.user: str | None = None
        self.max_bytes = 512 * 1024 * 1024
        self.exit_code = EXIT_OK
        self._functions = FunctionCache()
        # Requests in progress. Only the thread dispatching messages adds entries; every access
        # is a single dict operation, atomic under the GIL.
        self._requests: dict[tuple[bytes, str], RequestContext] = {}
        self._cells: queue.SimpleQueue[tuple[RequestContext, dict[str, Any], str] | None] = (
            queue.SimpleQueue()
        )
        self._pool = CallPool(MAX_CALL_THREADS, "rexec-call")
        self._stop = threading.Event()
        self._running_cell: RequestContext | None = None
        self._interrupt_pending = False
        self._shell: shell_ops.WorkerShell | None = None
        self.channel = BrokerChannel(
            settings.broker_url,
            settings.broker_public_key,
            greeting=lambda: p.make_register(self._credential, self.info),
            ready_type=p.REGISTERED,
            on_message=self._on_message,
            on_event=self._on_event,
            allowed_types=frozenset({p.REQUEST, p.NEXT, p.CANCEL, p.FLOW}),
            tagged=True,
            ping_stats=self._stats,
            standby_after=STANDBY_AFTER,
            name="rexec-worker-io",
        )
        # Bound once: every request's context sends through them.
        self._channel_send = self.channel.send
        self._channel_send_later = self.channel.send_later

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; cells run on this (the main) thread. Returns an exit code."""
        capture = FdCapture()
        real_stdout, real_stderr = capture.start()
        self._saved_fds = [(real_stdout.fileno(), 1), (real_stderr.fileno(), 2)]
        context.run_before_finish(capture.drain)
        self._shell = shell_ops.create_shell()
        self._functions.namespace = self._shell.user_ns
        sys.stdout = RoutedStream("stdout", real_stdout)
        sys.stderr = RoutedStream("stderr", real_stderr)
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        self._write_status("connecting")
        self.channel.start()
        for ident in self.channel.service_threads():
            context.never_wait_in(ident)
        if self.settings.parent_pid:
            threading.Thread(target=self._watch_parent, daemon=True).start()
        if self.settings.credential_file is not None:
            threading.Thread(target=self._watch_credential, daemon=True).start()
        if self.settings.status_file is not None:
            threading.Thread(target=self._heartbeat, name="rexec-heartbeat", daemon=True).start()
        try:
            while not self._stop.is_set():
                try:
                    item = self._cells.get(timeout=0.5)
                except queue.Empty:
                    continue
                except KeyboardInterrupt:
                    continue  # an interrupt that arrived after its cell finished
                if item is not None:
                    self._run_cell(*item)
        finally:
            self._write_status("stopping")
            self.channel.close()
            self._pool.shutdown()
            sys.stdout, sys.stderr = real_stdout, real_stderr
        return self.exit_code

    def stop(self, exit_code: int | None = None) -> None:
        if exit_code is not None:
            self.exit_code = exit_code
        self._stop.set()
        self._cells.put(None)

    def _watch_parent(self) -> None:
        while not self._stop.wait(1.0):
            if os.getppid() != self.settings.parent_pid:
                log.info("parent process %s is gone; stopping", self.settings.parent_pid)
                self.stop()

    def _watch_credential(self) -> None:
        """Register again when the spawner renewed the credential (it rewrites the file)."""
        while not self._stop.wait(self._credential_check_interval()):
            if self._reload_credential():
                log.info("the credential was renewed; registering with it")
                self.channel.regreet()

    def _credential_check_interval(self) -> float:
        """Often enough to pick up a renewal (made at half the credential's life) in time."""
        expires = credential_expiry(self._credential)
        if expires is None:
            return CREDENTIAL_CHECK
        return max(0.5, min(CREDENTIAL_CHECK, (expires - time.time()) / 4))

    def _reload_credential(self) -> bool:
        """Read the credential file again; True if it holds a new credential."""
        path = self.settings.credential_file
        try:
            credential = path.read_text().strip() if path is not None else ""
        except OSError:
            return False
        if not credential or credential == self._credential:
            return False
        self._credential = credential
        return True

    def _write_status(self, state: str | None = None) -> None:
        """Write the status file (``state``, or the last one again as a heartbeat)."""
        path = self.settings.status_file
        if path is None:
            return
        with self._status_lock:
            if state is not None:
                self._state = state
            data = {**self.info, "state": self._state, "user": self.user, "updated": time.time()}
            tmp = path.with_name(path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(data))
                os.replace(tmp, path)
            except OSError as exc:
                log.warning("cannot write the status file %s: %s", path, exc)

    def _heartbeat(self) -> None:
        """Rewrite the status file every few seconds: the spawner takes a stale one (with the
        broker no longer hearing from this worker either) for a hung worker."""
        while not self._stop.wait(STATUS_HEARTBEAT):
            self._write_status()

    def _stats(self) -> dict[str, Any]:
        return {"busy": len(self._requests), "cell": self._running_cell is not None}

    # -- channel callbacks (I/O thread) ----------------------------------------------------

    def _on_event(self, event: str, header: dict[str, Any] | None) -> None:
        if event == READY and header is not None:
            self.user = header.get("user")
            self.max_bytes = int(header.get("max_bytes") or self.max_bytes)
            log.info("registered with the broker as a worker of user %s", self.user)
            self._write_status("registered")
        elif event == REFUSED and header is not None:
            error = header.get("error") or {}
            if error.get("code") == p.E_AUTH_FAILED and self._reload_credential():
                log.info("the broker refused the old credential; registering with the new one")
                self.channel.regreet()
                return
            log.error("the broker refused this worker: %s", error.get("message"))
            self.stop(EXIT_OK if error.get("code") == p.E_REPLACED else EXIT_REFUSED)
        elif event == DISCONNECTED:
            # Whoever asked for a pause is gone with the connection: nothing may wait for it.
            for ctx in list(self._requests.values()):
                ctx.set_flow(True)
            self._write_status("connecting")

    def _on_message(
        self, header: dict[str, Any], payload: list[zmq.Frame], tag: bytes | None
    ) -> None:
        msg_type = header["t"]
        if msg_type == p.REQUEST:
            if header.get("op") == p.OP_CALL and not header.get("fn_inline"):
                fn = self._functions.quick(header.get("fn"))
                # Only the I/O thread runs calls in place, never the standby thread.
                if fn is not None and self.channel.in_io_thread():
                    self._call_in_place(fn, tag or b"", header, payload)
                    return
            self._start_request((tag or b"", header.get("id", "")), header, payload)
            return
        ctx = self._requests.get((tag or b"", header.get("id", "")))
        if ctx is None:
            return
        if msg_type == p.CANCEL:
            ctx.cancel()
        elif msg_type == p.NEXT:
            ctx.commands.put(p.NEXT)
        elif msg_type == p.FLOW:
            ctx.set_flow(not header.get("pause"))

    def _start_request(
        self, key: tuple[bytes, str], header: dict[str, Any], payload: list[zmq.Frame]
    ) -> None:
        op = header.get("op")
        ctx = self._register(key, str(op))
        if ctx is None:
            return
        if op == p.OP_CALL:
            self._pool.submit(
                self._guarded, ctx, run_call, header, payload, self._functions, self.max_bytes
            )
        elif op == p.OP_EXECUTE:
            code = payload[0].bytes.decode("utf-8", "replace") if payload else ""
            if len(payload) > 1:
                header = {**header, "user_expressions": p.parse_json_frame(payload[1])}
            self._cells.put((ctx, header, code))
        elif op in (p.OP_COMPLETE, p.OP_INSPECT):
            self._pool.submit(self._guarded, ctx, self._introspect, header, payload)
        elif op == p.OP_ENVIRONMENT:
            self._pool.submit(self._guarded, ctx, envs.handle_request, payload, self._restart_into)
        else:
            error = p.make_error_reply(ctx.request_id, p.E_BAD_MESSAGE, f"unknown op {op!r}")
            self._finish(ctx, error)

    def _call_in_place(
        self, fn: Any, tag: bytes, header: dict[str, Any], payload: list[zmq.Frame]
    ) -> None:
        """Run a call of a function whose calls return quickly right here, on the I/O thread:
        no hand-over to a call thread. The standby thread takes over reading meanwhile if it
        runs long after all."""
        ctx = self._register((tag, header["id"]), p.OP_CALL)
        if ctx is None:
            return
        channel = self.channel
        channel.begin_blocking()
        try:
            self._guarded(
                ctx, call_function, fn, header, payload, 0, self._functions, self.max_bytes
            )
        finally:
            channel.end_blocking()
        self._functions.touch(header["fn"])  # after the reply: least recently used order

    def _register(self, key: tuple[bytes, str], op: str) -> RequestContext | None:
        """Track a new request; None if a request with this id is already in progress."""
        if key in self._requests:
            return None
        ctx = RequestContext(key[0], key[1], op, self._channel_send, self._channel_send_later)
        self._requests[key] = ctx
        return ctx

    # -- running requests ------------------------------------------------------------------

    def _restart_into(self, target: envs.Target) -> None:
        """After an environment switch was answered: let the reply leave, then exec."""
        envs.wait_sent(lambda: not self.channel._outbox)
        self._write_status("restarting")
        envs.exec_worker(target, self._saved_fds)

    def _guarded(self, ctx: RequestContext, target: Any, *args: Any) -> None:
        try:
            target(ctx, *args)
        except BaseException as exc:
            self._failed(ctx, exc)
        finally:
            self._forget(ctx)

    def _failed(self, ctx: RequestContext, exc: BaseException) -> None:
        """Rexec's own code failed while handling a request: tell its client, if not yet told."""
        log.exception("request %s failed inside the worker", ctx.request_id, exc_info=exc)
        if not ctx.finished:
            ctx.finish(exception_reply(ctx.request_id, exc, skip_frames=0))

    def _finish(self, ctx: RequestContext, frames: list[Any]) -> None:
        ctx.finish(frames)
        self._forget(ctx)

    def _forget(self, ctx: RequestContext) -> None:
        self._requests.pop(ctx.key, None)

    def _introspect(self, ctx: RequestContext, header: dict[str, Any], payload: list[Any]) -> None:
        assert self._shell is not None
        request = p.parse_json_frame(payload[0]) if payload else {}
        code = str(request.get("code", ""))
        cursor = request.get("cursor_pos")
        if ctx.op == p.OP_COMPLETE:
            content = shell_ops.complete(self._shell, code, cursor)
        else:
            content = shell_ops.inspect(
                self._shell, code, cursor, int(request.get("detail_level", 0))
            )
        ctx.finish(p.make_reply(ctx.request_id, p.STATUS_OK, [p.make_json_frame(content)]))

    def _run_cell(self, ctx: RequestContext, header: dict[str, Any], code: str) -> None:
        assert self._shell is not None
        content: dict[str, Any] = {"status": "aborted", "execution_count": None}
        try:
            if not ctx.cancelled:
                self._running_cell = ctx
                # The C default handler raises KeyboardInterrupt without a frame of ours.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                with ctx.activate(interrupt=self._interrupt_cell):
                    content = shell_ops.execute(
                        self._shell,
                        code,
                        silent=bool(header.get("silent", False)),
                        store_history=bool(header.get("store_history", True)),
                        user_expressions=_expressions(header),
                    )
        except KeyboardInterrupt:
            content = {"status": "aborted", "execution_count": self._shell.execution_count}
        finally:
            signal.signal(signal.SIGINT, self._on_sigint)
            self._running_cell = None
            self._interrupt_pending = False
            status = {"ok": p.STATUS_OK, "aborted": p.STATUS_CANCELLED}.get(
                content["status"], p.STATUS_ERROR
            )
            if (
                ctx.cancelled
                and status == p.STATUS_ERROR
                and content.get("ename") == "KeyboardInterrupt"
            ):
                status = p.STATUS_CANCELLED
            self._finish(ctx, p.make_reply(ctx.request_id, status, [p.make_json_frame(content)]))

    def _interrupt_cell(self) -> None:
        """Called under the request's lock while its cell runs: deliver a real SIGINT."""
        self._interrupt_pending = True
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT between cells: a late interrupt is ignored, any other one stops the worker."""
        if self._interrupt_pending:
            self._interrupt_pending = False
            return  # the cell finished before the interrupt landed
        self.stop()


def _expressions(header: dict[str, Any]) -> dict[str, str] | None:
    given = header.get("user_expressions")
    if not isinstance(given, dict):
        return None
    return {str(name): str(code) for name, code in given.items()}
