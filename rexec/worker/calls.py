"""Running shipped functions on the worker: arguments in, result or exception out."""

from __future__ import annotations

import collections
import pickle
import queue
import threading
import time
import traceback
import types
from typing import Any

import zmq

from rexec import protocol as p
from rexec import serialization as ser
from rexec.worker.context import RequestContext

# A generator nobody asks for items for is closed after this long.
GENERATOR_IDLE_SECONDS = 3600.0
FUNCTION_CACHE_SIZE = 256
# A function whose recent calls each took less than this runs in place on the I/O thread, saving
# the hand-over to a call thread; one slow call sends it back to the call threads.
INLINE_MAX_SECONDS = 0.002
INLINE_AFTER_FAST_CALLS = 2


class NamespaceGlobals(dict[str, Any]):
    """The globals of a function shipped from a notebook: the values it was shipped with, and
    for anything else the worker's interactive namespace, so a ``remote_func`` sees what
    ``%%rexec`` cells defined there."""

    def __init__(self, shipped: dict[str, Any], namespace: dict[str, Any]) -> None:
        super().__init__(shipped)
        self.setdefault("__builtins__", namespace.get("__builtins__", __builtins__))
        self._namespace = namespace

    def __missing__(self, key: str) -> Any:
        return self._namespace[key]


def bind_to_namespace(fn: Any, namespace: dict[str, Any] | None) -> Any:
    """Rebuild a by-value ``__main__`` function over ``NamespaceGlobals``."""
    if namespace is None or not isinstance(fn, types.FunctionType):
        return fn
    if fn.__module__ not in (None, "__main__"):
        return fn  # importable on the worker: keeps its own module's globals
    bound = types.FunctionType(
        fn.__code__,
        NamespaceGlobals(fn.__globals__, namespace),
        fn.__name__,
        fn.__defaults__,
        fn.__closure__,
    )
    bound.__kwdefaults__ = fn.__kwdefaults__
    bound.__dict__.update(fn.__dict__)
    bound.__qualname__ = fn.__qualname__
    return bound


class FunctionCache:
    """Functions received from clients, by content hash, least recently used evicted.

    It also remembers how long each function's calls took, to tell which may run in place.
    """

    def __init__(self, size: int = FUNCTION_CACHE_SIZE) -> None:
        self.namespace: dict[str, Any] | None = None  # the shell's user namespace, once it exists
        self._size = size
        self._functions: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        # Consecutive quick calls per function; negative for generators (never in place). A hint
        # only, updated without the lock: a lost update just delays or repeats a decision.
        self._quick: dict[str, int] = {}
        # The functions that run in place, read without the lock on every such call. One that
        # was evicted meanwhile is still the function its key names, so calling it is right.
        self._in_place: dict[str, Any] = {}

    def quick(self, key: Any) -> Any:
        """The cached function ``key`` if its recent calls all returned quickly, else None."""
        return self._in_place.get(key) if type(key) is str else None

    def record(self, key: str, seconds: float, generator: bool = False) -> None:
        quick = self._quick
        if generator or seconds >= INLINE_MAX_SECONDS:
            quick[key] = -1 if generator else 0
            self._in_place.pop(key, None)
            return
        count = quick.get(key, 0)
        if 0 <= count < INLINE_AFTER_FAST_CALLS:
            quick[key] = count + 1
            if count + 1 == INLINE_AFTER_FAST_CALLS:
                fn = self.get(key)
                if fn is not None:
                    self._in_place[key] = fn

    def get(self, key: str) -> Any:
        with self._lock:
            fn = self._functions.get(key)
            if fn is not None:
                self._functions.move_to_end(key)
            return fn

    def touch(self, key: str) -> None:
        """Mark ``key`` used (``quick`` does not, to stay lock-free). Without the lock: one
        C-level operation on the ordered dict, atomic under the GIL; a key evicted meanwhile
        is simply not there."""
        try:
            self._functions.move_to_end(key)
        except KeyError:
            pass

    def put(self, key: str, fn: Any) -> None:
        with self._lock:
            self._functions[key] = fn
            self._functions.move_to_end(key)
            while len(self._functions) > self._size:
                evicted, _ = self._functions.popitem(last=False)
                self._quick.pop(evicted, None)
                self._in_place.pop(evicted, None)


def packed_reply(request_id: str, value: Any, max_bytes: int) -> list[Any]:
    """A terminal ``ok`` reply carrying ``value``, or an error if it cannot travel."""
    if type(value) in ser.ATOMS:  # None, numbers, strings: one plain pickle
        data = pickle.dumps(value, protocol=5)
        if len(data) <= max_bytes:
            return p.make_result(request_id, (data,), ser.SER_PICKLE, 0)
    try:
        packed = ser.dumps(value)
    except Exception as exc:
        return p.make_error_reply(
            request_id,
            p.E_EXCEPTION,
            f"the result (a {type(value).__name__}) could not be serialized: {exc}; "
            "return plain data or save it to shared storage",
        )
    if packed.nbytes > max_bytes:
        return p.make_error_reply(
            request_id,
            p.E_TOO_LARGE,
            f"the result is {packed.nbytes:,} bytes, over the broker's limit of {max_bytes:,}",
        )
    return p.make_result(request_id, packed.frames, packed.ser, len(packed.buffers))


