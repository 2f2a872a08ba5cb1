"""The worker's function cache: which functions run in place, and least-recently-used eviction."""

from __future__ import annotations

from rexec.worker.calls import INLINE_AFTER_FAST_CALLS, INLINE_MAX_SECONDS, FunctionCache


def fast(cache: FunctionCache, key: str, calls: int = INLINE_AFTER_FAST_CALLS) -> None:
    for _ in range(calls):
        cache.record(key, INLINE_MAX_SECONDS / 10)


def test_a_function_runs_in_place_after_enough_quick_calls_and_stops_after_a_slow_one():
    cache = FunctionCache()
    cache.put("f", len)
    fast(cache, "f", INLINE_AFTER_FAST_CALLS - 1)
    assert cache.quick("f") is None
    fast(cache, "f", 1)
    assert cache.quick("f") is len
    cache.record("f", INLINE_MAX_SECONDS * 2)
    assert cache.quick("f") is None
    fast(cache, "f")
    assert cache.quick("f") is len


def test_generators_never_run_in_place_and_odd_keys_are_not_quick():
    cache = FunctionCache()
    cache.put("g", len)
    fast(cache, "g")
    cache.record("g", 0.0, generator=True)
    fast(cache, "g")
    assert cache.quick("g") is None
    assert cache.quick(["not", "hashable"]) is None
    assert cache.quick(None) is None


def test_eviction_follows_use_including_in_place_calls():
    cache = FunctionCache(size=2)
    cache.put("a", len)
    cache.put("b", abs)
    fast(cache, "a")
    cache.touch("a")  # an in-place call of "a": "b" is now the least recently used
    cache.put("c", min)
    assert cache.get("b") is None
    assert cache.quick("a") is len and cache.get("a") is len
    cache.put("d", max)  # "c" was used less recently than "a" (just read)
    assert cache.get("c") is None
    cache.put("e", sum)  # now "a" goes, and stops running in place
    assert cache.get("a") is None and cache.quick("a") is None
    cache.touch("a")  # touching an evicted key is harmless
