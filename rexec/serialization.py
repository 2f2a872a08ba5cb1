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

Bytecode is specific to a Python minor version: dill-serialized code from 3.11 loaded on 3.12 can
crash the interpreter. Every dill blob therefore says which Python made it, and a side that runs
another version refuses it with an error saying so. Between different versions functions travel
as *source* instead (``FunctionShipper.by_source``): the function's ``def`` without decorators,
plus the modules and plain-data globals it uses, re-executed on the other side.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import pickle
import sys
import textwrap
import types
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import dill

SER_PICKLE: Final = "pickle"
SER_DILL: Final = "dill"

PYTHON_MINOR: Final = "{}.{}".format(*sys.version_info[:2])
_DILL_FUNCTION: Final = b"rexec-fn-dill "
_SOURCE_FUNCTION: Final = b"rexec-fn-source "
# Globals larger than this do not travel inside a function shipped as source (pass them as
# arguments): they would be sent again with every call.
MAX_SOURCE_GLOBAL_BYTES: Final = 64 * 1024

# Buffers smaller than this stay in the pickle stream: a frame per tiny buffer costs more than
# copying it.
OUT_OF_BAND_MIN_BYTES: Final = 64 * 1024


@dataclass(slots=True)
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
        if not self.buffers:
            return len(self.main)
        return len(self.main) + sum(memoryview(b).nbytes for b in self.buffers)


def _needs_by_value(obj: Any) -> bool:
    """True for functions and classes the other side cannot import by name."""
    if not isinstance(obj, types.FunctionType | type):
        return False
    qualname = getattr(obj, "__qualname__", "")
    return getattr(obj, "__module__", None) in (None, "__main__") or "<" in qualname


class VersionSkewError(ValueError):
    """Serialized code came from another Python version and cannot be loaded here safely."""


def _check_origin(origin: str | None, what: str) -> None:
    if origin is not None and origin != PYTHON_MINOR:
        raise VersionSkewError(
            f"{what} was serialized by Python {origin} and this side runs Python "
            f"{PYTHON_MINOR}; bytecode does not travel between Python versions. Use the same "
            "Python minor version on both sides, or pass plain data (functions are then shipped "
            "as source)"
        )


def load_by_value(data: bytes, origin: str | None = None) -> Any:
    """Rebuild an object that ``dumps`` embedded as a dill blob (made by Python ``origin``)."""
    _check_origin(origin, "a function or class inside this value")
    return dill.loads(data)


@functools.cache
def _installed_serializers() -> tuple[tuple[str, str], ...]:
    versions = {"dill": str(dill.__version__)}
    try:
        versions["cloudpickle"] = importlib.metadata.version("cloudpickle")
    except importlib.metadata.PackageNotFoundError:
        pass
    return tuple(versions.items())


def serializer_versions() -> dict[str, str]:
    """The serializer versions that must match for by-value code: dill, and cloudpickle if
    installed (without importing it). Looked up once per process."""
    return dict(_installed_serializers())


class _Pickler(pickle.Pickler):
    """The C pickler, with by-value objects embedded as dill blobs and modules by name."""

    def reducer_override(self, obj: Any) -> Any:
        if _needs_by_value(obj):
            return load_by_value, (dill.dumps(obj, protocol=5, recurse=True), PYTHON_MINOR)
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        return NotImplemented


ATOMS: Final = frozenset({type(None), bool, int, float, complex, str, bytes})
_CONTAINERS: Final = frozenset({tuple, list, dict})


def _is_plain(obj: Any, depth: int = 0) -> bool:
    """Small plain data (numbers, strings, bytes, and short containers of them)."""
    kind = type(obj)
    if kind in ATOMS:
        return True
    if kind not in _CONTAINERS or depth > 2 or len(obj) > 16:
        return False
    # Loops rather than all(generator): this runs for the arguments and result of every call.
    if kind is dict:
        for key, value in obj.items():
            if type(key) is not str or not _is_plain(value, depth + 1):
                return False
        return True
    for item in obj:  # noqa: SIM110 -- a loop is cheaper than all(generator) here
        if not _is_plain(item, depth + 1):
            return False
    return True


