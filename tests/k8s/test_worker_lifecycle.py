"""A worker pod's credential lives only as long as the pod: renewed in its Secret while the pod
runs (the node agent updates the mounted file as a kubelet does), renewed at once by a restarted
spawner, revoked at the broker when the pod is deleted. A hung worker pod is replaced within
seconds of REXEC_WORKER_HUNG_AFTER. Real API server, real broker, the spawner under uvicorn as a
ServiceAccount bound to exactly ``RBAC_RULES``."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rexec.client.session import Session
from rexec.credentials import WorkerClaims, verify_worker_credential
from rexec.profile import Profile
from tests.k8s.helpers import K8sCluster, wait_for
from tests.k8s.spawner_stack import make_k8s_settings, run_spawner, service_account_kubeconfig

NAMESPACE_GONE_TIMEOUT = 120


@pytest.fixture(scope="module")
def sa_kubeconfig(
    k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    with service_account_kubeconfig(k8s_cluster, tmp_path_factory.mktemp("sa")) as path:
        yield path


@pytest.fixture
def release() -> str:
    return f"rl{uuid.uuid4().hex[:6]}"


def secret_credential(cluster: K8sCluster, namespace: str, name: str = "default") -> str:
    secret = cluster.core.read_namespaced_secret(f"worker-{name}-credential", namespace)
    return base64.b64decode(secret.data["credential"]).decode()


def pod_instance(cluster: K8sCluster, namespace: str, name: str = "default") -> str:
    pod = cluster.core.read_namespaced_pod(f"worker-{name}", namespace)
    return str(pod.metadata.annotations["rexec.dev/instance"])


def claims_of(broker_stack: Any, credential: str) -> WorkerClaims:
    return verify_worker_credential(broker_stack.signing_key, credential)


def registered(broker_stack: Any, user: str = "alice") -> list[Any]:
    return [w for w in broker_stack.broker.table.workers.values() if w.user == user]


def wait_namespace_gone(cluster: K8sCluster, name: str) -> None:
    def gone() -> bool:
        return name not in {n.metadata.name for n in cluster.core.list_namespace().items}

    wait_for(gone, NAMESPACE_GONE_TIMEOUT, f"namespace {name} to be deleted", interval=0.5)


def test_a_running_workers_credential_is_renewed_in_its_secret_before_it_expires(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, session_factory, tmp_path, release
):
    ttl = 12.0  # renewed at 6 s; the worker looks for it every quarter of what is left
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner",
        broker_stack,
        sa_kubeconfig,
        {"alice": ()},
        release,
        worker_credential_ttl=ttl,
    )
    with run_spawner(settings, tokens) as spawner:
        assert spawner.put("alice").status_code == 201
        body = spawner.wait_state("alice", ("ready", "failed"))
        assert body["state"] == "ready", body
        namespace = body["info"]["namespace"]
        instance = pod_instance(k8s_cluster, namespace)
        first = secret_credential(k8s_cluster, namespace)
        claims = claims_of(broker_stack, first)
        # The credential names the pod, so the broker's rows and a revocation can too.
        assert claims.instance == instance
        assert claims.expires_at is not None
        assert claims.expires_at - claims.issued_at == pytest.approx(ttl, abs=1)
        pid = node_agent.pid_of(namespace, "worker-default")

        # Past the first credential's expiry: the broker would have dropped the worker.
        while time.time() < claims.expires_at + 4:
            time.sleep(0.5)
        renewed = secret_credential(k8s_cluster, namespace)
        assert renewed != first
        later = claims_of(broker_stack, renewed)
        assert later.instance == instance and later.expires_at is not None
        assert later.expires_at > claims.expires_at
        [conn] = registered(broker_stack)
        assert conn.instance == instance  # the same worker, registered with a renewed credential
        assert conn.expires_at is not None and conn.expires_at > time.time()
        assert node_agent.pid_of(namespace, "worker-default") == pid
        assert spawner.get("alice").json()["state"] == "ready"
        session = session_factory(broker_stack.profile(tokens["alice"]))
        assert session.call(lambda: 6 * 7) == 42

        assert spawner.delete("alice").json() == {"deleted": True}
        wait_namespace_gone(k8s_cluster, namespace)


def test_a_restarted_spawner_renews_the_credentials_of_the_workers_it_adopts(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, tmp_path, release
):
    """Their expiry is unknown to it (it cannot read Secrets back): it renews them at once,
    not at half of a lease it never saw."""
    ttl = 40.0  # the worker looks for a renewal every quarter of its credential's remaining life
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner",
        broker_stack,
        sa_kubeconfig,
        {"alice": ()},
        release,
        worker_credential_ttl=ttl,
    )
    with run_spawner(settings, tokens) as first:
        assert first.put("alice").status_code == 201
        body = first.wait_state("alice", ("ready", "failed"))
        assert body["state"] == "ready", body
    namespace = body["info"]["namespace"]
    before = secret_credential(k8s_cluster, namespace)
    half_life = claims_of(broker_stack, before).issued_at + ttl / 2
    with run_spawner(settings, tokens) as second:
        # Nobody asks about alice's worker: the spawner finds it by itself.
        renewed = wait_for(
            lambda: (c := secret_credential(k8s_cluster, namespace)) != before and c,
            10,
            "the adopted worker's credential to be renewed",
        )
        claims = claims_of(broker_stack, renewed)
        assert claims.issued_at < half_life - 8, "renewed at once, not at half-life"
        assert claims.instance == pod_instance(k8s_cluster, namespace)
        wait_for(
            lambda: [w.issued_at for w in registered(broker_stack)] == [claims.issued_at],
            ttl / 4 + 10,
            "the worker to register with the renewed credential",
        )
        assert second.get("alice").json()["created_at"] == body["created_at"]
        assert second.delete("alice").json() == {"deleted": True}
        wait_namespace_gone(k8s_cluster, namespace)


def test_a_deleted_workers_credential_is_revoked_at_the_broker(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, tmp_path, release
):
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner", broker_stack, sa_kubeconfig, {"alice": ()}, release
    )
    with run_spawner(settings, tokens) as spawner:
        assert spawner.put("alice").status_code == 201
        body = spawner.wait_state("alice", ("ready", "failed"))
        assert body["state"] == "ready", body
        namespace = body["info"]["namespace"]
        saved = secret_credential(k8s_cluster, namespace)  # what a copy of the Secret holds
        instance = pod_instance(k8s_cluster, namespace)
        assert [w.instance for w in registered(broker_stack)] == [instance]

        assert spawner.delete("alice").json() == {"deleted": True}
        wait_for(lambda: not registered(broker_stack), 15, "the deleted worker to be dropped")
        wait_for(
            lambda: broker_stack.broker.revocations.revoked(instance),
            10,
            "the broker to know the instance is revoked",
        )
        # The saved credential has hours left, but no worker registers with it any more.
        assert claims_of(broker_stack, saved).expires_at > time.time() + 3600
        copy = broker_stack.start_worker("alice", credential=saved, wait=False)
        assert copy.proc.wait(20) == 3, copy.log()  # refused
        assert "revoked" in copy.log()
        assert not registered(broker_stack)
        wait_namespace_gone(k8s_cluster, namespace)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[float]:
    """The process SIGSTOPped (alive, but nothing in it runs); yields when; killed after."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_hung_worker_pod_is_reported_failed_and_the_next_put_gets_a_new_one(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, session_factory, tmp_path, release
):
    hung_after = 3.0
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner",
        broker_stack,
        sa_kubeconfig,
        {"alice": ()},
        release,
        worker_hung_after=hung_after,
    )
    with run_spawner(settings, tokens) as spawner:
        assert spawner.put("alice").status_code == 201
        body = spawner.wait_state("alice", ("ready", "failed"))
        assert body["state"] == "ready", body
        namespace = body["info"]["namespace"]
        old_instance = pod_instance(k8s_cluster, namespace)
        old_pid = node_agent.pid_of(namespace, "worker-default")
        time.sleep(hung_after + 1)  # a healthy idle worker is never taken for a hung one
        assert spawner.get("alice").json()["state"] == "ready"

        with stopped(old_pid) as since:
            failed = wait_for(
                lambda: (b := spawner.get("alice").json())["state"] == "failed" and b,
                hung_after + 5,
                "the hung worker to be reported failed",
            )
            noticed = time.monotonic() - since
            assert "the worker stopped responding" in failed["error"], failed
            assert "the next call starts a new one" in failed["error"]
            assert failed["progress"][-1]["message"] == failed["error"]
            wait_for(lambda: not registered(broker_stack), 10, "the hung worker to be dropped")
            assert broker_stack.broker.revocations.revoked(old_instance)

            created = spawner.put("alice")
            assert created.status_code == 201, created.text
            body = spawner.wait_state("alice", ("ready", "failed"), timeout=30)
            took = time.monotonic() - since
        assert body["state"] == "ready", body
        print(f"\nhung worker reported {noticed:.1f} s, replaced {took:.1f} s after SIGSTOP")
        assert noticed < hung_after + 3
        assert took < hung_after + 12
        assert pod_instance(k8s_cluster, namespace) != old_instance
        new_pid = node_agent.pid_of(namespace, "worker-default")
        session = session_factory(broker_stack.profile(tokens["alice"]))
        assert session.call(os.getpid) == new_pid != old_pid

        assert spawner.delete("alice").json() == {"deleted": True}
        wait_namespace_gone(k8s_cluster, namespace)


