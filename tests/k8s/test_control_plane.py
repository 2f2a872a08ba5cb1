"""The k8s test infrastructure itself: a real API server, controllers, scheduler and the test node
agent running pods as local processes."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.helpers import NODE_NAME, K8sCluster, wait_for

ApiException = pytest.importorskip("kubernetes.client.rest").ApiException

# The "image" is ignored by the test node agent (it runs the command on this machine); a real
# cluster (REXEC_K8S_EXTERNAL=1 with the agent) would still want a valid one.
IMAGE = "python:3.11-slim"


def pod_manifest(
    name: str,
    code: str,
    *,
    args: list[str] | None = None,
    restart: str = "Never",
    env: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "rexec-k8s-test"}},
        "spec": {
            "restartPolicy": restart,
            "nodeSelector": {"rexec.test/node-agent": "true"},
            "terminationGracePeriodSeconds": 10,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": [sys.executable, "-c", textwrap.dedent(code)],
                    "args": args or [],
                    "env": env or [],
                    "volumeMounts": mounts or [],
                }
            ],
            "volumes": volumes or [],
        },
    }


def read_pod(cluster: K8sCluster, ns: str, name: str) -> Any:
    return cluster.core.read_namespaced_pod(name, ns)


def pod_gone(cluster: K8sCluster, ns: str, name: str) -> bool:
    try:
        read_pod(cluster, ns, name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def events_for(cluster: K8sCluster, ns: str, name: str) -> list[Any]:
    events = cluster.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    return list(events.items)


def wait_phase(
    cluster: K8sCluster, ns: str, name: str, phases: tuple[str, ...], timeout: float = 60
) -> Any:
    def check() -> Any:
        pod = read_pod(cluster, ns, name)
        return pod if pod.status.phase in phases else None

    return wait_for(check, timeout, f"pod {ns}/{name} to reach {phases}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ----------------------------------------------------------------------------- API objects


def test_namespace_secret_and_network_policy(k8s_cluster: K8sCluster, k8s_namespace: str) -> None:
    core = k8s_cluster.core
    ns = k8s_namespace
    assert core.read_namespace(ns).status.phase == "Active"

    core.create_namespaced_secret(
        ns, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    )
    secret = core.read_namespaced_secret("creds", ns)
    assert base64.b64decode(secret.data["token"]) == b"s3cret"

    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "workers-only-from-broker"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "rexec-worker"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "rexec-broker"}}}],
                    "ports": [{"protocol": "TCP", "port": 5555}],
                }
            ],
        },
    }
    k8s_cluster.networking.create_namespaced_network_policy(ns, policy)
    got = k8s_cluster.networking.read_namespaced_network_policy("workers-only-from-broker", ns)
    assert got.spec.pod_selector.match_labels == {"app": "rexec-worker"}
    assert got.spec.ingress[0].ports[0].port == 5555


def test_node_is_ready_and_leased(k8s_cluster: K8sCluster, node_agent: Any) -> None:
    from kubernetes import client

    node = k8s_cluster.core.read_node(NODE_NAME)
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    assert node.status.allocatable["pods"] == "110"
    assert not [t for t in node.spec.taints or [] if t.effect in ("NoSchedule", "NoExecute")]
    lease = client.CoordinationV1Api(k8s_cluster.api_client).read_namespaced_lease(
        NODE_NAME, "kube-node-lease"
    )
    assert lease.spec is not None and lease.spec.renew_time is not None
    age = time.time() - lease.spec.renew_time.timestamp()
    assert age < 30, f"lease renewed {age:.0f}s ago"


# ----------------------------------------------------------------------------- pods


def test_pod_runs_with_secret_env_and_volume(
    k8s_cluster: K8sCluster, node_agent: Any, k8s_namespace: str, tmp_path: Path
) -> None:
    core, ns = k8s_cluster.core, k8s_namespace
    token = uuid.uuid4().hex
    core.create_namespaced_secret(
        ns, {"metadata": {"name": "worker-creds"}, "stringData": {"token": token, "user": "alice"}}
    )
    # The pod reports what it got into a hostPath dir the test can read, then waits for the test
    # to release it, so Running can be observed before Succeeded. Bounded: it gives up at 60 s.
    code = """
        import os, sys, time
        out = sys.argv[1]
        with open("/etc/rexec/creds/token") as f:
            file_token = f.read()
        with open(os.path.join(out, "report.txt"), "w") as f:
            f.write(f"{os.environ['REXEC_TOKEN']} {file_token} {os.environ['GREETING']}")
        print("env token", os.environ["REXEC_TOKEN"], flush=True)
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(out, "release")) and time.time() < deadline:
            time.sleep(0.05)
    """
    pod = pod_manifest(
        "reporter",
        code,
        args=["/exchange"],
        env=[
            {
                "name": "REXEC_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "worker-creds", "key": "token"}},
            },
            {
                "name": "USER_NAME",
                "valueFrom": {"secretKeyRef": {"name": "worker-creds", "key": "user"}},
            },
            {"name": "GREETING", "value": "hello-$(USER_NAME)"},
        ],
        volumes=[
            {"name": "creds", "secret": {"secretName": "worker-creds"}},
            {"name": "exchange", "hostPath": {"path": str(tmp_path)}},
        ],
        mounts=[
            {"name": "creds", "mountPath": "/etc/rexec/creds", "readOnly": True},
            {"name": "exchange", "mountPath": "/exchange"},
        ],
    )
    core.create_namespaced_pod(ns, pod)

    running = wait_phase(k8s_cluster, ns, "reporter", ("Running", "Succeeded", "Failed"))
    assert running.status.phase == "Running", node_agent.pod_log(ns, "reporter")
    assert running.spec.node_name == NODE_NAME
    assert running.status.pod_ip == "127.0.0.1"
    (status,) = running.status.container_statuses
    assert status.ready and status.state.running is not None
    assert {c.type: c.status for c in running.status.conditions}["Ready"] == "True"
    assert any(e.reason == "Started" for e in events_for(k8s_cluster, ns, "reporter"))

    report = wait_for(
        lambda: (tmp_path / "report.txt").exists() and (tmp_path / "report.txt").read_text(),
        30,
        "the pod's report",
    )
    assert report == f"{token} {token} hello-alice"
    (tmp_path / "release").touch()

    done = wait_phase(k8s_cluster, ns, "reporter", ("Succeeded", "Failed"))
    assert done.status.phase == "Succeeded", node_agent.pod_log(ns, "reporter")
    terminated = done.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0 and terminated.reason == "Completed"
    assert f"env token {token}" in node_agent.pod_log(ns, "reporter")


def test_secret_volumes_of_running_pods_follow_their_secret(
    k8s_cluster: K8sCluster, node_agent: Any, k8s_namespace: str, tmp_path: Path
) -> None:
    """As the kubelet does (the spawner renews worker credentials this way): a running pod's
    secret volume gets a changed Secret's new content, each file replaced whole."""
    core, ns = k8s_cluster.core, k8s_namespace
    old, new = "a" * 4096, "b" * 4096  # long enough that a torn write would show
    core.create_namespaced_secret(
        ns, {"metadata": {"name": "renewed"}, "stringData": {"credential": old, "gone": "x"}}
    )
    # Records every distinct content it reads, until it has read the new one (at most 60 s).
    code = """
        import os, sys, time
        seen, path = [], "/var/run/creds/credential"
        deadline = time.time() + 60
        while time.time() < deadline:
            text = open(path).read()
            if text not in seen:
                seen.append(text)
                with open(os.path.join(sys.argv[1], "seen.txt"), "w") as f:
                    f.write("\\n".join(seen))
            if text.startswith("b") and not os.path.exists("/var/run/creds/gone"):
                break
            time.sleep(0.001)
    """
    pod = pod_manifest(
        "reader",
        code,
        args=["/exchange"],
        volumes=[
            {"name": "creds", "secret": {"secretName": "renewed", "defaultMode": 0o440}},
            {"name": "exchange", "hostPath": {"path": str(tmp_path)}},
        ],
        mounts=[
            {"name": "creds", "mountPath": "/var/run/creds", "readOnly": True},
            {"name": "exchange", "mountPath": "/exchange"},
        ],
    )
    core.create_namespaced_pod(ns, pod)
    wait_for(lambda: (tmp_path / "seen.txt").exists(), 30, "the pod to read its secret")
    started = time.monotonic()
    core.replace_namespaced_secret(
        "renewed",
        ns,
        {"metadata": {"name": "renewed"}, "stringData": {"credential": new}},
    )
    done = wait_phase(k8s_cluster, ns, "reader", ("Succeeded", "Failed"))
    took = time.monotonic() - started
    assert done.status.phase == "Succeeded", node_agent.pod_log(ns, "reader")
    assert (tmp_path / "seen.txt").read_text().split("\n") == [old, new]  # nothing torn
    assert took < 10, f"the new content took {took:.1f} s to arrive"


