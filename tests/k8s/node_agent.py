"""Test node agent: a stand-in kubelet that runs pods as local processes. TEST INFRASTRUCTURE ONLY.

The `k8s` test tier runs a real control plane (scripts/k8s/control-plane) but has no kubelet and
no container runtime, so pods would stay Pending forever. This agent (the idea of kwok, plus
actually running something) plays the node: it registers a Node, keeps it Ready and its Lease
fresh, and for every pod the scheduler binds to it starts the pod's first container as a plain
subprocess on this machine. It is NOT a container runtime: no isolation, no images, no network
namespaces. Never point it at a real cluster's node name.

    python -m tests.k8s.node_agent --kubeconfig /tmp/rexec-k8s/admin.kubeconfig \
        --node-name rexec-test-node

or, from Python::

    agent = NodeAgent(api_client, node_name="rexec-test-node")
    agent.start()      # returns once the Node is registered and Ready
    ...
    agent.stop()       # kills every process it started, marks the Node NotReady

What a pod gets (exactly this, nothing more):

* Process: ``command + args`` of the FIRST container (``$(VAR)`` references expanded as the
  kubelet does, ``$$`` -> ``$``), in its own session/process group, stdout+stderr to
  ``<workdir>/<namespace>_<pod>_<uid>/<container>.log`` (``NodeAgent.pod_log()`` reads it).
  A container without ``command`` cannot be started (there is no image entrypoint): it gets a
  Warning event and terminates with exit code 128 (``StartError``). Other containers and
  initContainers are not run; they are reported ``waiting`` (reason
  ``NotRunByTestNodeAgent``), so a multi-container pod never becomes Ready.
* Working directory: ``workingDir`` (after volume path substitution) if it exists on this
  machine (nothing is created outside the pod dir), else the pod dir.
* Environment: the agent's own environment (the "image" is this machine; ``KUBECONFIG`` is
  removed so pods do not inherit admin credentials) + ``extra_env`` + ``HOSTNAME`` (pod name) +
  ``KUBERNETES_SERVICE_HOST/PORT`` (the API server as the agent reaches it) + the container's
  ``envFrom`` (``secretRef``, ``configMapRef``, with ``prefix``) and ``env`` (``value``,
  ``valueFrom.secretKeyRef``, ``valueFrom.configMapKeyRef``, ``valueFrom.fieldRef`` for
  metadata.name/namespace/uid, metadata.labels['k'], metadata.annotations['k'], spec.nodeName,
  spec.serviceAccountName, status.podIP, status.hostIP). ``optional`` is honoured; a missing
  required Secret/ConfigMap/key leaves the container ``waiting`` with
  ``CreateContainerConfigError`` and is retried every few seconds, like the kubelet does.
  ``resourceFieldRef`` is not supported (the variable is left unset, with a Warning event).
* Volumes: ``secret`` and ``configMap`` (all keys, or ``items`` with ``path``/``mode``;
  ``defaultMode``), ``projected`` (its secret and configMap sources; serviceAccountToken and
  downwardAPI sources are skipped), ``emptyDir`` (an empty dir) and ``hostPath`` (the host path
  itself) are materialised as directories under the pod dir. A process cannot see them at
  their ``mountPath`` (no mount namespace), so every ``volumeMounts[].mountPath`` (with
  ``subPath``) is textually replaced by the local directory in ``command``, ``args``, ``env``
  values and ``workingDir`` wherever it appears as a path prefix. Code that hard-codes a mount
  path somewhere else (in a file, in Python source it imports) will not find it. Other volume
  types are ignored (Warning event). Volumes are written at container start.
* Volume updates: like the kubelet, the agent keeps ``secret``, ``configMap`` and ``projected``
  volumes of RUNNING containers up to date: every ``REFRESH_VOLUMES_EVERY`` (1 s) it reads their
  Secrets and ConfigMaps again and, for each file whose content or mode changed, writes the new
  content to a temporary name in the same directory and renames it over the old file, so a
  reader sees the old or the new content, never a mix. Files of keys that are gone are removed;
  a required source that is gone (404) leaves the files as they are. Differences from the
  kubelet: files are renamed one by one (the kubelet swaps a ``..data`` symlink, updating all
  files of a volume at once), ``subPath`` mounts are updated too (the kubelet never updates
  them), and it takes about a second (the kubelet: up to its sync period, about a minute).
  Environment variables are never updated, as on a real node.
* Status: phase Running with ``podIP``/``hostIP`` 127.0.0.1, conditions Initialized, Ready,
  ContainersReady, PodScheduled; the container ``running``/``ready``/``started`` as soon as the
  process is spawned (probes are ignored). ``containerID`` is ``rexec-test://<pid>``.
  On exit: ``terminated`` with ``exitCode`` (128+N for signal N) and reason Completed/Error;
  ``restartPolicy`` Never -> phase Succeeded (exit 0) / Failed; OnFailure restarts on non-zero
  exits; Always restarts always; restarts back off 1, 2, 4, 8, 10, 10... seconds and bump
  ``restartCount`` (``lastState`` keeps the previous termination).
* Events (best effort, source ``rexec-test-node-agent``): Started, Failed, BackOff, Killing,
  FailedMount.
* Deletion: once a pod has a ``deletionTimestamp`` the process group gets SIGTERM, then SIGKILL
  after the pod's grace period (capped at ``max_grace_seconds``), and the pod object is removed
  with grace period 0 (UID precondition) as the kubelet does.
* Agent restart: pods already bound to the node whose process the agent does not own (it
  restarted) are treated as if their container died with exit code 137 (reason
  ContainerStatusUnknown); the restart policy then decides.

Robustness: every API call has a request timeout; the pod watch is list-then-watch with
short server-side timeouts, resumes from the last resourceVersion and relists after errors
(including 410 Gone) with backoff; every wait is bounded.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.rest import ApiException

log = logging.getLogger("rexec.test.node_agent")

AGENT_COMPONENT = "rexec-test-node-agent"
POD_IP = "127.0.0.1"
REQUEST_TIMEOUT = (5, 20)  # (connect, read) seconds for every non-watch API call
WATCH_SECONDS = 5  # server-side watch timeout: bounds how long stop() waits for the watch
LEASE_SECONDS = 40
LEASE_RENEW_EVERY = 5.0
NODE_STATUS_EVERY = 20.0
RETRY_CONFIG_ERROR_EVERY = 3.0
REFRESH_VOLUMES_EVERY = 1.0  # seconds between re-reads of running pods' Secrets and ConfigMaps
BACKOFF_CAP = 10.0
MERGE_PATCH = "application/merge-patch+json"

Json = dict[str, Any]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(resp: Any) -> Json:
    """Body of a `_preload_content=False` response; we work on plain dicts, not models."""
    return dict(json.loads(resp.data))


class ConfigError(Exception):
    """The pod's configuration cannot be satisfied yet (missing Secret, key...): retry later."""


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubelet's `$(VAR)` expansion: defined vars are substituted, `$$` escapes, unknown
    references are left as they are."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(sub, text)