def test_a_client_whose_worker_pod_hangs_gets_a_new_one_by_itself(
    k8s_cluster, node_agent, sa_kubeconfig, broker_stack, tmp_path, release
):
    """What a notebook sees: a call on a hung worker fails, the next one runs on a new pod."""
    hung_after = 3.0
    settings, tokens = make_k8s_settings(
        tmp_path / "spawner",
        broker_stack,
        sa_kubeconfig,
        {"alice": ()},
        release,
        worker_hung_after=hung_after,
    )
    with run_spawner(settings, tokens) as spawner:
        profile = Profile(spawner_url=spawner.url, token=tokens["alice"])
        with Session(profile, progress=lambda message: None) as session:
            old_pid = session.call(os.getpid, timeout=60)
            namespace = spawner.get("alice").json()["info"]["namespace"]
            assert node_agent.pid_of(namespace, "worker-default") == old_pid
            with stopped(old_pid) as since:
                new_pid = None
                while new_pid is None and time.monotonic() - since < 40:
                    with contextlib.suppress(Exception):  # the call the hang caught
                        new_pid = session.call(os.getpid, timeout=30)
                took = time.monotonic() - since
        assert new_pid is not None and new_pid != old_pid
        assert new_pid == node_agent.pid_of(namespace, "worker-default")
        print(f"\nthe client ran on a new worker {took:.1f} s after SIGSTOP")
        assert took < hung_after + 12, f"a new worker took {took:.1f} s"
        assert spawner.delete("alice").json() == {"deleted": True}
        wait_namespace_gone(k8s_cluster, namespace)
