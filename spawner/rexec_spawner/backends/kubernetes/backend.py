"""The Kubernetes backend: per user a namespace, per worker a pod, all found again by label.

Per user it creates a Namespace (``naming.make_namespace_name``) holding the NetworkPolicy,
ResourceQuota and LimitRange ``rexec-workers`` (kept up to date with the settings: see
``_apply``) and, per worker name N, the Secret ``worker-N-credential``, the Pod ``worker-N`` and,
once an environment is set, the ConfigMap ``rexec-env-N``. Nothing lives only
in memory: every answer is read from the cluster (the pod, its events) and from the broker (has
the worker registered?), so a restarted spawner reports and deletes the workers a previous one
made. In memory there is only a cache of when each progress step was first seen, when each
worker's credential expires, and which workers were replaced as hung (below).

**Credentials** carry the pod's instance id (its ``rexec.dev/instance`` annotation, the record's
``instance``) and expire after ``REXEC_WORKER_CREDENTIAL_TTL``. A background task (``_upkeep``,
started by ``start()`` or the first call, every ``UPKEEP_INTERVAL``) renews each at half its
life by replacing the Secret's data; the kubelet then rewrites the mounted file and the worker,
which re-reads it, registers again with the new credential. When it starts, the task lists the
worker pods of this release in every namespace and renews theirs at once: an earlier spawner
process issued them, so their expiry is unknown. Workers therefore outlive a stopped spawner by
at least half the TTL.

``close()`` stops watching but leaves pods running, for the next spawner to adopt; ``delete``
removes the worker's pod, credential and remembered environment, and the namespace with
everything left in it once the user has no other worker pod (environments remembered for names
that have no pod go with it). Idle culling deletes the same way. Whenever the backend deletes a
worker pod (delete, culling, replacing a failed one) it also revokes the pod's instance at the
broker, in the background: the broker drops the worker if it is still connected and refuses
its credential from then on, so a copy of it is worthless even before it expires.

**Hung workers** are replaced. Each round the same task asks the broker about all tracked
workers at once: a pod whose worker was registered and that the broker has not heard from for
``REXEC_WORKER_HUNG_AFTER`` seconds, or has not listed for that long (``lifecycle.HangWatch``),
while Kubernetes still reports it running, is deleted with a one-second grace period (a hung
process cannot shut down cleanly) and revoked. Its record turns failed with the reason at once,
so a client that keeps asking sees it within about a second, and the next ``ensure`` starts a
new pod. Nothing is concluded while the broker cannot be asked. That report lives only in
memory: after a spawner restart the replaced worker is simply gone (404).

A user may have ``REXEC_MAX_WORKERS_PER_USER`` active workers: ``ensure`` counts them and
creates the new one under the user's lock, so concurrent requests cannot overshoot; the
namespace's ResourceQuota makes the API server refuse more pods in any case.

Run one spawner replica per release: the locks that keep a user's namespace from being created
and deleted at the same time, and its workers from being counted twice, are in this process.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from rexec.errors import SpawnError, WorkerLimitReached
from rexec_spawner.activity import ActivityUnavailable, BrokerActivity, WorkerActivity
from rexec_spawner.backends.base import (
    ACTIVE_STATES,
    EnvironmentSpec,
    ProgressEvent,
    WorkerBackend,
    WorkerRecord,
    WorkerState,
    check_worker_limit,
    check_worker_name,
)
from rexec_spawner.backends.kubernetes import naming, objects
from rexec_spawner.backends.kubernetes.client import (
    AlreadyExists,
    Forbidden,
    KubeApi,
    NotFound,
    make_api_client,
)
from rexec_spawner.backends.kubernetes.readiness import (
    PodAssessment,
    admission_settling,
    assess_pod,
)
from rexec_spawner.backends.kubernetes.spec import (
    make_network_spec,
    make_quota_spec,
    make_worker_spec,
)
from rexec_spawner.backends.lifecycle import (
    HangWatch,
    Lease,
    find_row,
    issue_lease,
    renewal_due,
    revoke,
)
from rexec_spawner.config import SpawnerSettings

log = logging.getLogger(__name__)

Json = dict[str, Any]
NAMESPACE_TIMEOUT = 90.0  # a terminating namespace must be gone before it is made again
ADMISSION_TIMEOUT = 30.0  # a new namespace's default ServiceAccount must exist before pods
CLOCK_SLACK = 2.0  # creationTimestamp has whole seconds; broker and API server clocks differ
MAX_PROGRESS_EVENTS = 100
# A worker started with an environment builds it (pip) before it registers; the worker stops
# itself after REXEC_ENV_BUILD_TIMEOUT (default 1800 s), so the spawner waits that much longer.
ENV_BUILD_ALLOWANCE = 1800.0
UPKEEP_INTERVAL = 1.0  # seconds between rounds of credential renewals and hung checks
RENEW_RETRY = 5.0  # seconds before a renewal the API server refused is tried again
ADOPT_RETRY = 10.0  # seconds before the search for an earlier spawner's workers is retried
# A kubelet rewrites a mounted Secret within its sync period plus its cache TTL, about a minute
# by default: a credential renewed at half its life must outlast that.
SAFE_CREDENTIAL_TTL = 300.0
REVOKE_ON_CLOSE_WAIT = 3.0  # seconds a closing backend waits for revocations on their way
HUNG_GRACE_SECONDS = 1  # a hung pod's termination grace period: it cannot shut down cleanly


@dataclass
class _Seen:
    """When each progress step of one pod instance was first seen (a cache, not state)."""

    instance: str
    steps: dict[str, float] = field(default_factory=dict)
    registered: bool = False

    def note(self, message: str, at: float | None = None) -> None:
        if message not in self.steps and len(self.steps) < MAX_PROGRESS_EVENTS:
            self.steps[message] = time.time() if at is None else at

    def events(self) -> tuple[ProgressEvent, ...]:
        return tuple(ProgressEvent(at, message) for message, at in self.steps.items())


@dataclass
class _Tracked:
    """A worker pod whose credential this spawner keeps valid (see ``_upkeep``)."""

    user: str
    name: str
    namespace: str
    instance: str
    watch: HangWatch
    # None: issued by an earlier spawner process, expiry unknown: renewed at once.
    lease: Lease | None = None
    retry_at: float = 0.0  # monotonic time before which a refused renewal is not tried again
    registered: bool = False  # the broker listed it with this instance's credential

    def renewal_due(self, now: float) -> bool:
        return now >= self.retry_at and (self.lease is None or renewal_due(self.lease))


@dataclass
class _Hung:
    """A worker replaced as hung: its pod instance, why, and its last record (kept to report it
    failed once the pod is gone, until the next ``ensure`` or ``delete``)."""

    instance: str
    reason: str
    record: WorkerRecord | None = None


def _registered_row(
    rows: builtins.list[WorkerActivity], name: str, instance: str, created: float
) -> WorkerActivity | None:
    """The broker's row for the worker of pod ``instance``: the one registered with that
    instance's credential or, for a credential an older spawner issued (its instance id is not
    the pod's), one that registered after the pod was made."""
    for row in rows:
        if row.worker == name and (
            row.instance == instance or row.registered_at >= created - CLOCK_SLACK
        ):
            return row
    return None


