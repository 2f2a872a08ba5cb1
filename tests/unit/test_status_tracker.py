"""The worker state the status bar shows, derived from the session without any I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rexec_kernel.status import StatusTracker, cpu_percent, sample_worker


@dataclass
class FakeSession:
    """A stand-in for ``Session``: only the two attributes the tracker reads."""

    connected: bool = True
    worker_info: dict[str, Any] | None = None


INFO = {"pid": 41, "host": "node-1", "python": "3.11.7", "rexec": "0.1.0"}


def test_no_session_and_an_error_is_not_connected_with_the_reason() -> None:
    message = StatusTracker("default", source="kernel").observe(None, error="no Rexec stack")
    assert message["worker_state"] == "not connected"
    assert message["error"] == "no Rexec stack"
    assert message["worker"] is None


def test_progress_while_connecting_is_starting_with_the_steps() -> None:
    tracker = StatusTracker("default", source="kernel")
    tracker.note_progress("starting worker process (pid 41)")
    tracker.note_progress("worker connected to the broker")
    message = tracker.observe(None, connecting=True)
    assert message["worker_state"] == "starting"
    assert message["progress"][-1] == "worker connected to the broker"


def test_ready_busy_ready_and_the_worker_identity() -> None:
    tracker = StatusTracker("default", source="kernel")
    session = FakeSession(worker_info=dict(INFO, env_id="env-1234"))
    ready = tracker.observe(session)
    assert ready["worker_state"] == "ready"
    assert ready["worker"] == {"name": "default", **INFO}
    assert ready["env_id"] == "env-1234"
    assert ready["progress"] == []
    tracker.begin()
    assert tracker.observe(session)["worker_state"] == "busy"
    tracker.end()
    assert tracker.observe(session)["worker_state"] == "ready"


def test_env_id_is_none_when_the_worker_does_not_report_one() -> None:
    message = StatusTracker("w", source="magics").observe(FakeSession(worker_info=INFO))
    assert message["env_id"] is None
    assert message["source"] == "magics"


def test_worker_gone_is_dead_then_a_new_worker_is_reported_as_such() -> None:
    tracker = StatusTracker("default", source="kernel")
    session = FakeSession(worker_info=INFO)
    tracker.observe(session)
    session.worker_info = None
    assert tracker.observe(session)["worker_state"] == "dead"
    tracker.note_progress("the worker is gone; starting a new one (its state is lost)")
    assert tracker.observe(session)["worker_state"] == "starting"
    session.worker_info = dict(INFO, pid=42)
    back = tracker.observe(session)
    assert back["worker_state"] == "ready"
    assert back["worker"]["pid"] == 42
    assert "variables are gone" in back["detail"]


def test_lost_broker_is_not_connected_but_a_pending_request_is_starting() -> None:
    tracker = StatusTracker("default", source="kernel")
    session = FakeSession(worker_info=INFO)
    tracker.observe(session)
    session.connected = False
    lost = tracker.observe(session)
    assert (lost["worker_state"], lost["detail"]) == ("not connected", "reconnecting to the broker")
    tracker.begin()
    assert tracker.observe(session)["worker_state"] == "starting"


def test_cpu_is_computed_between_samples_of_the_same_process() -> None:
    tracker = StatusTracker("default", source="kernel")
    session = FakeSession(worker_info=INFO)
    base = {"pid": 41, "wall": 100.0, "cpu_seconds": 2.0, "rss_bytes": 50_000_000}
    tracker.note_sample(base)
    first = tracker.observe(session)["resources"]
    assert first == {"cpu_percent": None, "rss_bytes": 50_000_000, "mem_total_bytes": None}
    tracker.note_sample({**base, "wall": 102.0, "cpu_seconds": 3.0})
    assert tracker.observe(session)["resources"]["cpu_percent"] == 50.0
    assert cpu_percent({**base, "pid": 7}, base) is None


def test_changed_reports_each_distinct_message_once() -> None:
    tracker = StatusTracker("default", source="kernel")
    message = tracker.observe(FakeSession(worker_info=INFO))
    assert tracker.changed(message) is True
    assert tracker.changed(tracker.observe(FakeSession(worker_info=INFO))) is False


def test_sample_worker_measures_this_process() -> None:
    sample = sample_worker()
    assert sample["rss_bytes"] > 1_000_000
    assert sample["cpu_seconds"] > 0
    assert sample["mem_total_bytes"] > sample["rss_bytes"]
