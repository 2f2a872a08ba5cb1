"""Function calls end to end: client session -> real broker -> real worker process."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from rexec.client.outputs import CollectingOutput
from rexec.client.remote import remote_func
from rexec.errors import CallTimeout, RemoteError

pytestmark = pytest.mark.integration


def test_result_args_and_kwargs_and_closure_and_lambda(session):
    offset = 10

    def add(a, b=1, *, scale=1):
        return (a + b + offset) * scale

    assert session.call(add, (1,), {"b": 2, "scale": 3}) == 39
    assert session.call(lambda x: x**2, (7,)) == 49
    assert session.call(os.getpid) != os.getpid()


def test_changed_globals_are_seen_by_the_next_call(session):
    namespace = {"factor": 2}
    exec("def scaled(x):\n    return x * factor", namespace)
    scaled = namespace["scaled"]
    assert session.call(scaled, (5,)) == 10
    namespace["factor"] = 3
    assert session.call(scaled, (5,)) == 15


def test_numpy_round_trip_is_exact(session):
    array = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    result = session.call(lambda a: a * 2, (array,))
    assert result.shape == (1000, 1000)
    assert np.array_equal(result, array * 2)
    result[0, 0] = -1  # results are ordinary writable arrays
    assert result[0, 0] == -1


def test_arrays_larger_than_the_send_window_travel_both_ways_again_and_again(session):
    # 48 MB each way, three times the broker's default window: each message goes whole.
    array = np.arange(6_000_000, dtype=np.float64)
    for _ in range(3):
        result = session.call(lambda a: a + 1, (array,), timeout=60)
        assert result.nbytes == array.nbytes and result[-1] == array[-1] + 1
    futures = [session.submit(lambda a: a.sum(), array) for _ in range(4)]
    assert [f.result(timeout=60) for f in futures] == [array.sum()] * 4


def test_exception_keeps_its_type_and_remote_traceback(session):
    def fail(value):
        raise KeyError(f"missing {value}")

    with pytest.raises(KeyError) as info:
        session.call(fail, ("x",))
    assert info.value.args == ("missing x",)
    remote = str(info.value.__cause__)
    assert "in fail" in remote and "KeyError" in remote


def test_exception_of_a_type_unknown_here_is_a_remote_error(session):
    def fail():
        class Strange(Exception):
            pass

        raise Strange("odd")

    with pytest.raises(RemoteError) as info:
        session.call(fail)
    assert info.value.ename == "Strange"
    assert info.value.evalue == "odd"
    assert any("in fail" in line for line in info.value.traceback)


def test_unpicklable_result_is_an_error_not_none(session):
    with pytest.raises(Exception, match="could not be serialized"):
        session.call(lambda: [(i for i in range(3))])


def test_generator_items_arrive_as_the_caller_iterates(session):
    def produce(n):
        for i in range(n):
            print(f"making {i}")
            yield i * i
        return "done"

    out = CollectingOutput()
    gen = session.call(produce, (3,), output=out)
    assert next(gen) == 0
    # The worker makes item 1 only when asked: nothing past "making 0" was printed yet.
    assert out.text() == "making 0\n"
    assert list(gen) == [1, 4]
    assert gen.value == "done"
    assert out.text() == "making 0\nmaking 1\nmaking 2\n"


def test_abandoned_generator_is_closed_on_the_worker(session):
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    gen = session.call(endless)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    assert session.call(lambda: 1) == 1


def test_stdout_streams_live_and_in_order(session):
    def talk():
        import sys
        import time

        for i in range(5):
            print(f"out {i}")
            print(f"err {i}", file=sys.stderr)
            time.sleep(0.2)
        return "ok"

    arrivals: list[tuple[float, str]] = []

    class Recorder(CollectingOutput):
        def handle(self, msg_type, content):
            super().handle(msg_type, content)
            arrivals.append((time.monotonic(), content.get("text", "")))

    out = Recorder()
    start = time.monotonic()
    assert session.call(talk, output=out) == "ok"
    texts = [c["text"] for t, c in out.messages if t == "stream"]
    assert "".join(texts) == "".join(f"out {i}\nerr {i}\n" for i in range(5))
    names = [c["name"] for t, c in out.messages if t == "stream"]
    runs = [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]
    assert runs == ["stdout", "stderr"] * 5  # interleaving kept, however writes were batched
    # Live: the first line arrived long before the call ended (~1 s).
    assert arrivals[0][0] - start < 0.5
    assert arrivals[-1][0] - arrivals[0][0] > 0.6


def test_concurrent_calls_run_concurrently_and_keep_their_own_output(session):
    def job(i):
        import time

        for _ in range(3):
            print(f"job {i}")
            time.sleep(0.3)
        return i

    outputs = [CollectingOutput() for _ in range(4)]
    results: list[object] = [None] * 4

    def run(i):
        results[i] = session.call(job, (i,), output=outputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - start
    assert results == [0, 1, 2, 3]
    assert elapsed < 2.5, f"4 calls of 0.9 s took {elapsed:.1f} s: they ran one after another"
    for i, out in enumerate(outputs):
        assert out.text() == f"job {i}\n" * 3


def test_submit_returns_futures(session):
    futures = [session.submit(lambda x: x + 1, i) for i in range(5)]
    assert all(isinstance(f, Future) for f in futures)
    assert [f.result(timeout=30) for f in futures] == [1, 2, 3, 4, 5]


def test_futures_complete_while_the_io_thread_sleeps_after_a_caller_read(session, monkeypatch):
    """After a synchronous call its caller read the reply itself, so the I/O thread sleeps
    without watching the socket. A submitted call's reply has no caller to read it: the I/O
    thread must be woken for it, not find it at its next idle check (made 60 s here)."""
    monkeypatch.setattr("rexec.channel.SAFETY_POLL_MS", 60_000)
    for round_ in range(5):
        assert session.call(lambda x: x * 2, (round_,)) == round_ * 2
        time.sleep(0.05)  # the I/O thread goes back to sleep meanwhile
        assert session.submit(lambda x: x + 1, round_).result(timeout=5) == round_ + 1
    # Synchronous calls from several threads: one reads, the others wait for its dispatch.
    results: list[int] = []

    def caller(base: int) -> None:
        for i in range(10):
            results.append(session.call(lambda x: x, (base + i,), timeout=5))

    for round_ in range(3):
        results.clear()
        threads = [threading.Thread(target=caller, args=(100 * n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == sorted(100 * n + i for n in range(4) for i in range(10))
        assert session.submit(lambda r: r, round_).result(timeout=5) == round_


def test_many_calls_finishing_at_once_on_worker_threads_all_succeed(session):
    """Replies leave from many call threads at the same moment; none may trip over another
    (each checks for captured output before its reply)."""

    def pause(i):
        import time

        time.sleep(0.2)
        return i

    for _ in range(3):
        futures = [session.submit(pause, i) for i in range(48)]
        assert [f.result(timeout=30) for f in futures] == list(range(48))


def test_more_calls_in_flight_than_the_broker_accepts_wait_their_turn(
    broker_stack, session_factory
):
    """The broker takes a limited number of requests in flight per connection and says how many
    in ``welcome``; the client holds the rest back instead of having them refused."""
    broker_stack.stop_broker()
    broker_stack.start_broker(max_in_flight=4)
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(token))
    assert session.max_in_flight == 4

    def pause_then(value):
        import time

        time.sleep(0.05)
        return value

    futures = [session.submit(pause_then, i) for i in range(40)]
    assert [f.result(timeout=60) for f in futures] == list(range(40))


def test_a_call_waiting_for_room_in_flight_times_out_without_running(session, tmp_path):
    session.max_in_flight = 1
    marker = tmp_path / "ran"

    def pause_then(value):
        import time

        time.sleep(1.0)
        return value

    def touch(path):
        open(path, "w").close()

    busy = session.submit(pause_then, "first")
    with pytest.raises(CallTimeout):
        session.call(touch, (str(marker),), timeout=0.3)  # waits for room; never sent
    assert busy.result(timeout=10) == "first"
    assert session.call(pause_then, ("next",), timeout=10) == "next"  # the window is free again
    assert not marker.exists(), "a call that timed out while waiting to be sent still ran"


def test_timeout_cancels_the_call_and_the_worker_keeps_working(session):
    def slow():
        while True:
            sum(range(1000))

    start = time.monotonic()
    with pytest.raises(CallTimeout):
        session.call(slow, timeout=1.0)
    assert time.monotonic() - start < 5
    assert session.call(lambda: "alive") == "alive"


def test_remote_func_decorator_with_explicit_session(session):
    @remote_func(session=session, timeout=30)
    def double(x):
        return 2 * x

    @remote_func(session=session)
    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    assert double(21) == 42
    assert double.local(2) == 4
    assert fact(10) == 3628800
    assert double.submit(5).result(timeout=30) == 10


def test_pipelined_calls_all_complete_even_when_queues_fill(broker_stack, session_factory):
    # A broker with tiny per-connection queues must hold back, not drop, what peers can't take.
    broker_stack.stop_broker()
    broker_stack.start_broker(queue_depth=8)
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    session = session_factory(broker_stack.profile(token))
    futures = [session.submit(lambda i: i * i, i) for i in range(600)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(600)]
    assert broker_stack.broker.stats["backlogged"] > 0  # the queues really did fill


def test_output_below_python_reaches_the_caller(session):
    def shell_out():
        import os
        import subprocess

        os.system("echo from-os-system")
        subprocess.run(["sh", "-c", "echo from-subprocess >&2"], check=True)
        os.write(1, b"raw fd write\n")
        return "done"

    out = CollectingOutput()
    assert session.call(shell_out, output=out) == "done"
    assert "from-os-system\n" in out.text("stdout")
    assert "raw fd write\n" in out.text("stdout")
    assert "from-subprocess\n" in out.text("stderr")
    cell = CollectingOutput()
    session.execute("import os\nos.system('echo cell-shell')", output=cell)
    assert "cell-shell" in cell.text("stdout")


def test_functions_see_the_cell_namespace_and_completion_works(session):
    session.execute("remote_only = 41\ndef helper():\n    return remote_only + 1")
    namespace = {"__name__": "__main__"}
    exec("def uses_cells():\n    return helper() + remote_only", namespace)
    assert session.call(namespace["uses_cells"]) == 83
    # The shipped value wins over the remote one for names the function brought along.
    exec("remote_only = 0\ndef shadows():\n    return remote_only", namespace)
    assert session.call(namespace["shadows"]) == 0
    reply = session.complete("remote_o")
    assert "remote_only" in reply["matches"]