def test_failing_pod_reports_exit_code(
    k8s_cluster: K8sCluster, node_agent: Any, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    k8s_cluster.core.create_namespaced_pod(
        ns, pod_manifest("fails", "import sys; print('bye'); sys.exit(3)")
    )
    pod = wait_phase(k8s_cluster, ns, "fails", ("Succeeded", "Failed"))
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3 and terminated.reason == "Error"
    assert "bye" in node_agent.pod_log(ns, "fails")


def test_on_failure_pod_is_restarted(
    k8s_cluster: K8sCluster, node_agent: Any, k8s_namespace: str, tmp_path: Path
) -> None:
    # Fails on the first run, succeeds on the second: restartCount 1, phase Succeeded.
    code = """
        import os, sys
        marker = os.path.join(sys.argv[1], "ran-once")
        if not os.path.exists(marker):
            open(marker, "w").close()
            sys.exit(1)
    """
    k8s_cluster.core.create_namespaced_pod(
        k8s_namespace, pod_manifest("flaky", code, args=[str(tmp_path)], restart="OnFailure")
    )
    pod = wait_phase(k8s_cluster, k8s_namespace, "flaky", ("Succeeded", "Failed"))
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].restart_count == 1


def test_missing_secret_blocks_start_until_created(
    k8s_cluster: K8sCluster, node_agent: Any, k8s_namespace: str
) -> None:
    core, ns = k8s_cluster.core, k8s_namespace
    core.create_namespaced_pod(
        ns,
        pod_manifest(
            "waits",
            "import os; print(os.environ['LATE'])",
            env=[{"name": "LATE", "valueFrom": {"secretKeyRef": {"name": "late", "key": "v"}}}],
        ),
    )

    def config_error() -> bool:
        statuses = read_pod(k8s_cluster, ns, "waits").status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return bool(waiting and waiting.reason == "CreateContainerConfigError")

    wait_for(config_error, 30, "CreateContainerConfigError")
    core.create_namespaced_secret(ns, {"metadata": {"name": "late"}, "stringData": {"v": "here"}})
    pod = wait_phase(k8s_cluster, ns, "waits", ("Succeeded", "Failed"))
    assert pod.status.phase == "Succeeded"
    assert node_agent.pod_log(ns, "waits").strip() == "here"