def exception_reply(request_id: str, exc: BaseException, skip_frames: int = 1) -> list[Any]:
    """A terminal reply for an exception raised by user code.

    The frames are the Jupyter ``error`` content (ename, evalue, traceback) and the exception
    pickled by reference, which the client rebuilds when the type is importable there.
    """
    tb = exc.__traceback__
    for _ in range(skip_frames):
        tb = tb.tb_next if tb is not None else None
    lines = traceback.format_exception(type(exc), exc, tb)
    content = {"ename": type(exc).__name__, "evalue": str(exc), "traceback": lines}
    if isinstance(exc, KeyboardInterrupt):
        return p.make_reply(request_id, p.STATUS_CANCELLED, [p.make_json_frame(content)])
    try:
        pickled = pickle.dumps(exc, protocol=5)
    except Exception:
        pickled = b""
    return p.make_reply(
        request_id, p.STATUS_ERROR, [p.make_json_frame(content), pickled], kind=p.E_EXCEPTION
    )


class CallRefused(Exception):
    """A call that cannot run; ``frames`` is the error reply to send instead."""

    def __init__(self, frames: list[Any]) -> None:
        super().__init__(frames)
        self.frames = frames


def load_function(
    header: dict[str, Any], payload: list[zmq.Frame], functions: FunctionCache
) -> tuple[Any, int]:
    """The function a call runs, and the index of its argument frame; ``CallRefused`` if the
    function is malformed or unknown here."""
    request_id = header["id"]
    key = header.get("fn")
    if not isinstance(key, str):
        raise CallRefused(
            p.make_error_reply(request_id, p.E_BAD_MESSAGE, "a call needs a function key")
        )
    if not header.get("fn_inline"):
        fn = functions.get(key)
        if fn is None:
            raise CallRefused(
                p.make_error_reply(
                    request_id, p.E_UNKNOWN_FUNCTION, "the worker does not have this function"
                )
            )
        return fn, 0
    data = payload[0].bytes if payload else b""
    if ser.function_key(data) != key:
        raise CallRefused(p.make_error_reply(request_id, p.E_BAD_MESSAGE, "function key mismatch"))
    try:
        fn = bind_to_namespace(ser.loads_function(data), functions.namespace)
    except Exception as exc:
        raise CallRefused(_not_loadable(request_id, exc)) from exc
    functions.put(key, fn)
    return fn, 1


def _not_loadable(request_id: str, exc: Exception) -> list[bytes]:
    return p.make_error_reply(
        request_id,
        p.E_DESERIALIZE,
        f"the worker could not load the function or its arguments: "
        f"{type(exc).__name__}: {exc}. Check that the worker has the same packages and "
        "Python version as this client",
    )


def run_call(
    ctx: RequestContext,
    header: dict[str, Any],
    payload: list[zmq.Frame],
    functions: FunctionCache,
    max_bytes: int,
) -> None:
    """Load and run one call on the current thread and send its outputs and reply."""
    try:
        fn, index = load_function(header, payload, functions)
    except CallRefused as refused:
        ctx.finish(refused.frames)
        return
    call_function(ctx, fn, header, payload, index, functions, max_bytes)


def call_function(
    ctx: RequestContext,
    fn: Any,
    header: dict[str, Any],
    payload: list[zmq.Frame],
    index: int,
    functions: FunctionCache,
    max_bytes: int,
) -> None:
    """Run ``fn`` with the arguments in ``payload[index:]`` and send its reply."""
    try:
        arguments = payload[index:] if index else payload
        args, kwargs = ser.loads_frames(
            header.get("ser", ser.SER_PICKLE), arguments, int(header.get("nb") or 0)
        )
    except Exception as exc:
        ctx.finish(_not_loadable(ctx.request_id, exc))
        return
    start = time.monotonic()
    try:
        previous = ctx.enter()
        try:
            result = fn(*args, **kwargs)
        finally:
            ctx.leave(previous)
    except BaseException as exc:
        elapsed = time.monotonic() - start
        ctx.finish(exception_reply(ctx.request_id, exc, skip_frames=1))
        functions.record(header["fn"], elapsed)
        return
    if type(result) is types.GeneratorType:
        functions.record(header["fn"], 0.0, generator=True)
        run_generator(ctx, result, max_bytes)
    else:
        elapsed = time.monotonic() - start
        ctx.finish(packed_reply(ctx.request_id, result, max_bytes))
        functions.record(header["fn"], elapsed)  # after the reply left: it does not wait


def run_generator(ctx: RequestContext, gen: Any, max_bytes: int) -> None:
    """Produce one item per ``next`` the client sends, until exhausted or cancelled."""
    ctx.send(p.make_item(ctx.request_id, start=True))
    while True:
        try:
            command = ctx.commands.get(timeout=GENERATOR_IDLE_SECONDS)
        except queue.Empty:
            gen.close()
            ctx.finish(
                p.make_error_reply(ctx.request_id, p.E_BUSY, "generator idle for too long; closed")
            )
            return
        if command == p.CANCEL:
            gen.close()
            ctx.finish(p.make_reply(ctx.request_id, p.STATUS_CANCELLED))
            return
        try:
            with ctx.activate():
                item = next(gen)
        except StopIteration as stop:
            ctx.finish(packed_reply(ctx.request_id, stop.value, max_bytes))
            return
        except BaseException as exc:
            ctx.finish(exception_reply(ctx.request_id, exc, skip_frames=1))
            return
        try:
            packed = ser.dumps(item)
        except Exception as exc:
            gen.close()
            ctx.finish(exception_reply(ctx.request_id, exc, skip_frames=0))
            return
        ctx.send(p.make_item(ctx.request_id, packed.frames, ser=packed.ser, nb=len(packed.buffers)))
