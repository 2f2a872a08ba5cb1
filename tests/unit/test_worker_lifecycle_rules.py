"""The pure rules of ``backends.lifecycle``: leases, finding a worker's broker row, and telling a
hung worker from a healthy, a starting or a briefly disconnected one by the broker's view."""

from __future__ import annotations

from rexec.credentials import credential_expiry, verify_worker_credential
from rexec_spawner.activity import WorkerActivity
from rexec_spawner.backends.lifecycle import HangWatch, find_row, issue_lease, renewal_due

KEY = b"k" * 32


def row(worker: str = "default", instance: str = "pod-a", silent: float = 0.5, user: str = "alice"):
    return WorkerActivity(
        user=user,
        worker=worker,
        inflight=0,
        last_activity=0.0,
        idle_seconds=1.0,
        instance=instance,
        silent_seconds=silent,
    )


def test_a_lease_names_the_instance_and_is_due_at_half_its_life():
    lease = issue_lease(KEY, "alice", "default", "pod-a", 100.0, now=1000.0)
    claims = verify_worker_credential(KEY, lease.credential, now=1001.0)
    assert (claims.user, claims.worker, claims.instance) == ("alice", "default", "pod-a")
    assert (lease.expires_at, lease.renew_at) == (1100.0, 1050.0)
    assert credential_expiry(lease.credential) == 1100.0
    assert not renewal_due(lease, now=1049.9)
    assert renewal_due(lease, now=1050.0)
    assert not renewal_due(None, now=5000.0)


def test_find_row_takes_only_the_same_user_name_and_instance():
    rows = [row(user="bob"), row(worker="other"), row(instance="pod-old"), row()]
    assert find_row(rows, "alice", "default", "pod-a") is rows[3]
    assert find_row(rows[:3], "alice", "default", "pod-a") is None
    unnamed = row(instance="")  # a credential that names no instance: the broker has one per name
    assert find_row([unnamed], "alice", "default", "pod-a") is unnamed


def test_a_silent_worker_is_hung_as_soon_as_the_broker_says_so():
    watch = HangWatch(hung_after=3.0)
    assert not watch.observe(True, row(silent=2.9), registered_before=True, now=10.0)
    assert watch.observe(True, row(silent=3.0), registered_before=True, now=10.5)


def test_a_registered_worker_the_broker_no_longer_lists_is_hung_only_after_hung_after():
    watch = HangWatch(hung_after=3.0)
    assert not watch.observe(True, None, registered_before=True, now=100.0)
    assert not watch.observe(True, None, registered_before=True, now=102.9)
    assert watch.observe(True, None, registered_before=True, now=103.0)


def test_a_worker_that_comes_back_starts_the_count_again():
    """A broker restart: the worker is missing for a moment, then registers again."""
    watch = HangWatch(hung_after=3.0)
    assert not watch.observe(True, None, registered_before=True, now=100.0)
    assert not watch.observe(True, row(), registered_before=True, now=102.0)
    assert not watch.observe(True, None, registered_before=True, now=104.0)
    assert not watch.observe(True, None, registered_before=True, now=106.9)
    assert watch.observe(True, None, registered_before=True, now=107.0)


def test_nothing_is_concluded_while_the_broker_cannot_be_asked():
    watch = HangWatch(hung_after=3.0)
    assert not watch.observe(True, None, registered_before=True, now=100.0)
    assert not watch.observe(False, None, registered_before=True, now=110.0)
    # The absence counts again from the next answer, not from before the outage.
    assert not watch.observe(True, None, registered_before=True, now=111.0)
    assert watch.observe(True, None, registered_before=True, now=114.0)


def test_a_worker_that_never_registered_or_a_watch_turned_off_is_never_hung():
    starting = HangWatch(hung_after=3.0)
    assert not starting.observe(True, None, registered_before=False, now=100.0)
    assert not starting.observe(True, None, registered_before=False, now=1000.0)
    off = HangWatch(hung_after=0.0)
    assert not off.observe(True, row(silent=1e6), registered_before=True, now=100.0)
    assert not off.observe(True, None, registered_before=True, now=1e6)