def dumps(obj: Any) -> Packed:
    """Serialize ``obj`` with large buffers out of band.

    The fast C pickler handles the object graph; lambdas, closures and ``__main__`` definitions
    inside it are embedded as dill blobs. Whatever the C pickler refuses outright is retried with
    dill as a whole (losing out-of-band buffers, which dill does not support for arrays).
    Small plain data (the arguments and results of most calls) takes a direct path.
    """
    if _is_plain(obj):
        return Packed(SER_PICKLE, pickle.dumps(obj, protocol=5))
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


def loads_frames(ser: str, frames: Sequence[Any], nbuf: int = 0) -> Any:
    """Rebuild an object from received frames: the pickle stream, then ``nbuf`` out-of-band
    buffers (``zmq.Frame`` objects)."""
    if not nbuf and ser == SER_PICKLE:  # the usual case: one plain pickle
        return pickle.loads(frames[0].buffer)
    buffers = [frame.buffer for frame in frames[1 : 1 + nbuf]]
    return loads(ser, frames[0].buffer, buffers)


def dumps_function(fn: Any, by_source: bool = False) -> bytes:
    """The bytes a function travels as: dill by value, or its source (``by_source``)."""
    if by_source:
        return _SOURCE_FUNCTION + json.dumps(function_source(fn)).encode()
    header = _DILL_FUNCTION + PYTHON_MINOR.encode() + b"\n"
    return header + dill.dumps(fn, protocol=5, recurse=True)


def loads_function(data: Any) -> Any:
    raw = bytes(data)
    if raw.startswith(_SOURCE_FUNCTION):
        return _function_from_source(json.loads(raw[len(_SOURCE_FUNCTION) :]))
    if raw.startswith(_DILL_FUNCTION):
        first, _, body = raw.partition(b"\n")
        _check_origin(first[len(_DILL_FUNCTION) :].decode("ascii", "replace"), "this function")
        return dill.loads(body)
    raise ValueError("not a function serialized by rexec; install the same rexec on both sides")


class SourceUnavailable(VersionSkewError):
    """A function cannot be shipped as source (a lambda, a closure, no source file)."""


def function_source(fn: Any, _seen: set[int] | None = None) -> dict[str, Any]:
    """What ``loads_function`` needs to rebuild ``fn`` from source on another Python version:
    its ``def`` without decorators, the modules it uses, plain-data and importable globals
    (pickled by reference or value with the version-neutral C pickler), and the notebook
    functions it calls, as source too. Other names are looked up on the worker."""
    fn = getattr(fn, "__rexec_function__", fn)
    name = getattr(fn, "__name__", type(fn).__name__)
    why = None
    if not isinstance(fn, types.FunctionType):
        why = "only plain functions can be shipped as source"
    elif name == "<lambda>":
        why = "a lambda cannot be shipped as source; define it with def"
    elif fn.__closure__:
        why = "it uses variables of an enclosing function; define it at the top level"
    if why is not None:
        raise SourceUnavailable(f"{name}: {why}")
    try:
        text = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise SourceUnavailable(f"{name}: its source is not available ({exc})") from None
    node = next(
        (
            item
            for item in ast.walk(ast.parse(text))
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == name
        ),
        None,
    )
    if node is None:
        raise SourceUnavailable(f"{name}: its definition was not found in its source")
    node.decorator_list = []
    seen = _seen if _seen is not None else set()
    seen.add(id(fn))
    modules: dict[str, str] = {}
    values: dict[str, str] = {}
    helpers: dict[str, Any] = {}
    for ref in _global_names(fn.__code__):
        value = fn.__globals__.get(ref, _MISSING)
        value = getattr(value, "__rexec_function__", value)
        if value is _MISSING or id(value) in seen or value is getattr(builtins, ref, _MISSING):
            continue
        if isinstance(value, types.ModuleType):
            modules[ref] = value.__name__
        elif isinstance(value, types.FunctionType) and _needs_by_value(value):
            try:
                helpers[ref] = function_source(value, seen)
            except SourceUnavailable:
                continue
        else:
            try:
                data = pickle.dumps(value, protocol=4)
            except Exception:
                continue
            if b"__main__" not in data and len(data) <= MAX_SOURCE_GLOBAL_BYTES:
                values[ref] = data.hex()
    return {
        "name": name,
        "source": ast.unparse(node),
        "modules": modules,
        "values": values,
        "helpers": helpers,
    }