def _instance_of(obj: Json) -> str:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(naming.ANNOTATION_INSTANCE) or "")


def _timestamp(value: str | None) -> float:
    if not value:
        return time.time()
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class KubernetesBackend(WorkerBackend):
    """Workers as pods in per-user namespaces (see the module docstring)."""

    def __init__(
        self,
        settings: SpawnerSettings,
        signing_key: bytes,
        api: KubeApi,
        activity: BrokerActivity,
        poll_interval: float = 0.5,
    ) -> None:
        self.settings = settings
        self.k8s = settings.kubernetes
        self.api = api
        self.activity = activity
        self.ready_timeout = settings.worker_ready_timeout
        self.poll_interval = poll_interval
        self._signing_key = signing_key
        self._network = make_network_spec(settings)  # validates the broker backend URL early
        self._quota = make_quota_spec(settings)
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._user_locks: dict[str, asyncio.Lock] = {}
        self._monitors: set[asyncio.Task[None]] = set()
        self._unlabelled_warned: set[str] = set()
        self._closed = False
        self.credential_ttl = settings.worker_credential_ttl
        self.hung_after = settings.worker_hung_after
        self._tracked: dict[tuple[str, str], _Tracked] = {}
        self._hung: dict[tuple[str, str], _Hung] = {}
        self._broker_unreachable = False
        self._upkeep_task: asyncio.Task[None] | None = None
        self._adopted = False
        self._next_adoption = 0.0
        self._revocations: set[asyncio.Task[None]] = set()
        if self.credential_ttl < SAFE_CREDENTIAL_TTL:
            log.warning(
                "REXEC_WORKER_CREDENTIAL_TTL is %g s: a kubelet may take about a minute to "
                "update a worker's mounted credential, so a renewal made at half of that can "
                "arrive after the old one expired; use %g s or more on a real cluster",
                self.credential_ttl,
                SAFE_CREDENTIAL_TTL,
            )

    @classmethod
    def from_settings(cls, settings: SpawnerSettings, signing_key: bytes) -> KubernetesBackend:
        api = KubeApi(make_api_client(settings.kubernetes.kubeconfig))
        activity = BrokerActivity(settings.activity_url, settings.broker_public_key, signing_key)
        return cls(settings, signing_key, api, activity)

    def __repr__(self) -> str:
        return f"KubernetesBackend({self.api.host!r}, release={self.k8s.release!r})"

    def namespace(self, user: str) -> str:
        return naming.make_namespace_name(self.k8s.namespace_prefix, user)

    def _lock(self, user: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((user, name), asyncio.Lock())

    def _user_lock(self, user: str) -> asyncio.Lock:
        """Held while the user's namespace is made, filled or deleted, so those never overlap,
        and while the user's workers are counted and a new one is created."""
        return self._user_locks.setdefault(user, asyncio.Lock())

    # --- the interface -----------------------------------------------------------------------

    async def start(self) -> None:
        self._start_upkeep()

    async def ensure(self, user: str, name: str) -> WorkerRecord:
        check_worker_name(name)
        self._start_upkeep()
        async with self._lock(user, name):
            if self._closed:
                raise SpawnError("the spawner is shutting down; try again once it is back")
            namespace = self.namespace(user)
            pod = await self.api.read_pod(namespace, naming.pod_name(name))
            if pod is not None and self._owned(pod, user):
                record = await self._record(user, name, pod)
                if record.active:
                    return record
                tracked = self._tracked.pop((user, name), None)
                await self._remove_worker_objects(namespace, name)
                # A failed worker may still register now and then (a crash loop does); one
                # replaced as hung was revoked then.
                replaced = self._hung.get((user, name))
                if replaced is None or replaced.instance != record.instance:
                    self._revoke(user, name, record.instance, tracked)
                await self._wait_pod_gone(namespace, naming.pod_name(name))
            elif pod is not None:
                raise SpawnError(
                    f"pod {namespace}/{pod['metadata']['name']} was not made by this spawner "
                    f"(release {self.k8s.release!r}); remove it or change REXEC_K8S_RELEASE"
                )
            async with self._user_lock(user):
                # Counted and created under one lock: two requests of one user cannot both see
                # room for one more. (This worker is not active here, so it is never counted.)
                limit = self.settings.max_workers_per_user
                if limit:
                    active = [record.name for record in await self.list(user) if record.active]
                    check_worker_limit(active, name, limit)
                return await self._start(user, name, namespace)

    async def get(self, user: str, name: str) -> WorkerRecord | None:
        check_worker_name(name)
        self._start_upkeep()
        pod = await self.api.read_pod(self.namespace(user), naming.pod_name(name))
        if pod is None:
            hung = self._hung.get((user, name))
            return hung.record if hung is not None else None
        if not self._owned(pod, user):
            return None
        return await self._record(user, name, pod)

    async def list(self, user: str) -> builtins.list[WorkerRecord]:
        self._start_upkeep()
        selector = naming.selector(
            {
                naming.LABEL_RELEASE: self.k8s.release,
                naming.LABEL_COMPONENT: naming.COMPONENT_WORKER,
                naming.LABEL_USER_HASH: naming.user_hash(user),
            }
        )
        pods = await self.api.list_pods(self.namespace(user), selector)
        rows = await self._broker_rows(user)
        records = []
        for pod in pods:
            name = pod["metadata"].get("labels", {}).get(naming.LABEL_WORKER, "")
            if self._owned(pod, user) and name:
                records.append(await self._record(user, name, pod, rows))
        listed = {record.name for record in records}
        for (owner, name), hung in builtins.list(self._hung.items()):
            if owner == user and name not in listed and hung.record is not None:
                records.append(hung.record)  # replaced as hung; its pod is gone
        return sorted(records, key=lambda record: record.name)

    async def delete(self, user: str, name: str) -> bool:
        check_worker_name(name)
        async with self._lock(user, name):
            namespace = self.namespace(user)
            pod = await self.api.read_pod(namespace, naming.pod_name(name))
            if pod is not None and not self._owned(pod, user):
                return False
            tracked = self._tracked.pop((user, name), None)
            replaced = self._hung.pop((user, name), None)
            existed = await self._remove_worker_objects(namespace, name) or replaced is not None
            instance = _instance_of(pod) if pod is not None else ""
            if not instance and tracked is not None:
                instance = tracked.instance
            if replaced is None or replaced.instance != instance:  # not revoked already
                self._revoke(user, name, instance, tracked)
            await self.api.delete("ConfigMap", namespace, naming.environment_name(name))
            self._seen.pop((user, name), None)
            async with self._user_lock(user):
                others = [
                    other
                    for other in await self.api.list_pods(
                        namespace, naming.selector({naming.LABEL_RELEASE: self.k8s.release})
                    )
                    if other["metadata"]["name"] != naming.pod_name(name)
                    and not other["metadata"].get("deletionTimestamp")
                ]
                if not others and await self._owned_namespace(namespace, user):
                    await self.api.delete_namespace(namespace)
                    log.info("deleted namespace %s of user %r", namespace, user)
            if existed:
                log.info("deleted worker %r of user %r", name, user)
            return existed

    async def close(self) -> None:
        """Stop watching and renewing; the pods keep running so that the next spawner adopts
        them (their credentials stay valid for at least half the TTL)."""
        self._closed = True
        tasks = [*self._monitors, *([self._upkeep_task] if self._upkeep_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._revocations:
            await asyncio.wait(builtins.list(self._revocations), timeout=REVOKE_ON_CLOSE_WAIT)
        await asyncio.to_thread(self.activity.close)
        self.api.close()

    async def set_environment(
        self, user: str, name: str, environment: EnvironmentSpec | None
    ) -> None:
        check_worker_name(name)
        namespace = self.namespace(user)
        if environment is None:
            await self.api.delete("ConfigMap", namespace, naming.environment_name(name))
            return
        manifest = objects.make_environment_configmap(
            self.k8s.release, user, namespace, name, environment
        )
        async with self._user_lock(user):
            await self._ensure_namespace(user, namespace)
            try:
                await self.api.create(manifest)
            except AlreadyExists:
                await self.api.replace(manifest)

    async def get_environment(self, user: str, name: str) -> EnvironmentSpec | None:
        check_worker_name(name)
        found = await self.api.read_configmap(self.namespace(user), naming.environment_name(name))
        if found is None:
            return None
        labels = found.get("metadata", {}).get("labels") or {}
        if labels.get(naming.LABEL_USER_HASH) != naming.user_hash(user):
            return None
        return objects.parse_environment_configmap(found.get("data"))

    # --- creating ----------------------------------------------------------------------------

    def _owned(self, obj: Json, user: str) -> bool:
        metadata = obj.get("metadata") or {}
        labels = metadata.get("labels") or {}
        return (
            labels.get(naming.LABEL_RELEASE) == self.k8s.release
            and labels.get(naming.LABEL_MANAGED_BY) == naming.MANAGED_BY
            and (metadata.get("annotations") or {}).get(naming.ANNOTATION_USER) == user
        )

    async def _owned_namespace(self, namespace: str, user: str) -> bool:
        found = await self.api.read_namespace(namespace)
        return found is not None and self._owned(found, user)

    async def _ensure_namespace(self, user: str, namespace: str) -> None:
        """Create (or wait out the deletion of) the user's namespace; the user lock is held."""
        deadline = time.monotonic() + NAMESPACE_TIMEOUT
        while True:
            found = await self.api.read_namespace(namespace)
            if found is None:
                manifest = objects.make_namespace(
                    self.k8s.release, user, namespace, self.k8s.pod_security_version
                )
                try:
                    await self.api.create(manifest)
                    log.info("created namespace %s for user %r", namespace, user)
                except AlreadyExists:
                    continue
                break
            if not self._owned(found, user):
                raise SpawnError(
                    f"namespace {namespace} exists but was not made by this spawner for this "
                    "user; remove it or change REXEC_K8S_NAMESPACE_PREFIX"
                )
            if (found.get("status") or {}).get("phase") != "Terminating":
                self._check_pod_security_labels(found)
                break
            if time.monotonic() > deadline:
                raise SpawnError(
                    f"namespace {namespace} is still being deleted after "
                    f"{NAMESPACE_TIMEOUT:g} s; try again later"
                )
            await asyncio.sleep(self.poll_interval)
        release = self.k8s.release
        await self._apply(objects.make_network_policy(release, user, namespace, self._network))
        await self._apply(objects.make_limit_range(release, user, namespace, self._quota))
        if self._quota.max_workers:
            await self._apply(objects.make_resource_quota(release, user, namespace, self._quota))
        elif await self.api.delete("ResourceQuota", namespace, naming.POLICY_NAME):
            log.info("deleted the ResourceQuota of %s: REXEC_MAX_WORKERS_PER_USER is 0", namespace)

    def _check_pod_security_labels(self, namespace: Json) -> None:
        """Warn (once per namespace) about one made without today's Pod Security labels.

        The spawner does not relabel namespaces: that would need update rights on every
        namespace in the cluster, which could also lift the labels of others. The namespace gets
        the labels when it is made again, after the user's last worker is deleted or culled.
        """
        metadata = namespace.get("metadata") or {}
        labels = metadata.get("labels") or {}
        wanted = naming.pod_security_labels(self.k8s.pod_security_version)
        name = str(metadata.get("name"))
        if wanted.items() <= labels.items() or name in self._unlabelled_warned:
            return
        self._unlabelled_warned.add(name)
        log.warning(
            "namespace %s lacks the Pod Security labels of level %s (made by an older spawner or "
            "with other settings); it gets them when it is made again after the user's workers "
            "are all deleted, or label it now: kubectl label --overwrite namespace %s %s",
            name,
            naming.POD_SECURITY_LEVEL,
            name,
            " ".join(f"{key}={value}" for key, value in sorted(wanted.items())),
        )

    async def _apply(self, manifest: Json) -> None:
        """Create a namespace-wide object (``rexec-workers``), or replace the one there when it
        differs from what this spawner makes now, so that a spawner upgrade or a settings change
        reaches namespaces made before it. Objects are compared by their spec-hash annotation."""
        desired = objects.stamp(manifest)
        kind, meta = desired["kind"], desired["metadata"]
        found = await self.api.read(kind, meta["namespace"], meta["name"])
        if found is None:
            try:
                await self.api.create(desired)
                return
            except AlreadyExists:
                # Made between the read and the create (by another spawner process, say): fall
                # through and replace it if it differs.
                found = await self.api.read(kind, meta["namespace"], meta["name"])
        if found is not None and objects.stamped_hash(found) == objects.stamped_hash(desired):
            return
        try:
            await self.api.replace(desired)
            log.info(
                "updated %s %s/%s to the current settings", kind, meta["namespace"], meta["name"]
            )
        except NotFound:
            await self.api.create(desired)  # gone since the read: make it again

    async def _start(self, user: str, name: str, namespace: str) -> WorkerRecord:
        await self._ensure_namespace(user, namespace)
        environment = await self.get_environment(user, name)
        instance = secrets.token_hex(6)
        spec = make_worker_spec(self.settings, user, name, instance, environment)
        # The broker names the worker by this instance (activity rows, revocation), and the
        # record does too: one pod, one instance, through every renewal.
        lease = issue_lease(self._signing_key, user, name, instance, self.credential_ttl)
        await self.api.delete("Secret", namespace, naming.secret_name(name))
        await self._create_admitted(objects.make_credential_secret(spec, lease.credential))
        try:
            pod = await self._create_admitted(objects.make_worker_pod(spec))
        except WorkerLimitReached:
            # No pod will read it: a credential must not outlive its purpose.
            await self.api.delete("Secret", namespace, naming.secret_name(name))
            raise
        seen = _Seen(instance)
        self._seen[(user, name)] = seen
        self._hung.pop((user, name), None)
        self._tracked[(user, name)] = self._new_tracked(user, name, namespace, instance, lease)
        log.info("created worker pod %s/%s for user %r", namespace, naming.pod_name(name), user)
        record = await self._record(user, name, pod, rows=[])
        task = asyncio.create_task(self._monitor(user, name), name=f"rexec-k8s-monitor-{name}")
        self._monitors.add(task)
        task.add_done_callback(self._monitors.discard)
        return record

    async def _create_admitted(self, manifest: Json) -> Json:
        """Create a worker's Secret or Pod, waiting out what a namespace made a moment ago may
        still lack, and telling the user when the namespace's quota is full."""
        deadline = time.monotonic() + ADMISSION_TIMEOUT
        while True:
            try:
                return dict(await self.api.create(manifest))
            except Forbidden as exc:
                if "exceeded quota" in exc.detail:
                    raise WorkerLimitReached(
                        f"the cluster refused another worker for you ({exc.detail}); delete a "
                        "worker you no longer need (DELETE /api/v1/workers/NAME), stopped and "
                        "failed ones included"
                    ) from None
                if not admission_settling(exc.detail):
                    raise
                if time.monotonic() > deadline:
                    raise SpawnError(
                        f"the new namespace was not ready for workers within "
                        f"{ADMISSION_TIMEOUT:g} s (is the controller manager running?): {exc}"
                    ) from None
                await asyncio.sleep(self.poll_interval)

    async def _remove_worker_objects(self, namespace: str, name: str) -> bool:
        """Delete the worker's pod and credential (not its environment); False if neither."""
        pod = await self.api.delete("Pod", namespace, naming.pod_name(name))
        secret = await self.api.delete("Secret", namespace, naming.secret_name(name))
        return pod or secret

    def _revoke(self, user: str, name: str, instance: str, tracked: _Tracked | None) -> None:
        """Revoke a deleted worker pod's credential at the broker, in the background: a delete
        does not wait for the broker (``close`` waits, briefly, for what is on its way)."""
        if not instance:
            return
        # Kept by the broker until the credential would expire; if this process did not issue
        # the current one, the broker keeps it for its longest time instead.
        lease = tracked.lease if tracked is not None and tracked.instance == instance else None
        until = lease.expires_at if lease is not None else None
        task = asyncio.create_task(
            revoke(self.activity, user, name, instance, until), name=f"rexec-k8s-revoke-{name}"
        )
        self._revocations.add(task)
        task.add_done_callback(self._revocations.discard)

    async def _wait_pod_gone(self, namespace: str, pod: str) -> None:
        deadline = time.monotonic() + objects.TERMINATION_GRACE_SECONDS + 30
        while await self.api.read_pod(namespace, pod) is not None:
            if time.monotonic() > deadline:
                raise SpawnError(f"the old pod {namespace}/{pod} is still being deleted; retry")
            await asyncio.sleep(self.poll_interval)

    # --- keeping credentials valid -----------------------------------------------------------

    def _start_upkeep(self) -> None:
        if self._upkeep_task is None and not self._closed:
            self._upkeep_task = asyncio.create_task(self._upkeep(), name="rexec-k8s-upkeep")

    async def _upkeep(self) -> None:
        """Renew each tracked worker's credential when it is due and replace hung ones (see
        the module docstring), after adopting the running workers of an earlier spawner."""
        while not self._closed:
            try:
                if not self._adopted and time.monotonic() >= self._next_adoption:
                    await self._adopt_running()
                now = time.monotonic()
                for tracked in builtins.list(self._tracked.values()):
                    if tracked.renewal_due(now):
                        await self._renew(tracked)
                await self._watch_for_hung()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("looking after the running workers failed; trying again")
            await asyncio.sleep(UPKEEP_INTERVAL)

    async def _adopt_running(self) -> None:
        selector = naming.selector(
            {
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                naming.LABEL_RELEASE: self.k8s.release,
                naming.LABEL_COMPONENT: naming.COMPONENT_WORKER,
            }
        )
        try:
            pods = await self.api.list_all_pods(selector)
        except SpawnError as exc:
            self._next_adoption = time.monotonic() + ADOPT_RETRY
            log.warning(
                "cannot list the running workers to renew their credentials (%s); trying again "
                "in %g s",
                exc,
                ADOPT_RETRY,
            )
            return
        self._adopted = True
        for pod in pods:
            self._track(pod)

    def _track(self, pod: Json) -> None:
        """Keep the credential of this live worker pod valid, if it is one of this spawner's
        and not tracked yet."""
        metadata = pod.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        labels = metadata.get("labels") or {}
        user = annotations.get(naming.ANNOTATION_USER)
        name = labels.get(naming.LABEL_WORKER)
        instance = annotations.get(naming.ANNOTATION_INSTANCE)
        if not (isinstance(user, str) and name and instance) or not self._owned(pod, user):
            return
        # Labels can be copied: a pod counts only in the namespace the spawner made for its
        # user, so no credential is ever written into a namespace someone else controls.
        if metadata.get("namespace") != self.namespace(user):
            return
        if metadata.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
            "Succeeded",
            "Failed",
        ):
            return
        tracked = self._tracked.get((user, name))
        if tracked is None or tracked.instance != instance:
            self._tracked[(user, name)] = self._new_tracked(
                user, name, metadata["namespace"], instance
            )

    def _new_tracked(
        self, user: str, name: str, namespace: str, instance: str, lease: Lease | None = None
    ) -> _Tracked:
        return _Tracked(user, name, namespace, instance, HangWatch(self.hung_after), lease)

    def _untrack(self, user: str, name: str, instance: str) -> None:
        tracked = self._tracked.get((user, name))
        if tracked is not None and tracked.instance == instance:
            del self._tracked[(user, name)]

    async def _renew(self, tracked: _Tracked) -> None:
        """Replace the worker's credential Secret with a fresh credential for the same
        instance; the kubelet updates the mounted file and the worker registers again."""
        key = (tracked.user, tracked.name)
        lock = self._lock(*key)
        if lock.locked():
            return  # being created, replaced or deleted: the next round sees the outcome
        async with lock:
            if self._tracked.get(key) is not tracked:
                return
            lease = issue_lease(
                self._signing_key, tracked.user, tracked.name, tracked.instance, self.credential_ttl
            )
            manifest = objects.make_credential_secret_for(
                self.k8s.release,
                tracked.user,
                tracked.namespace,
                tracked.name,
                tracked.instance,
                lease.credential,
            )
            try:
                try:
                    await self.api.replace(manifest)
                except NotFound:
                    if not await self._pod_still_runs(tracked):
                        self._untrack(tracked.user, tracked.name, tracked.instance)
                        return
                    # Someone deleted the Secret under a live worker: make it again, or the
                    # worker is dropped when its credential expires.
                    await self.api.create(manifest)
            except SpawnError as exc:
                tracked.retry_at = time.monotonic() + RENEW_RETRY
                log.warning(
                    "cannot renew the credential of worker %r of user %r (%s); trying again in "
                    "%g s",
                    tracked.name,
                    tracked.user,
                    exc,
                    RENEW_RETRY,
                )
                return
            tracked.lease = lease
            log.info(
                "renewed the credential of worker %r of user %r for %g s",
                tracked.name,
                tracked.user,
                self.credential_ttl,
            )

    # --- replacing hung workers --------------------------------------------------------------

    async def _watch_for_hung(self) -> None:
        """One look at the broker for every tracked worker (a single query for all of them)."""
        if self.hung_after <= 0 or not self._tracked:
            return
        try:
            rows = await self.activity.fetch()
        except ActivityUnavailable as exc:
            if not self._broker_unreachable:
                log.warning(
                    "cannot ask the broker whether workers hung (%s); none is replaced until it "
                    "answers",
                    exc,
                )
            self._broker_unreachable = True
            for tracked in self._tracked.values():
                tracked.watch.observe(False, None, tracked.registered)
            return
        if self._broker_unreachable:
            log.info("the broker answers activity queries again")
            self._broker_unreachable = False
        now = time.time()
        for tracked in builtins.list(self._tracked.values()):
            row = find_row(rows, tracked.user, tracked.name, tracked.instance)
            if row is not None and row.instance == tracked.instance:
                tracked.registered = True
            if tracked.watch.observe(True, row, tracked.registered, now):
                await self._replace_hung(tracked, row)

    async def _replace_hung(self, tracked: _Tracked, row: WorkerActivity | None) -> None:
        """Delete a hung worker's pod and revoke its credential; its record turns failed."""
        key = (tracked.user, tracked.name)
        lock = self._lock(*key)
        if lock.locked():
            return  # being replaced or deleted already
        async with lock:
            if self._tracked.get(key) is not tracked:
                return
            namespace, pod_name = tracked.namespace, naming.pod_name(tracked.name)
            pod = await self.api.read_pod(namespace, pod_name)
            if (
                pod is None
                or not self._owned(pod, tracked.user)
                or (_instance_of(pod) != tracked.instance)
            ):
                self._untrack(*key, tracked.instance)
                return
            state = assess_pod(pod, []).state
            if state != "running":
                # Crashed, restarting or going away: the pod's own status says why, not us.
                if state in ("failed", "stopped"):
                    self._untrack(*key, tracked.instance)
                else:
                    tracked.watch.absent_since = time.time()
                return
            silence = (
                f"the broker has heard nothing from it for {row.silent_seconds:.0f} s"
                if row is not None
                else f"it has not been connected to the broker for {self.hung_after:g} s"
            )
            reason = (
                f"the worker stopped responding ({silence}); its pod was deleted and the next "
                "call starts a new one (its variables are lost)"
            )
            log.warning("worker %r of user %r: %s", tracked.name, tracked.user, reason)
            del self._tracked[key]
            hung = self._hung[key] = _Hung(tracked.instance, reason)
            hung.record = await self._record(tracked.user, tracked.name, pod)
            self._revoke(tracked.user, tracked.name, tracked.instance, tracked)
            await self.api.delete("Pod", namespace, pod_name, grace_seconds=HUNG_GRACE_SECONDS)
            await self.api.delete("Secret", namespace, naming.secret_name(tracked.name))

    async def _pod_still_runs(self, tracked: _Tracked) -> bool:
        pod = await self.api.read_pod(tracked.namespace, naming.pod_name(tracked.name))
        if pod is None or not self._owned(pod, tracked.user):
            return False
        metadata = pod.get("metadata") or {}
        instance = (metadata.get("annotations") or {}).get(naming.ANNOTATION_INSTANCE)
        return instance == tracked.instance and not metadata.get("deletionTimestamp")

    # --- watching ----------------------------------------------------------------------------

    async def _monitor(self, user: str, name: str) -> None:
        """Poll a new worker until it is ready or failed, so each step gets its own time."""
        deadline = time.monotonic() + self.ready_timeout + ENV_BUILD_ALLOWANCE + 5
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(self.poll_interval)
                record = await self.get(user, name)
                if record is None or record.state != "starting":
                    if record is not None and record.state == "failed":
                        log.warning("worker %r of user %r failed: %s", name, user, record.error)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching worker %r of user %r failed", name, user)

    async def _broker_rows(self, user: str) -> builtins.list[WorkerActivity] | str:
        try:
            return await self.activity.fetch(user)
        except ActivityUnavailable as exc:
            return str(exc)

    async def _record(
        self,
        user: str,
        name: str,
        pod: Json,
        rows: builtins.list[WorkerActivity] | str | None = None,
    ) -> WorkerRecord:
        metadata = pod.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        instance = str(annotations.get(naming.ANNOTATION_INSTANCE, ""))
        created = _timestamp(metadata.get("creationTimestamp"))
        seen = self._seen.get((user, name))
        if seen is None or seen.instance != instance:
            seen = self._seen[(user, name)] = _Seen(instance)
        assessment = assess_pod(pod, [])
        if assessment.state == "starting":
            events = await self.api.list_pod_events(metadata["namespace"], metadata["name"])
            assessment = assess_pod(pod, events)
        hung = self._hung.get((user, name))
        if hung is not None and hung.instance != instance:
            hung = None
        if hung is None:  # a replaced pod's deletion is not news: its reason stays the last step
            for index, step in enumerate(assessment.steps):
                seen.note(step, created if index == 0 else None)
        state: WorkerState
        error: str | None
        info: dict[str, Any]
        if hung is not None:
            state, error, info = "failed", hung.reason, {}
        else:
            state, error, info = await self._state(user, name, pod, assessment, seen, created, rows)
        status = pod.get("status") or {}
        info.update(
            namespace=metadata.get("namespace"),
            pod=metadata.get("name"),
            node=(pod.get("spec") or {}).get("nodeName"),
            pod_ip=status.get("podIP"),
            profile=annotations.get(naming.ANNOTATION_PROFILE),
            env_id=annotations.get(naming.ANNOTATION_ENV_ID),
        )
        if error:
            seen.note(error)
        if state in ACTIVE_STATES:
            self._track(pod)  # a pod an earlier spawner started: renew its credential now
        else:
            self._untrack(user, name, instance)
        record = WorkerRecord(
            user=user,
            name=name,
            state=state,
            instance=instance,
            created_at=created,
            progress=seen.events(),
            info={key: value for key, value in info.items() if value is not None},
            error=error,
        )
        if hung is not None:
            hung.record = record
        return record

    async def _state(
        self,
        user: str,
        name: str,
        pod: Json,
        assessment: PodAssessment,
        seen: _Seen,
        created: float,
        rows: builtins.list[WorkerActivity] | str | None,
    ) -> tuple[WorkerState, str | None, dict[str, Any]]:
        if assessment.state == "failed":
            return "failed", assessment.failure, {}
        if assessment.state in ("stopping", "stopped"):
            return "stopped", None, {}
        if assessment.state == "running":
            if rows is None:
                rows = await self._broker_rows(user)
            if isinstance(rows, str):
                seen.note(f"cannot ask the broker whether the worker registered: {rows}")
            else:
                row = _registered_row(rows, name, seen.instance, created)
                if row is not None:
                    seen.registered = True
                    seen.note("worker connected to the broker")
                    return "ready", None, dict(row.info)
                env_id = (pod["metadata"].get("annotations") or {}).get(naming.ANNOTATION_ENV_ID)
                seen.note(
                    f"worker process running; building environment {env_id}, then connecting "
                    f"to the broker at {self.settings.broker_backend_url}"
                    if env_id
                    else "worker process running; connecting to the broker at "
                    f"{self.settings.broker_backend_url}"
                )
        deadline = self.ready_timeout
        if (pod["metadata"].get("annotations") or {}).get(naming.ANNOTATION_ENV_ID):
            deadline += ENV_BUILD_ALLOWANCE
        if not seen.registered and time.time() - created > deadline:
            return (
                "failed",
                (
                    f"the worker did not connect to the broker at "
                    f"{self.settings.broker_backend_url} within {deadline:g} s "
                    f"(last step: {assessment.steps[-1]}); check that the broker is running "
                    "and that REXEC_BROKER_BACKEND_URL is reachable from the worker namespace"
                ),
                {},
            )
        return "starting", None, {}
