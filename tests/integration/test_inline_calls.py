"""Calls of quick functions run in place on the worker's I/O thread; a slow one never holds up
the others: the standby thread takes over reading, cancels still land, output still streams."""

from __future__ import annotations

import threading
import time

import pytest

from rexec.channel import STANDBY_DORMANT_AFTER
from rexec.client.outputs import CollectingOutput
from rexec.errors import CallTimeout
from rexec.worker.calls import INLINE_AFTER_FAST_CALLS
from rexec.worker.runtime import STANDBY_AFTER

pytestmark = pytest.mark.integration


def _make_probe():
    def thread_name(delay: float = 0.0, text: str = "") -> str:
        """Print ``text``, wait ``delay`` s and say which worker thread ran the call."""
        import threading
        import time

        if text:
            print(text, flush=True)
        end = time.monotonic() + delay
        while time.monotonic() < end:  # short sleeps: an interrupt lands between them
            time.sleep(0.01)
        return threading.current_thread().name

    return thread_name


thread_name = _make_probe()  # defined in a function, so it travels by value


def warm_up(session) -> None:
    """Call ``thread_name`` quickly until the worker runs it in place.

    It takes INLINE_AFTER_FAST_CALLS quick calls in a row; on a loaded machine one of them may
    take longer than the limit and start the count again, so a few more tries are allowed.
    """
    names = [session.call(thread_name)]
    assert names[0].startswith("rexec-call"), names  # unknown functions start on the pool
    while names[-1] != "rexec-worker-io" and len(names) < 20 * (INLINE_AFTER_FAST_CALLS + 1):
        names.append(session.call(thread_name))
    assert names[-1] == "rexec-worker-io", names  # quick ones then run in place


def test_quick_functions_move_in_place_and_a_slow_call_moves_them_back(session):
    warm_up(session)
    assert session.call(thread_name, (0.2,)) == "rexec-worker-io"  # still trusted to be quick
    assert session.call(thread_name).startswith("rexec-call")  # one slow call: back to the pool


def test_a_call_that_turns_slow_in_place_does_not_hold_up_others(session):
    warm_up(session)
    slow = session.submit(thread_name, 3.0)
    time.sleep(0.2)  # the slow call now occupies the I/O thread
    start = time.monotonic()
    assert session.call(lambda: 42, timeout=10) == 42
    waited = time.monotonic() - start
    assert waited < 1.0, f"a call waited {waited:.2f} s behind a slow in-place call"
    assert slow.result(timeout=10) == "rexec-worker-io"


def test_a_call_that_turns_slow_after_the_worker_idled_does_not_hold_up_others(session):
    warm_up(session)
    time.sleep(STANDBY_DORMANT_AFTER + 0.5)  # idle: the standby thread sleeps until woken
    slow = session.submit(thread_name, 3.0)
    time.sleep(0.2)
    start = time.monotonic()
    assert session.call(lambda: 42, timeout=10) == 42
    waited = time.monotonic() - start
    assert waited < 1.0, f"a call waited {waited:.2f} s behind a slow in-place call"
    assert slow.result(timeout=10) == "rexec-worker-io"


def test_a_slow_in_place_call_is_cancelled_and_the_worker_carries_on(session):
    warm_up(session)
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        session.call(thread_name, (30.0,), timeout=0.5)
    assert time.monotonic() - start < 5.0
    assert session.call(lambda: "alive", timeout=10) == "alive"
    assert session.call(thread_name, timeout=10).startswith("rexec-call")


def test_output_of_a_slow_in_place_call_streams_before_it_returns(session):
    warm_up(session)
    output = CollectingOutput()
    seen_at: list[float] = []

    class Timed(CollectingOutput):
        def handle(self, msg_type, content):
            seen_at.append(time.monotonic())
            output.handle(msg_type, content)

    start = time.monotonic()
    done = threading.Event()
    result: list[str] = []

    def run() -> None:
        result.append(session.call(thread_name, (1.5, "early"), output=Timed(), timeout=10))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10)
    assert result == ["rexec-worker-io"]
    assert output.text() == "early\n"
    assert seen_at and seen_at[0] - start < 1.0 + STANDBY_AFTER, "output waited for the return"


def test_a_burst_with_a_slow_call_in_it_does_not_hold_back_the_replies_before_it(session):
    """Replies to a burst of requests are sent together when the burst ends; a call in it that
    turns slow must not hold back the replies of the quick calls dispatched before it."""
    warm_up(session)
    quick = [session.submit(thread_name) for _ in range(30)]
    slow = session.submit(thread_name, 3.0)
    start = time.monotonic()
    assert all(f.result(timeout=10) for f in quick)
    waited = time.monotonic() - start
    assert waited < 1.5, f"quick replies waited {waited:.2f} s for a slow call behind them"
    assert session.call(lambda: 42, timeout=10) == 42
    assert time.monotonic() - start < 2.0
    assert slow.result(timeout=10) == "rexec-worker-io"
