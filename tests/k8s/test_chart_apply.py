"""The Helm chart against a real Kubernetes API server: every object it renders is accepted; the
rendered broker and spawner Deployments start and serve (the test node agent runs their commands
as local processes); the CurveZMQ key Job's script creates its Secret once with exactly the
chart's RBAC; `helm upgrade` keeps the signing key."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helm.tools import (
    CHART,
    FULL_VALUES,
    render,
    template_args,
    tools_dir,
)
from tests.k8s.helpers import K8sCluster, wait_for

ApiException = pytest.importorskip("kubernetes.client.rest").ApiException
dynamic = pytest.importorskip("kubernetes.dynamic")

START_TIMEOUT = 90  # seconds for a rendered Deployment's process to serve
REXEC = (sys.executable, "-m", "rexec")


@pytest.fixture(scope="module")
def helm() -> Path:
    return tools_dir() / "helm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_all(
    cluster: K8sCluster, objects: list[dict[str, Any]], namespace: str, dry_run: bool
) -> list[tuple[Any, dict[str, Any]]]:
    """Create each object (server-side dry run or for real); return what was created."""
    client = dynamic.DynamicClient(cluster.api_client)
    created = []
    for obj in objects:
        resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        kwargs: dict[str, Any] = {"namespace": namespace} if resource.namespaced else {}
        if dry_run:
            kwargs["dry_run"] = "All"
        try:
            resource.create(body=obj, **kwargs)
        except ApiException as exc:
            pytest.fail(
                f"the API server refused {obj['kind']}/{obj['metadata']['name']}: "
                f"{exc.status} {exc.body}"
            )
        created.append((resource, obj))
    return created


def delete_cluster_scoped(created: list[tuple[Any, dict[str, Any]]]) -> None:
    for resource, obj in created:
        if not resource.namespaced:
            try:
                resource.delete(name=obj["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise


def secret(name: str, files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode() for key, value in files.items()},
    }


def service_account_token(cluster: K8sCluster, namespace: str, account: str) -> str:
    """A short-lived token of a ServiceAccount (TokenRequest API), so calls run with its RBAC."""

    def request() -> str:
        response = cluster.core.create_namespaced_service_account_token(
            account, namespace, {"spec": {"expirationSeconds": 3600}}
        )
        return str(response.status.token)

    return str(wait_for(request, 30, f"a token for ServiceAccount {namespace}/{account}"))


def api_server(cluster: K8sCluster) -> tuple[str, str]:
    """(https URL, CA file) of the API server as this machine reaches it."""
    config = cluster.api_client.configuration
    return config.host, config.ssl_ca_cert


def kubeconfig_for(cluster: K8sCluster, token: str) -> bytes:
    host, ca_file = api_server(cluster)
    ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "c", "cluster": {"server": host, "certificate-authority-data": ca}}
            ],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        }
    ).encode()


# --- the API server accepts what the chart renders ----------------------------------------------


@pytest.mark.parametrize("which", ["default", "full"])
def test_api_server_accepts_every_rendered_object(
    k8s_cluster: K8sCluster, k8s_namespace: str, helm: Path, which: str
) -> None:
    values = [FULL_VALUES] if which == "full" else []
    # A free node port: 30001 may be taken on a shared cluster (the rendering is what matters).
    sets = ["broker.service.external.nodePort=null"]
    objects = render(helm, values, sets, namespace=k8s_namespace)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ClusterRole", "NetworkPolicy", "ServiceAccount"} <= kinds
    create_all(k8s_cluster, objects, k8s_namespace, dry_run=True)


# --- the rendered Deployments run ----------------------------------------------------------------


def test_rendered_chart_runs_a_users_code_end_to_end(
    k8s_cluster: K8sCluster,
    k8s_namespace: str,
    node_agent: Any,
    helm: Path,
    tmp_path: Path,
) -> None:
    """`helm install` as far as this machine allows: the chart is applied for real (with a token
    file, user-provided CurveZMQ keys and free ports, and loopback broker addresses, since the
    node agent runs pods as processes on this machine's network with no cluster DNS). The
    rendered broker binds its ports; the rendered spawner, with the chart's ServiceAccount and
    RBAC, hands out the broker address and key, creates a worker pod in a user namespace, the
    worker registers with the broker, a function runs on it over CurveZMQ, and deleting the
    worker removes its namespace."""
    ns = k8s_namespace
    token = subprocess.run(
        [*REXEC, "token", "--file", str(tmp_path / "tokens.json"), "--user", "alice"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    subprocess.run(
        [*REXEC, "keys", str(tmp_path / "curve")],
        capture_output=True,
        timeout=30,
        check=True,
    )
    public_key = (tmp_path / "curve" / "broker.pub").read_text().strip()
    front, back, http_port = free_port(), free_port(), free_port()
    sets = [
        "auth.tokenFileSecret.name=rexec-tokens",
        "curve.existingSecret=rexec-curve-test",
        f"broker.frontendPort={front}",
        f"broker.backendPort={back}",
        "broker.service.external.nodePort=null",
        f"broker.publicUrl=tcp://127.0.0.1:{front}",
        f"broker.internalUrl=tcp://127.0.0.1:{front}",
        f"broker.workerUrl=tcp://127.0.0.1:{back}",
        "worker.idleTimeout=0",
        f"spawner.port={http_port}",
        # The node agent has no service-account mount: give the spawner a kubeconfig holding
        # its own ServiceAccount's token instead, so it still runs with the chart's RBAC.
        "spawner.extraEnv[0].name=REXEC_K8S_KUBECONFIG",
        "spawner.extraEnv[0].value=/etc/rexec/kube/config",
        "spawner.extraVolumes[0].name=kubeconfig",
        "spawner.extraVolumes[0].secret.secretName=spawner-kubeconfig",
        "spawner.extraVolumeMounts[0].name=kubeconfig",
        "spawner.extraVolumeMounts[0].mountPath=/etc/rexec/kube",
    ]
    objects = render(helm, sets=sets, namespace=ns)
    first = [o for o in objects if o["kind"] != "Deployment"]
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    created: list[tuple[Any, dict[str, Any]]] = []
    try:
        created += create_all(k8s_cluster, first, ns, dry_run=False)
        core = k8s_cluster.core
        core.create_namespaced_secret(
            ns, secret("rexec-tokens", {"tokens.json": (tmp_path / "tokens.json").read_bytes()})
        )
        core.create_namespaced_secret(
            ns,
            secret(
                "rexec-curve-test",
                {
                    "broker.key": (tmp_path / "curve" / "broker.key").read_bytes(),
                    "broker.pub": public_key.encode(),
                },
            ),
        )
        spawner_token = service_account_token(k8s_cluster, ns, "rexec-spawner")
        core.create_namespaced_secret(
            ns, secret("spawner-kubeconfig", {"config": kubeconfig_for(k8s_cluster, spawner_token)})
        )
        created += create_all(k8s_cluster, deployments, ns, dry_run=False)

        def pods_running() -> bool:
            pods = core.list_namespaced_pod(ns).items
            components = {
                p.metadata.labels.get("app.kubernetes.io/component")
                for p in pods
                if p.status.phase == "Running"
            }
            return {"broker", "spawner"} <= components

        wait_for(pods_running, START_TIMEOUT, "the broker and spawner pods to run")

        def broker_listens() -> bool:
            with socket.create_connection(("127.0.0.1", front), timeout=1):
                pass
            with socket.create_connection(("127.0.0.1", back), timeout=1):
                pass
            return True

        wait_for(broker_listens, START_TIMEOUT, f"the broker on ports {front} and {back}")

        base = f"http://127.0.0.1:{http_port}"

        def spawner_healthy() -> bool:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200

        wait_for(spawner_healthy, START_TIMEOUT, "the spawner's /healthz")
        headers = {"Authorization": f"Bearer {token}"}
        info = httpx.get(f"{base}/api/v1/broker", headers=headers, timeout=10)
        assert info.status_code == 200, info.text
        body = info.json()
        assert body["url"] == f"tcp://127.0.0.1:{front}"
        assert body["public_key"] == public_key
        refused = httpx.get(f"{base}/api/v1/broker", headers={"Authorization": "Bearer x"})
        assert refused.status_code == 401

        import rexec
        from rexec.client.remote import remote_func

        with rexec.connect(spawner_url=base, token=token) as session:

            @remote_func(session=session)
            def where(x: int) -> tuple[int, int]:
                return os.getpid(), x * 2

            pid, doubled = where(21)
        assert doubled == 42
        [user_ns] = core.list_namespace(label_selector="rexec.dev/release=rexec").items
        assert user_ns.metadata.name.startswith("rexec-u-alice-")
        assert user_ns.metadata.annotations["rexec.dev/user"] == "alice"
        pod = core.read_namespaced_pod("worker-default", user_ns.metadata.name)
        assert pid == node_agent.pid_of(user_ns.metadata.name, "worker-default")
        worker = pod.spec.containers[0]
        assert worker.image == "ghcr.io/sci-ndp/rexec-worker:0.1.0"  # worker.image
        assert worker.resources.limits == {  # worker.resources
            "cpu": "2",
            "memory": "4Gi",
            "ephemeral-storage": "10Gi",
        }
        volumes = {v.name: v.empty_dir.size_limit for v in pod.spec.volumes if v.empty_dir}
        assert volumes == {"tmp": "2Gi", "home": "2Gi", "envs": "4Gi"}
        assert pod.spec.security_context.run_as_user == 1000  # worker.runAsUser

        deleted = httpx.delete(f"{base}/api/v1/workers/default", headers=headers, timeout=30)
        assert deleted.json() == {"deleted": True}

        def namespace_gone() -> bool:
            try:
                core.read_namespace(user_ns.metadata.name)
            except ApiException as exc:
                return exc.status == 404
            return False

        wait_for(namespace_gone, 120, f"namespace {user_ns.metadata.name} to be deleted")
    except BaseException:
        for pod in k8s_cluster.core.list_namespaced_pod(ns).items:
            print(f"--- {pod.metadata.name}: {pod.status.phase}")
            try:
                print(node_agent.pod_log(ns, pod.metadata.name)[-3000:])
            except Exception as exc:
                print(f"(no log: {exc})")
        raise
    finally:
        delete_cluster_scoped(created)


# --- CurveZMQ keys: the Job's script with the Job's RBAC ---------------------------------------


def test_key_generation_creates_the_secret_once_with_only_its_rbac(
    k8s_cluster: K8sCluster, k8s_namespace: str, helm: Path, tmp_path: Path
) -> None:
    import zmq

    ns = k8s_namespace
    objects = render(helm, namespace=ns)
    keygen = [
        o
        for o in objects
        if o["metadata"]["name"] == "rexec-curve-keygen"
        and o["kind"] in ("ServiceAccount", "Role", "RoleBinding")
    ]
    assert len(keygen) == 3
    create_all(k8s_cluster, keygen, ns, dry_run=False)
    [job] = [o for o in objects if o["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}

    # The service-account directory a pod would have, for the Job's own account.
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    token = service_account_token(k8s_cluster, ns, "rexec-curve-keygen")
    (sa_dir / "token").write_text(token)
    (sa_dir / "namespace").write_text(ns)
    host, ca_file = api_server(k8s_cluster)
    (sa_dir / "ca.crt").write_bytes(Path(ca_file).read_bytes())
    address = host.removeprefix("https://")
    run_env = {
        **os.environ,
        **env,
        "REXEC_KEYGEN_SA_DIR": str(sa_dir),
        "KUBERNETES_SERVICE_HOST": address.rsplit(":", 1)[0],
        "KUBERNETES_SERVICE_PORT": address.rsplit(":", 1)[1],
    }
    script = CHART / "files" / "curve-keygen.py"

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script)],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first = run()
    assert first.returncode == 0, first.stderr
    stored = k8s_cluster.core.read_namespaced_secret("rexec-curve", ns)
    public = base64.b64decode(stored.data["broker.pub"])
    secret_key = base64.b64decode(stored.data["broker.key"])
    assert len(public) == len(secret_key) == 40
    assert zmq.curve_public(secret_key) == public, "broker.pub is broker.key's public key"
    assert public.decode() in first.stdout and secret_key.decode() not in first.stdout
    assert stored.metadata.labels["app.kubernetes.io/component"] == "curve"

    second = run()  # an upgrade re-runs the Job: the keys stay
    assert second.returncode == 0, second.stderr
    assert "keeping its keys" in second.stdout
    again = k8s_cluster.core.read_namespaced_secret("rexec-curve", ns)
    assert again.data == stored.data

    # The Job's account reads no other Secret.
    k8s_cluster.core.create_namespaced_secret(ns, secret("other", {"x": b"y"}))
    request = urllib.request.Request(
        f"{host}/api/v1/namespaces/{ns}/secrets/other",
        headers={"Authorization": f"Bearer {token}"},
    )
    context = ssl.create_default_context(cafile=ca_file)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=20)
    assert refused.value.code == 403


# --- helm upgrade keeps the signing key ----------------------------------------------------------


def test_upgrade_render_reuses_the_existing_signing_key(
    k8s_cluster: K8sCluster, k8s_namespace: str, helm: Path
) -> None:
    ns = k8s_namespace
    # The Secret as a first `helm install` leaves it: a new random key, owned by the release.
    [first] = [o for o in render(helm, namespace=ns) if o["kind"] == "Secret"]
    first["metadata"]["annotations"] = {
        "meta.helm.sh/release-name": "rexec",
        "meta.helm.sh/release-namespace": ns,
    }
    create_all(k8s_cluster, [first], ns, dry_run=False)
    # What `helm upgrade` renders: lookups see the cluster.
    args = [
        *template_args(namespace=ns),
        "--dry-run=server",
        "--kubeconfig",
        str(k8s_cluster.kubeconfig),
    ]
    proc = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    secrets = [
        d
        for d in yaml.safe_load_all(proc.stdout)
        if d and d["kind"] == "Secret" and d["metadata"]["name"] == "rexec-signing-key"
    ]
    assert secrets[0]["data"] == first["data"], "an upgrade must not rotate the signing key"
    again = render(helm, namespace=ns)  # without the cluster: a different random key
    assert next(o for o in again if o["kind"] == "Secret")["data"] != first["data"]
