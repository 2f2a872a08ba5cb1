"""Serialization: fast path, by-value embedding, out-of-band buffers, function caching."""

from __future__ import annotations

import numpy as np

from rexec import serialization as ser


def roundtrip(obj):
    packed = ser.dumps(obj)
    return packed, ser.loads(packed.ser, packed.main, packed.buffers)


def test_plain_data_uses_the_c_pickler():
    packed, value = roundtrip(((1, "two", [3.0]), {"k": {"v": None}}))
    assert packed.ser == ser.SER_PICKLE
    assert value == ((1, "two", [3.0]), {"k": {"v": None}})


def test_large_arrays_travel_out_of_band_and_small_ones_in_band():
    big = np.arange(200_000, dtype=np.int64)
    small = np.arange(10)
    packed, (b, s) = roundtrip((big, small))
    assert len(packed.buffers) == 1
    assert memoryview(packed.buffers[0]).nbytes == big.nbytes
    assert len(packed.main) < 10_000
    assert np.array_equal(b, big) and np.array_equal(s, small)


def test_lambdas_closures_and_main_classes_are_embedded_by_value():
    factor = 3

    class Point:
        def __init__(self, x):
            self.x = x

    _, value = roundtrip({"f": lambda x: x * factor, "points": [Point(1), Point(2)]})
    assert value["f"](2) == 6
    assert [p.x for p in value["points"]] == [1, 2]
    assert type(value["points"][0]) is type(value["points"][1])


def test_modules_travel_by_name():
    import json

    _, value = roundtrip({"m": json})
    assert value["m"] is json


def test_function_shipper_reuses_bytes_until_a_dependency_changes():
    namespace = {"G": 1}
    exec("def f(x):\n    return x + G", namespace)
    f = namespace["f"]
    shipper = ser.FunctionShipper()
    key1, data1 = shipper.pack(f)
    key2, data2 = shipper.pack(f)
    assert (key1, data1) == (key2, data2)
    assert data1 is data2  # cached, not re-serialized
    namespace["G"] = 2
    key3, _ = shipper.pack(f)
    assert key3 != key1
    assert ser.loads_function(shipper.pack(f)[1])(1) == 3


def test_a_global_rebound_while_its_old_value_was_freed_is_still_noticed():
    # Large ints are freed when rebound, and a new one often takes the freed address: a cache
    # keyed by ids alone would then ship the function with a value it no longer has.
    namespace = {"X": 10**20}
    exec("def f():\n    return X", namespace)
    f = namespace["f"]
    shipper = ser.FunctionShipper()
    stale = 0
    for step in range(1, 200):
        namespace["X"] = 10**20 + step
        if step % 2 == 0:  # packed every other rebinding, so a freed address can come back
            stale += ser.loads_function(shipper.pack(f)[1])() != namespace["X"]
    assert stale == 0


def test_keyword_only_defaults_do_not_defeat_the_cache():
    namespace: dict[str, object] = {}
    exec("def f(*, scale=2):\n    return scale", namespace)
    f = namespace["f"]
    shipper = ser.FunctionShipper()
    assert shipper.pack(f)[1] is shipper.pack(f)[1]
    f.__kwdefaults__ = {"scale": 3}  # type: ignore[attr-defined]
    assert ser.loads_function(shipper.pack(f)[1])() == 3


def test_functions_depending_on_mutable_globals_are_never_cached():
    namespace = {"items": [1]}
    exec("def f():\n    return list(items)", namespace)
    f = namespace["f"]
    assert ser.function_fingerprint(f) is None
    shipper = ser.FunctionShipper()
    _, first = shipper.pack(f)
    namespace["items"].append(2)
    _, second = shipper.pack(f)
    assert ser.loads_function(second)() == [1, 2]
    assert first != second


def test_function_key_is_a_content_hash():
    assert ser.function_key(b"abc") == ser.function_key(b"abc") != ser.function_key(b"abd")
