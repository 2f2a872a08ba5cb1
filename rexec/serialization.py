"""Turning Python objects into frames and back.

Objects are pickled with protocol 5. Large buffers (numpy arrays, bytearrays, memoryviews) go
*out of band*: each becomes its own frame and is never copied into the pickle stream, so a 100 MB
array crosses the broker as one zero-copy frame.

The fast C pickler walks the object graph. What it would pickle by a name the other side cannot
import — lambdas, closures, functions and classes defined in ``__main__`` or inside functions — is
embedded as a nested ``dill`` blob. Objects the C pickler refuses outright make the whole object go
through dill; the ``ser`` field of a packed object says which one to load it with.

Functions are shipped by value with dill. ``FunctionShipper`` keeps the serialized bytes of each
function and reuses them while nothing the function depends on has changed, so a warm call does
not pay for dill.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import pickle
import types
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import dill

SER_PICKLE: Final = "pickle"
SER_DILL: Final = "dill"

# Buffers smaller than this stay in the pickle stream: a frame per tiny buffer costs more than
# copying it.
OUT_OF_BAND_MIN_BYTES: Final = 64 * 1024


@dataclass
class Packed:
    """A serialized object: the pickle stream plus its out-of-band buffers."""

    ser: str
    main: bytes
    buffers: list[Any] = field(default_factory=list)

    @property
    def frames(self) -> list[Any]:
        return [self.main, *self.buffers]

    @property
    def nbytes(self) -> int:
        return len(self.main) + sum(memoryview(b).nbytes for b in self.buffers)


def _needs_by_value(obj: Any) -> bool:
    """True for functions and classes the other side cannot import by name."""
    if not isinstance(obj, types.FunctionType | type):
        return False
    qualname = getattr(obj, "__qualname__", "")
    return getattr(obj, "__module__", None) in (None, "__main__") or "<" in qualname


def load_by_value(data: bytes) -> Any:
    """Rebuild an object that ``dumps`` embedded as a dill blob."""
    return dill.loads(data)


class _Pickler(pickle.Pickler):
    """The C pickler, with by-value objects embedded as dill blobs and modules by name."""

    def reducer_override(self, obj: Any) -> Any:
        if _needs_by_value(obj):
            return load_by_value, (dill.dumps(obj, protocol=5, recurse=True),)
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        return NotImplemented


def dumps(obj: Any) -> Packed:
    """Serialize ``obj`` with large buffers out of band.

    The fast C pickler handles the object graph; lambdas, closures and ``__main__`` definitions
    inside it are embedded as dill blobs. Whatever the C pickler refuses outright is retried with
    dill as a whole (losing out-of-band buffers, which dill does not support for arrays).
    """
    buffers: list[pickle.PickleBuffer] = []

    def keep_large_out_of_band(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OUT_OF_BAND_MIN_BYTES:
            return True
        buffers.append(buf)
        return False

    stream = io.BytesIO()
    try:
        _Pickler(stream, protocol=5, buffer_callback=keep_large_out_of_band).dump(obj)
        return Packed(SER_PICKLE, stream.getvalue(), buffers)
    except (pickle.PicklingError, TypeError, AttributeError):
        buffers.clear()
    return Packed(SER_DILL, dill.dumps(obj, protocol=5, recurse=True))


def loads(ser: str, main: Any, buffers: Sequence[Any] = ()) -> Any:
    """Rebuild an object from ``dumps`` output. ``ser`` comes from the (trusted) peer's header."""
    if ser == SER_PICKLE:
        return pickle.loads(main, buffers=buffers)
    if ser == SER_DILL:
        return dill.loads(bytes(main), buffers=buffers)
    raise ValueError(f"unknown serializer {ser!r}")


def dumps_function(fn: Any) -> bytes:
    return dill.dumps(fn, protocol=5, recurse=True)


def loads_function(data: Any) -> Any:
    return dill.loads(bytes(data))