def test_deleting_running_pod_kills_its_process(
    k8s_cluster: K8sCluster, node_agent: Any, k8s_namespace: str, tmp_path: Path
) -> None:
    core, ns = k8s_cluster.core, k8s_namespace
    code = """
        import os, sys, time
        with open(os.path.join(sys.argv[1], "pid"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
    """
    core.create_namespaced_pod(ns, pod_manifest("sleeper", code, args=[str(tmp_path)]))
    wait_phase(k8s_cluster, ns, "sleeper", ("Running",))
    pid = int(
        wait_for(
            lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text(),
            30,
            "the pod's pid file",
        )
    )
    assert pid_alive(pid)
    assert node_agent.pid_of(ns, "sleeper") == pid

    started = time.monotonic()
    core.delete_namespaced_pod("sleeper", ns)  # graceful: the agent SIGTERMs, then finalizes
    wait_for(lambda: pod_gone(k8s_cluster, ns, "sleeper"), 30, "the pod object to go")
    assert time.monotonic() - started < 10, "SIGTERM should end the process well before grace"
    wait_for(lambda: not pid_alive(pid), 10, f"process {pid} to end")


def test_deleting_namespace_completes(k8s_cluster: K8sCluster, node_agent: Any) -> None:
    # A namespace holding a Secret and a running pod: the namespace controller deletes the pod,
    # the agent kills its process and finalizes it, and the namespace disappears.
    core = k8s_cluster.core
    ns = f"rexec-test-del-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    wait_for(
        lambda: core.read_namespaced_service_account("default", ns).secrets,
        60,
        "the default ServiceAccount token",
    )
    core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    core.create_namespaced_pod(ns, pod_manifest("busy", "import time; time.sleep(120)"))
    wait_phase(k8s_cluster, ns, "busy", ("Running",))
    pid = node_agent.pid_of(ns, "busy")
    assert pid is not None and pid_alive(pid)

    core.delete_namespace(ns)

    def gone() -> bool:
        try:
            core.read_namespace(ns)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for(gone, 90, f"namespace {ns} to be deleted", interval=0.5)
    assert not pid_alive(pid)


def test_node_agent_command_line(k8s_cluster: K8sCluster) -> None:
    # `python -m tests.k8s.node_agent` registers its node, and on SIGTERM stops and (with
    # --delete-node-on-stop) removes it again.
    if k8s_cluster.external and os.environ.get("REXEC_K8S_NODE_AGENT") != "1":
        pytest.skip("external cluster without REXEC_K8S_NODE_AGENT=1")
    node = f"rexec-test-cli-{uuid.uuid4().hex[:6]}"
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.k8s.node_agent",
            "--kubeconfig",
            str(k8s_cluster.kubeconfig),
            "--node-name",
            node,
            "--delete-node-on-stop",
        ],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # It prints "node ... ready; ..." once schedulable, or exits (its start is bounded).
        output = []
        for line in proc.stdout:
            output.append(line)
            if line.startswith(f"node {node} ready"):
                break
        assert output and output[-1].startswith(f"node {node} ready"), "".join(output)
        got = k8s_cluster.core.read_node(node)
        assert {c.type: c.status for c in got.status.conditions}["Ready"] == "True"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
    assert proc.returncode == 0
    wait_for(lambda: _node_gone(k8s_cluster, node), 15, f"node {node} to be removed")


def _node_gone(cluster: K8sCluster, name: str) -> bool:
    try:
        cluster.core.read_node(name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False