@dataclass
class PodRecord:
    uid: str
    namespace: str
    name: str
    pod: Json
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    restart_count: int = 0
    last_termination: Json | None = None
    next_start: float | None = 0.0  # monotonic time of the next (re)start; None = never
    terminating: bool = False
    finished: bool = False  # terminal phase reported
    config_error: str | None = None
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (mountPath, local dir)
    # Held while the volumes are written (container start) or refreshed, never both at once.
    volume_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def container(self) -> Json:
        return dict(self.pod["spec"]["containers"][0])

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")


class NodeAgent:
    """Registers a Node and runs the pods bound to it as local subprocesses (see module doc)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        node_name: str = "rexec-test-node",
        *,
        cpu: str = "16",
        memory: str = "64Gi",
        pods: str = "110",
        workdir: str | os.PathLike[str] | None = None,
        extra_env: dict[str, str] | None = None,
        max_grace_seconds: float = 30.0,
        delete_node_on_stop: bool = False,
        ready_timeout: float = 60.0,
    ) -> None:
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.node_name = node_name
        self.capacity = {"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "100Gi"}
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{node_name}-"))
        self.extra_env = dict(extra_env or {})
        self.max_grace_seconds = max_grace_seconds
        self.delete_node_on_stop = delete_node_on_stop
        self.ready_timeout = ready_timeout
        self._pods: dict[str, PodRecord] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        host = api_client.configuration.host  # https://127.0.0.1:6443
        m = re.match(r"https?://\[?([^\]/]+?)\]?(?::(\d+))?(?:/|$)", host)
        self._api_host = m.group(1) if m else "127.0.0.1"
        default_port = "443" if host.startswith("https") else "80"
        self._api_port = (m.group(2) if m else None) or default_port

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> NodeAgent:
        """Register the node, start the threads, and return once the node is schedulable (Ready
        and without the not-ready taint), or raise after `ready_timeout` seconds."""
        if self._started:
            return self
        self._stop.clear()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._renew_lease()
        for target, name in (
            (self._heartbeat_loop, "heartbeat"),
            (self._watch_loop, "watch"),
            (self._process_loop, "processes"),
            (self._volume_loop, "volumes"),
        ):
            t = threading.Thread(target=target, name=f"node-agent-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._started = True
        self._wait_schedulable()
        log.info("node %s ready (workdir %s)", self.node_name, self.workdir)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the threads, kill every process (SIGTERM, then SIGKILL), mark the Node NotReady
        (or delete it). Bounded by roughly `timeout` seconds plus one API call."""
        if not self._started:
            return
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self._threads.clear()
        with self._lock:
            records = list(self._pods.values())
        # All at once: SIGTERM, 2 s grace, SIGKILL; each _kill is itself bounded.
        killers = [threading.Thread(target=self._kill, args=(rec, 2.0)) for rec in records]
        for k in killers:
            k.start()
        for k in killers:
            k.join(15)
        with self._lock:
            self._pods.clear()
        try:
            if self.delete_node_on_stop:
                self.core.delete_node(self.node_name, _request_timeout=REQUEST_TIMEOUT)
            else:
                self._patch_node_status(ready=False)
        except Exception as exc:  # the API may already be gone at teardown
            log.warning("could not update node %s on stop: %s", self.node_name, exc)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._started = False

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests

    def pod_log(self, namespace: str, name: str) -> str:
        """stdout+stderr of the pod's process (all restarts), '' if it never started."""
        for d in sorted(self.workdir.glob(f"{namespace}_{name}_*")):
            logs = sorted(d.glob("*.log"))
            if logs:
                return logs[0].read_text(errors="replace")
        return ""

    def pid_of(self, namespace: str, name: str) -> int | None:
        """Pid of the pod's running process, if the agent runs one."""
        with self._lock:
            for rec in self._pods.values():
                if rec.namespace == namespace and rec.name == name and rec.proc is not None:
                    return rec.proc.pid if rec.proc.poll() is None else None
        return None

    # ------------------------------------------------------------------ node and lease

    def _node_conditions(self, ready: bool) -> list[Json]:
        now = _now()
        conds = [
            {
                "type": t,
                "status": "False",
                "reason": f"KubeletHas{r}",
                "message": m,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for t, r, m in (
                ("MemoryPressure", "SufficientMemory", "test node"),
                ("DiskPressure", "NoDiskPressure", "test node"),
                ("PIDPressure", "SufficientPID", "test node"),
            )
        ]
        conds.append(
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "NodeAgentStopped",
                "message": "rexec test node agent is posting ready status"
                if ready
                else "rexec test node agent stopped",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        )
        return conds

    def _node_status(self, ready: bool = True) -> Json:
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": self._node_conditions(ready),
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "rexec test node agent (processes, not containers)",
                "containerRuntimeVersion": "rexec-test://0",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64" if os.uname().machine == "x86_64" else os.uname().machine,
            },
        }

    def _register_node(self) -> None:
        body: Any = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "rexec.test/node-agent": "true",
                },
            },
            "status": self._node_status(),
        }
        try:
            self.core.create_node(body, _request_timeout=REQUEST_TIMEOUT)
            log.info("registered node %s", self.node_name)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self._patch_node_status(ready=True)
        self._patch_node_status(ready=True)

    def _patch_node_status(self, ready: bool) -> None:
        status = self._node_status(ready)
        self.core.patch_node_status(
            self.node_name,
            {"status": status},
            _content_type=MERGE_PATCH,
            _request_timeout=REQUEST_TIMEOUT,
        )

    def _renew_lease(self) -> None:
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": _now_micro(),
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.node_name,
                "kube-node-lease",
                {"spec": spec},
                _content_type=MERGE_PATCH,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            node = _json(
                self.core.read_node(
                    self.node_name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            )
            body: Any = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node_name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": self.node_name,
                            "uid": node["metadata"]["uid"],
                        }
                    ],
                },
                "spec": spec,
            }
            self.coordination.create_namespaced_lease(
                "kube-node-lease", body, _request_timeout=REQUEST_TIMEOUT
            )

    def _wait_schedulable(self) -> None:
        # TaintNodesByCondition puts node.kubernetes.io/not-ready on a new Node; the controller
        # manager's node lifecycle controller lifts it once it sees Ready (node-monitor-period).
        deadline = time.monotonic() + self.ready_timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                node = _json(
                    self.core.read_node(
                        self.node_name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                    )
                )
                last = node.get("spec", {}).get("taints")
                if not any(t.get("effect") in ("NoSchedule", "NoExecute") for t in last or []):
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"node {self.node_name} not schedulable within {self.ready_timeout}s "
            f"(taints/last error: {last})"
        )

    def _heartbeat_loop(self) -> None:
        next_status = time.monotonic() + NODE_STATUS_EVERY
        while not self._stop.wait(LEASE_RENEW_EVERY):
            try:
                self._renew_lease()
                if time.monotonic() >= next_status:
                    self._patch_node_status(ready=True)
                    next_status = time.monotonic() + NODE_STATUS_EVERY
            except Exception as exc:
                log.warning("heartbeat failed (will retry): %s", exc)

    # ------------------------------------------------------------------ pod watch

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        backoff = 0.5
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listing = _json(
                        self.core.list_pod_for_all_namespaces(
                            field_selector=selector,
                            _preload_content=False,
                            _request_timeout=REQUEST_TIMEOUT,
                        )
                    )
                    rv = listing["metadata"]["resourceVersion"]
                    self._resync(listing.get("items") or [])
                rv = self._watch_once(selector, rv)
                backoff = 0.5
            except Exception as exc:
                if self._stop.is_set():
                    break
                # 410 Gone (resourceVersion compacted, apiserver restarted) or a broken
                # connection: list again, which also catches up on anything missed.
                log.info("pod watch interrupted (%s); relisting in %.1fs", exc, backoff)
                rv = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _watch_once(self, selector: str, rv: str) -> str:
        """One watch request from `rv`, ended by the server after WATCH_SECONDS; returns the
        resourceVersion to resume from. Our own loop rather than kubernetes.watch.Watch, to see
        ERROR events as they are and to work on plain dicts."""
        resp: Any = self.core.list_pod_for_all_namespaces(
            field_selector=selector,
            watch=True,
            resource_version=rv,
            timeout_seconds=WATCH_SECONDS,
            allow_watch_bookmarks=True,
            _preload_content=False,
            _request_timeout=(5, WATCH_SECONDS + 15),
        )
        try:
            buffer = b""
            for chunk in resp.stream(amt=None, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                    rv = obj.get("metadata", {}).get("resourceVersion") or rv
                    if event.get("type") != "BOOKMARK":
                        self._on_pod_event(event["type"], obj)
                if self._stop.is_set():
                    break
        finally:
            resp.close()  # never hand a half-read watch connection back to the pool
            resp.release_conn()
        return rv

    def _resync(self, pods: list[Json]) -> None:
        seen = set()
        for pod in pods:
            seen.add(pod["metadata"]["uid"])
            self._on_pod_event("MODIFIED", pod)
        with self._lock:
            gone = [rec for uid, rec in self._pods.items() if uid not in seen]
        for rec in gone:
            self._on_pod_event("DELETED", rec.pod)

    def _on_pod_event(self, kind: str, pod: Json) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            rec = self._pods.get(uid)
            if kind == "DELETED":
                if rec is not None:
                    del self._pods[uid]
                    rec.terminating = True
                    threading.Thread(target=self._kill, args=(rec, 0.0), daemon=True).start()
                return
            if rec is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") and not meta.get(
                    "deletionTimestamp"
                ):
                    return  # finished before (an earlier agent); nothing to run
                pod_dir = self.workdir / f"{meta['namespace']}_{meta['name']}_{uid}"
                rec = PodRecord(
                    uid=uid,
                    namespace=meta["namespace"],
                    name=meta["name"],
                    pod=pod,
                    directory=pod_dir,
                )
                self._pods[uid] = rec
                statuses = pod.get("status", {}).get("containerStatuses") or []
                if statuses:  # an earlier agent ran it: keep counting restarts from there
                    rec.restart_count = int(statuses[0].get("restartCount") or 0)
                if statuses and "running" in (statuses[0].get("state") or {}):
                    # Bound and running under an earlier agent: that process is gone.
                    running = statuses[0]["state"]["running"]
                    rec.last_termination = {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "startedAt": running.get("startedAt"),
                        "finishedAt": _now(),
                    }
                    rec.next_start = None
                    self._after_exit(rec, 137, "ContainerStatusUnknown")
            else:
                rec.pod = pod
            if meta.get("deletionTimestamp") and not rec.terminating:
                rec.terminating = True
                grace = meta.get("deletionGracePeriodSeconds")
                grace = (
                    self.max_grace_seconds
                    if grace is None
                    else min(float(grace), self.max_grace_seconds)
                )
                threading.Thread(
                    target=self._terminate,
                    args=(rec, grace),
                    daemon=True,
                    name=f"terminate-{rec.key}",
                ).start()

    # ------------------------------------------------------------------ process loop

    def _process_loop(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                records = list(self._pods.values())
            now = time.monotonic()
            for rec in records:
                if self._stop.is_set():
                    return
                try:
                    if rec.terminating or rec.finished:
                        continue
                    if rec.proc is not None:
                        code = rec.proc.poll()
                        if code is not None:
                            self._on_exit(rec, code)
                    elif rec.next_start is not None and now >= rec.next_start:
                        self._start_container(rec)
                except Exception:
                    log.exception("handling pod %s failed", rec.key)
                    rec.next_start = time.monotonic() + RETRY_CONFIG_ERROR_EVERY

    def _start_container(self, rec: PodRecord) -> None:
        c = rec.container
        try:
            with rec.volume_lock:
                env, declared, mounts = self._prepare(rec, c)
        except ConfigError as exc:
            if rec.config_error != str(exc):
                self._event(rec, "Warning", "Failed", f"Error: {exc}")
            rec.config_error = str(exc)
            self._patch_status(
                rec, waiting={"reason": "CreateContainerConfigError", "message": str(exc)}
            )
            rec.next_start = time.monotonic() + RETRY_CONFIG_ERROR_EVERY
            return
        rec.config_error = None
        rec.mounts = mounts
        argv = [
            self._substitute(expand(a, declared), mounts)
            for a in list(c.get("command") or []) + list(c.get("args") or [])
        ]
        cwd = str(rec.directory)
        if c.get("workingDir"):
            wanted = self._substitute(c["workingDir"], mounts)
            if os.path.isdir(wanted):
                cwd = wanted
            else:  # never create directories on the host outside the pod dir
                self._event(
                    rec,
                    "Warning",
                    "Failed",
                    f"workingDir {wanted} does not exist on the test node; using the pod directory",
                )
        log_path = rec.directory / f"{c['name']}.log"
        started = _now()
        try:
            if not c.get("command"):
                raise OSError(
                    "the container has no command (the test node agent has no images, "
                    "hence no entrypoint)"
                )
            with self._lock:
                # A deletion that arrived while we were preparing wins: never start a process
                # that _terminate() could no longer see.
                if rec.terminating or self._stop.is_set():
                    return
                with open(log_path, "ab") as out:
                    rec.proc = subprocess.Popen(
                        argv,
                        env=env,
                        cwd=cwd,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
        except OSError as exc:
            self._event(
                rec, "Warning", "Failed", f"Error: failed to start container {c['name']}: {exc}"
            )
            rec.last_termination = {
                "exitCode": 128,
                "reason": "StartError",
                "message": str(exc),
                "startedAt": started,
                "finishedAt": _now(),
            }
            rec.next_start = None
            self._after_exit(rec, 128, "StartError")
            return
        rec.started_at = started
        rec.next_start = None
        log.info("started %s: pid %d %s", rec.key, rec.proc.pid, argv)
        self._patch_status(rec, running=True)
        self._event(
            rec,
            "Normal",
            "Started",
            f"Started container {c['name']} (pid {rec.proc.pid}, test node agent)",
        )

    def _on_exit(self, rec: PodRecord, code: int) -> None:
        exit_code = 128 - code if code < 0 else code
        reason = "Completed" if exit_code == 0 else "Error"
        rec.last_termination = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": rec.started_at,
            "finishedAt": _now(),
            "containerID": f"rexec-test://{rec.proc.pid if rec.proc else 0}",
        }
        if code < 0:
            rec.last_termination["signal"] = -code
        rec.proc = None
        log.info("pod %s: process exited with %d", rec.key, exit_code)
        self._after_exit(rec, exit_code, reason)

    def _after_exit(self, rec: PodRecord, exit_code: int, reason: str) -> None:
        policy = rec.restart_policy
        if policy == "Always" or (policy == "OnFailure" and exit_code != 0):
            delay = min(BACKOFF_CAP, 2.0**rec.restart_count)
            rec.restart_count += 1
            rec.next_start = time.monotonic() + delay
            # Like the kubelet: a pod whose container has run stays Running while it backs off.
            self._patch_status(
                rec,
                phase="Running",
                waiting={
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:.0f}s restarting failed container",
                },
            )
            self._event(
                rec,
                "Warning",
                "BackOff",
                f"Back-off {delay:.0f}s restarting container (exit code {exit_code})",
            )
            return
        rec.finished = True
        self._patch_status(rec, terminated=True, phase="Succeeded" if exit_code == 0 else "Failed")

    # ------------------------------------------------------------------ deletion

    def _terminate(self, rec: PodRecord, grace: float) -> None:
        if rec.proc is not None and rec.proc.poll() is None:
            self._event(rec, "Normal", "Killing", f"Stopping container {rec.container['name']}")
        self._kill(rec, grace)
        try:
            # What the kubelet does once the containers are gone: finish the graceful delete.
            self.core.delete_namespaced_pod(
                rec.name,
                rec.namespace,
                grace_period_seconds=0,
                body=cast(Any, {"gracePeriodSeconds": 0, "preconditions": {"uid": rec.uid}}),
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("finalizing deletion of %s failed: %s", rec.key, exc)
        except Exception as exc:
            log.warning("finalizing deletion of %s failed: %s", rec.key, exc)
        with self._lock:
            if self._pods.get(rec.uid) is rec:
                del self._pods[rec.uid]
        shutil.rmtree(rec.directory / "volumes", ignore_errors=True)

    def _kill(self, rec: PodRecord, grace: float) -> None:
        """SIGTERM the process group, SIGKILL after `grace` seconds, reap. Bounded."""
        proc = rec.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=max(grace, 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        # Children that outlived the leader in its group go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ env and volumes

    def _read(self, kind: str, namespace: str, name: str) -> Json | None:
        fn = (
            self.core.read_namespaced_secret
            if kind == "Secret"
            else self.core.read_namespaced_config_map
        )
        try:
            return _json(
                fn(name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    @staticmethod
    def _data(kind: str, obj: Json) -> dict[str, bytes]:
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out

    def _lookup(self, rec: PodRecord, kind: str, ref: Json, cache: dict[Any, Any]) -> Any:
        """Data of the referenced Secret/ConfigMap; None if optional and missing."""
        name = str(ref.get("name"))
        key = (kind, name)
        if key not in cache:
            obj = self._read(kind, rec.namespace, name)
            cache[key] = None if obj is None else self._data(kind, obj)
        if cache[key] is None and not ref.get("optional"):
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        return cache[key]

    def _field_ref(self, rec: PodRecord, path: str) -> str | None:
        pod = rec.pod
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta.get("name"),
            "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"),
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
            "status.podIP": POD_IP,
            "status.hostIP": POD_IP,
        }
        if path in simple:
            return simple[path]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        return None

    def _prepare(
        self, rec: PodRecord, c: Json
    ) -> tuple[dict[str, str], dict[str, str], list[tuple[str, str]]]:
        """(process env, the container's own env for $(VAR) expansion, volume mounts)."""
        rec.directory.mkdir(parents=True, exist_ok=True)
        cache: dict[Any, Any] = {}
        mounts = self._materialize_volumes(rec, c, cache)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env.update(self.extra_env)
        # What $(VAR) may refer to: the container's own env and the service variables.
        declared: dict[str, str] = {
            "HOSTNAME": rec.pod["spec"].get("hostname") or rec.name,
            "KUBERNETES_SERVICE_HOST": self._api_host,
            "KUBERNETES_SERVICE_PORT": self._api_port,
            "KUBERNETES_SERVICE_PORT_HTTPS": self._api_port,
        }
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix") or ""
            for kind, ref_key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if ref_key in src:
                    data = self._lookup(rec, kind, src[ref_key], cache) or {}
                    for k, v in data.items():
                        declared[prefix + k] = v.decode(errors="replace")
        for var in c.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                declared[name] = self._substitute(expand(var.get("value") or "", declared), mounts)
                continue
            vf = var["valueFrom"]
            value: str | None = None
            for kind, ref_key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if ref_key in vf:
                    ref = vf[ref_key]
                    data = self._lookup(rec, kind, ref, cache)
                    if data is not None and ref["key"] in data:
                        value = data[ref["key"]].decode(errors="replace")
                    elif not ref.get("optional"):
                        raise ConfigError(
                            f"couldn't find key {ref['key']} in {kind} "
                            f"{rec.namespace}/{ref.get('name')}"
                        )
            if "fieldRef" in vf:
                value = self._field_ref(rec, vf["fieldRef"]["fieldPath"])
                if value is None:
                    self._event(
                        rec,
                        "Warning",
                        "Failed",
                        "test node agent does not support "
                        f"fieldRef {vf['fieldRef']['fieldPath']} (env {name} unset)",
                    )
            if "resourceFieldRef" in vf:
                self._event(
                    rec,
                    "Warning",
                    "Failed",
                    f"test node agent does not support resourceFieldRef (env {name} unset)",
                )
            if value is not None:
                declared[name] = value
        env.update(declared)
        return env, declared, mounts

    def _materialize_volumes(
        self, rec: PodRecord, c: Json, cache: dict[Any, Any]
    ) -> list[tuple[str, str]]:
        vol_dir = rec.directory / "volumes"
        volumes = {v["name"]: v for v in rec.pod["spec"].get("volumes") or []}
        local: dict[str, str] = {}
        used = {m["name"] for m in c.get("volumeMounts") or []}
        for name in sorted(used):
            v = volumes.get(name)
            if v is None:
                raise ConfigError(f"volume {name} is mounted but not declared")
            target = vol_dir / name
            if "hostPath" in v:
                local[name] = v["hostPath"]["path"]
                continue
            content = self._data_volume(rec, v, cache)
            if "emptyDir" in v:
                target.mkdir(parents=True, exist_ok=True)
            elif content is not None:
                self._write_files(target, *content)
            else:
                self._event(
                    rec,
                    "Warning",
                    "FailedMount",
                    f"test node agent does not support "
                    f"the type of volume {name}; mounting an empty directory",
                )
                target.mkdir(parents=True, exist_ok=True)
            local[name] = str(target)
        mounts = []
        for m in c.get("volumeMounts") or []:
            path = local[m["name"]]
            if m.get("subPath"):
                path = os.path.join(path, m["subPath"])
            mounts.append((m["mountPath"].rstrip("/") or "/", path))
        # Longest mount path first, so /a/b wins over /a.
        mounts.sort(key=lambda p: len(p[0]), reverse=True)
        return mounts

    def _data_volume(
        self, rec: PodRecord, volume: Json, cache: dict[Any, Any]
    ) -> tuple[dict[str, tuple[bytes, int | None]], int] | None:
        """The files (path -> content, mode) of a secret, configMap or projected volume and its
        default mode; None for other volume types. Raises ConfigError for a missing source."""
        if "secret" in volume or "configMap" in volume:
            kind = "Secret" if "secret" in volume else "ConfigMap"
            src = volume["secret"] if kind == "Secret" else volume["configMap"]
            ref = {
                "name": src.get("secretName") if kind == "Secret" else src.get("name"),
                "optional": src.get("optional"),
            }
            files = self._volume_files(rec, kind, ref, src.get("items"), cache)
            return files, int(src.get("defaultMode", 0o644))
        if "projected" in volume:
            projected: dict[str, tuple[bytes, int | None]] = {}
            for s in volume["projected"].get("sources") or []:
                for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
                    if key in s:
                        projected.update(
                            self._volume_files(rec, kind, s[key], s[key].get("items"), cache)
                        )
            return projected, int(volume["projected"].get("defaultMode", 0o644))
        return None

    def _volume_loop(self) -> None:
        while not self._stop.wait(REFRESH_VOLUMES_EVERY):
            with self._lock:
                records = list(self._pods.values())
            for rec in records:
                if self._stop.is_set():
                    return
                try:
                    self._refresh_volumes(rec)
                except Exception as exc:  # the API may be briefly away; next round retries
                    log.warning("refreshing the volumes of %s failed: %s", rec.key, exc)

    def _refresh_volumes(self, rec: PodRecord) -> None:
        """Bring a running container's secret, configMap and projected volumes up to date
        with their sources (see the module docstring)."""
        with rec.volume_lock:
            if rec.terminating or rec.finished or rec.proc is None or rec.proc.poll() is not None:
                return
            volumes = {v["name"]: v for v in rec.pod["spec"].get("volumes") or []}
            used = {m["name"] for m in rec.container.get("volumeMounts") or []}
            cache: dict[Any, Any] = {}
            for name in sorted(used):
                volume = volumes.get(name)
                if volume is None or "hostPath" in volume or "emptyDir" in volume:
                    continue
                try:
                    content = self._data_volume(rec, volume, cache)
                except ConfigError:
                    continue  # the source is gone: the files stay as they were
                if content is not None and self._sync_files(
                    rec.directory / "volumes" / name, *content
                ):
                    log.info("pod %s: volume %s updated", rec.key, name)

    @staticmethod
    def _sync_files(
        target: Path, files: dict[str, tuple[bytes, int | None]], default_mode: int
    ) -> bool:
        """Make ``target`` hold exactly ``files``, replacing each changed file by a rename (a
        reader never sees half of one); True if anything changed."""
        changed = False
        root = target.resolve()
        wanted = set()
        for rel, (content, mode) in files.items():
            path = target / rel
            if not path.resolve().is_relative_to(root):
                continue  # refused when the volume was first written
            wanted.add(os.path.normpath(path))
            perm = mode if mode is not None else default_mode
            with contextlib.suppress(OSError):
                if path.read_bytes() == content and (path.stat().st_mode & 0o7777) == perm:
                    continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(content)
                os.chmod(temporary, perm)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            changed = True
        for path in list(target.rglob("*")) if target.is_dir() else []:
            if path.is_file() and os.path.normpath(path) not in wanted:
                path.unlink()
                changed = True
        return changed

    def _volume_files(
        self, rec: PodRecord, kind: str, ref: Json, items: list[Json] | None, cache: dict[Any, Any]
    ) -> dict[str, tuple[bytes, int | None]]:
        data = self._lookup(rec, kind, ref, cache)
        if data is None:
            return {}
        if not items:
            return {k: (v, None) for k, v in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if ref.get("optional"):
                    continue
                raise ConfigError(f"configmap/secret {ref.get('name')} has no key {item['key']}")
            files[item["path"]] = (data[item["key"]], item.get("mode"))
        return files

    @staticmethod
    def _write_files(
        target: Path, files: dict[str, tuple[bytes, int | None]], default_mode: int
    ) -> None:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for rel, (content, mode) in files.items():
            path = target / rel
            if not path.resolve().is_relative_to(target.resolve()):
                raise ConfigError(f"volume item path {rel!r} escapes the volume")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode if mode is not None else default_mode)

    @staticmethod
    def _substitute(text: str, mounts: list[tuple[str, str]]) -> str:
        """Replace mount paths (as whole path prefixes) by local dirs, in one pass so a local
        dir just inserted is never rewritten again. `mounts` is longest-first."""
        if not mounts:
            return text
        local = dict(mounts)
        alternatives = "|".join(re.escape(p) for p, _ in mounts)
        pattern = r"(?<![\w.\-/])(" + alternatives + r")(?=/|$|[^\w.\-/])([^\s:;,'\"]*)"

        def replace(match: re.Match[str]) -> str:
            mount, rest = match.group(1), match.group(2)
            # A host file below a mount path (an interpreter in a venv under /tmp, say) is the
            # test machine's own: a pod's fresh volume could not contain it.
            if rest.startswith("/") and len(rest) > 1 and os.path.isfile(mount + rest):
                return mount + rest
            return local[mount] + rest

        return re.sub(pattern, replace, text)

    # ------------------------------------------------------------------ status and events

    def _container_statuses(
        self,
        rec: PodRecord,
        *,
        running: bool = False,
        waiting: Json | None = None,
        terminated: bool = False,
    ) -> list[Json]:
        containers = rec.pod["spec"]["containers"]
        first = containers[0]
        st: Json = {
            "name": first["name"],
            "image": first.get("image", ""),
            "imageID": "",
            "restartCount": rec.restart_count,
            "ready": False,
            "started": False,
        }
        if running and rec.proc is not None:
            st.update(
                ready=True,
                started=True,
                containerID=f"rexec-test://{rec.proc.pid}",
                state={"running": {"startedAt": rec.started_at}},
            )
        elif terminated and rec.last_termination:
            st.update(
                state={"terminated": dict(rec.last_termination)},
                containerID=rec.last_termination.get("containerID", ""),
            )
        else:
            st["state"] = {"waiting": waiting or {"reason": "ContainerCreating"}}
        if rec.last_termination and not terminated:
            st["lastState"] = {"terminated": dict(rec.last_termination)}
        out = [st]
        for other in containers[1:]:
            out.append(
                {
                    "name": other["name"],
                    "image": other.get("image", ""),
                    "imageID": "",
                    "restartCount": 0,
                    "ready": False,
                    "started": False,
                    "state": {
                        "waiting": {
                            "reason": "NotRunByTestNodeAgent",
                            "message": "only the first container is run",
                        }
                    },
                }
            )
        return out

    def _patch_status(
        self,
        rec: PodRecord,
        *,
        running: bool = False,
        waiting: Json | None = None,
        terminated: bool = False,
        phase: str | None = None,
    ) -> None:
        statuses = self._container_statuses(
            rec, running=running, waiting=waiting, terminated=terminated
        )
        ready = all(s["ready"] for s in statuses)
        now = _now()

        def cond(t: str, ok: bool, reason: str | None = None) -> Json:
            c = {
                "type": t,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": now,
            }
            if reason and not ok:
                c["reason"] = reason
            return c

        status: Json = {
            "phase": phase or ("Running" if running else "Pending"),
            "hostIP": POD_IP,
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": (rec.pod.get("status") or {}).get("startTime") or now,
            "conditions": [
                cond("Initialized", True),
                cond("Ready", ready, "ContainersNotReady"),
                cond("ContainersReady", ready, "ContainersNotReady"),
                cond("PodScheduled", True),
            ],
            "containerStatuses": statuses,
        }
        if phase in ("Succeeded", "Failed"):
            status["conditions"][1]["reason"] = status["conditions"][2]["reason"] = "PodCompleted"
        if terminated and phase == "Failed" and rec.last_termination:
            status["message"] = f"container exited with code {rec.last_termination['exitCode']}"
        try:
            self.core.patch_namespaced_pod_status(
                rec.name,
                rec.namespace,
                {"status": status},
                _content_type=MERGE_PATCH,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status != 404:  # a deleted pod needs no status
                log.warning("status update of %s failed: %s", rec.key, exc)

    def _event(self, rec: PodRecord, type_: str, reason: str, message: str) -> None:
        now = _now()
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{rec.name}.", "namespace": rec.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": rec.name,
                "namespace": rec.namespace,
                "uid": rec.uid,
                "fieldPath": f"spec.containers{{{rec.container['name']}}}",
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": AGENT_COMPONENT, "host": self.node_name},
            "reportingComponent": AGENT_COMPONENT,
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(rec.namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:  # events are best effort (e.g. namespace terminating)
            log.debug("event %s for %s not recorded: %s", reason, rec.key, exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.k8s.node_agent",
        description="TEST INFRASTRUCTURE: a fake kubelet running pods as local processes.",
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--node-name", default="rexec-test-node")
    parser.add_argument("--cpu", default="16")
    parser.add_argument("--memory", default="64Gi")
    parser.add_argument("--pods", default="110")
    parser.add_argument("--workdir", help="where pod dirs and logs go (default: a temp dir)")
    parser.add_argument("--delete-node-on-stop", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.kubeconfig:
        parser.error("--kubeconfig or KUBECONFIG is required")
    api = config.new_client_from_config(config_file=args.kubeconfig)
    agent = NodeAgent(
        api,
        args.node_name,
        cpu=args.cpu,
        memory=args.memory,
        pods=args.pods,
        workdir=args.workdir,
        delete_node_on_stop=args.delete_node_on_stop,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    print(f"node {args.node_name} ready; pods run under {agent.workdir}", flush=True)
    done.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