def _function_from_source(spec: dict[str, Any]) -> Any:
    name = str(spec["name"])
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for alias, module in dict(spec.get("modules") or {}).items():
        namespace[alias] = importlib.import_module(module)
    for ref, helper in dict(spec.get("helpers") or {}).items():
        namespace[ref] = _function_from_source(helper)
    for ref, data in dict(spec.get("values") or {}).items():
        namespace[ref] = pickle.loads(bytes.fromhex(data))
    exec(compile(str(spec["source"]), f"<rexec: source of {name}>", "exec"), namespace)
    return namespace[name]


def function_key(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# -- function shipping with change detection ---------------------------------------------------

_IMMUTABLE_ATOMS: Final = (int, float, complex, str, bytes, bool, type(None), range)
_BY_REFERENCE: Final = (types.ModuleType, types.BuiltinFunctionType, types.MethodWrapperType)
_BY_IDENTITY: Final = (*_IMMUTABLE_ATOMS, *_BY_REFERENCE, type)
_SEQUENCES: Final = (tuple, frozenset)
_MISSING: Final = object()
# A plain dict (a weak one costs a weakref per lookup, on every call), bounded instead.
_names_by_code: dict[types.CodeType, tuple[str, ...]] = {}
_NAMES_CACHE_SIZE: Final = 4096


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    names = _names_by_code.get(code)
    if names is None:
        if len(_names_by_code) >= _NAMES_CACHE_SIZE:
            _names_by_code.clear()
        found = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(_global_names(const))
        names = tuple(sorted(found))
        _names_by_code[code] = names
    return names


def _value_fingerprint(value: Any, seen: set[int]) -> tuple[Any, ...] | None:
    """Identity-based fingerprint of ``value``, or None when it may change in place.

    Each id is followed by its object: the fingerprint keeps the object alive, so its id cannot
    be reused by another object while the fingerprint is cached. Comparing two fingerprints
    then compares ids first and reaches an object only when its id is equal, that is, when it
    is the same object.
    """
    if value is _MISSING:
        return ("missing",)
    if isinstance(value, _BY_IDENTITY):
        return (id(value), value)
    wrapped = getattr(value, "__rexec_function__", None)
    if isinstance(wrapped, types.FunctionType):
        value = wrapped  # a remote_func wrapper ships as the function it wraps
    if isinstance(value, types.FunctionType):
        if id(value) in seen:
            return (id(value),)  # the shipped function itself, or one kept alive already
        seen.add(id(value))
        inner = _function_fingerprint(value, seen)
        return None if inner is None else (id(value), value, inner)
    if isinstance(value, _SEQUENCES):
        parts: list[Any] = [id(value), value]
        for element in value:
            part = _value_fingerprint(element, seen)
            if part is None:
                return None
            parts.append(part)
        return tuple(parts)
    return None


def _function_fingerprint(fn: types.FunctionType, seen: set[int]) -> tuple[Any, ...] | None:
    code = fn.__code__
    parts: list[Any] = [id(code), code]
    defaults = fn.__defaults__
    if defaults is not None:
        part = _value_fingerprint(defaults, seen)
        if part is None:
            return None
        parts.append(part)
    kwdefaults = fn.__kwdefaults__
    parts.append(len(kwdefaults) if kwdefaults else 0)
    for name, value in (kwdefaults or {}).items():  # a dict: its values, not its identity
        part = _value_fingerprint(value, seen)
        if part is None:
            return None
        parts.append((name, part))
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
    for name in _global_names(code):
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
    """Serializes functions by value and reuses the bytes while the function is unchanged.

    ``by_source`` (set when the worker runs another Python version) ships source instead.
    """

    def __init__(self) -> None:
        self._cache: dict[int, _ShippedFunction] = {}
        self._by_source = False

    @property
    def by_source(self) -> bool:
        return self._by_source

    @by_source.setter
    def by_source(self, value: bool) -> None:
        if value != self._by_source:
            self._cache.clear()
        self._by_source = value

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
        try:
            data = dumps_function(fn, self._by_source)
        except SourceUnavailable as exc:
            raise SourceUnavailable(
                f"cannot ship {exc} — the worker runs another Python version, so functions "
                "travel as source there (see the version warning at connect)"
            ) from None
        key = function_key(data)
        if fingerprint is not None:
            fid = id(fn)
            try:
                ref = weakref.ref(fn, lambda _ref: self._cache.pop(fid, None))
            except TypeError:
                return key, data
            self._cache[id(fn)] = _ShippedFunction(ref, fingerprint, key, data)
        return key, data