def function_key(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# -- function shipping with change detection ---------------------------------------------------

_IMMUTABLE_ATOMS: Final = (int, float, complex, str, bytes, bool, type(None), range)
_BY_REFERENCE: Final = (types.ModuleType, types.BuiltinFunctionType, types.MethodWrapperType)
_MISSING: Final = object()
_names_by_code: weakref.WeakKeyDictionary[types.CodeType, tuple[str, ...]] = (
    weakref.WeakKeyDictionary()
)


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    names = _names_by_code.get(code)
    if names is None:
        found = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(_global_names(const))
        names = tuple(sorted(found))
        _names_by_code[code] = names
    return names


def _value_fingerprint(value: Any, seen: set[int]) -> tuple[Any, ...] | None:
    """Identity-based fingerprint of ``value``, or None when it may change in place."""
    if value is _MISSING:
        return ("missing",)
    if isinstance(value, (*_IMMUTABLE_ATOMS, *_BY_REFERENCE)):
        return (id(value),)
    if isinstance(value, type):
        return (id(value),)
    wrapped = getattr(value, "__rexec_function__", None)
    if isinstance(wrapped, types.FunctionType):
        value = wrapped  # a remote_func wrapper ships as the function it wraps
    if isinstance(value, types.FunctionType):
        if id(value) in seen:
            return (id(value),)
        seen.add(id(value))
        inner = _function_fingerprint(value, seen)
        return None if inner is None else (id(value), inner)
    if isinstance(value, tuple | frozenset):
        parts: list[Any] = [id(value)]
        for element in value:
            part = _value_fingerprint(element, seen)
            if part is None:
                return None
            parts.append(part)
        return tuple(parts)
    return None


def _function_fingerprint(fn: types.FunctionType, seen: set[int]) -> tuple[Any, ...] | None:
    parts: list[Any] = [id(fn.__code__)]
    for value in (fn.__defaults__, fn.__kwdefaults__ and tuple(fn.__kwdefaults__.items())):
        part = _value_fingerprint(value, seen)
        if part is None:
            return None
        parts.append(part)
    for cell in fn.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:
            contents = _MISSING
        part = _value_fingerprint(contents, seen)
        if part is None:
            return None
        parts.append(part)
    namespace = fn.__globals__
    for name in _global_names(fn.__code__):
        part = _value_fingerprint(namespace.get(name, _MISSING), seen)
        if part is None:
            return None
        parts.append(part)
    return tuple(parts)


def function_fingerprint(fn: Any) -> tuple[Any, ...] | None:
    """A fingerprint that changes whenever ``fn`` would serialize differently, or None.

    None means the function depends on a mutable object (a global list, a dict, an array) that
    may have changed in place, so it must be serialized again for every call.
    """
    if not isinstance(fn, types.FunctionType):
        return None
    return _function_fingerprint(fn, {id(fn)})


@dataclass
class _ShippedFunction:
    ref: weakref.ref[Any]
    fingerprint: tuple[Any, ...]
    key: str
    data: bytes


class FunctionShipper:
    """Serializes functions by value and reuses the bytes while the function is unchanged."""

    def __init__(self) -> None:
        self._cache: dict[int, _ShippedFunction] = {}

    def pack(self, fn: Any) -> tuple[str, bytes]:
        """Return ``(key, data)``: a content hash and the dill bytes of ``fn``."""
        fingerprint = function_fingerprint(fn)
        entry = self._cache.get(id(fn))
        if (
            entry is not None
            and fingerprint is not None
            and entry.ref() is fn
            and entry.fingerprint == fingerprint
        ):
            return entry.key, entry.data
        data = dumps_function(fn)
        key = function_key(data)
        if fingerprint is not None:
            fid = id(fn)
            try:
                ref = weakref.ref(fn, lambda _ref: self._cache.pop(fid, None))
            except TypeError:
                return key, data
            self._cache[id(fn)] = _ShippedFunction(ref, fingerprint, key, data)
        return key, data
