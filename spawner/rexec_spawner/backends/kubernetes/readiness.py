"""From pod status and events to user-facing progress, and to fast failure with the reason.

Pure functions over the API's JSON (camelCase dicts). The backend adds the last step, "worker
connected to the broker", from the broker's activity answer: a running container is not yet a
usable worker.

A pod is reported failed at once, with Kubernetes' own words, when it cannot be scheduled (and
no cluster autoscaler is adding a node for it), when its image cannot be pulled, when its
container keeps crashing or cannot be created, and when it has terminated with an error.
:func:`admission_settling` tells a refusal to admit a pod that only means "not yet" from one
that stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
SCALE_UP_REASONS = frozenset({"TriggeredScaleUp"})
MAX_MESSAGE = 600


@dataclass(frozen=True)
class PodAssessment:
    """What a pod's status says: ``state`` is starting, running, stopping, stopped or failed."""

    state: str
    steps: tuple[str, ...]
    failure: str | None = None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _condition(pod: Json, kind: str) -> Json | None:
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _events_of(events: list[Json], reasons: frozenset[str] | set[str]) -> list[Json]:
    return [event for event in events if event.get("reason") in reasons]


def _termination(state: Json) -> str:
    terminated = state.get("terminated") or {}
    parts = []
    if "exitCode" in terminated:
        parts.append(f"exit code {terminated['exitCode']}")
    if terminated.get("reason"):
        parts.append(str(terminated["reason"]))
    text = ", ".join(parts) or "unknown reason"
    message = (terminated.get("message") or "").strip()
    if message:
        text += f"; its last output: {_short(message)}"
    return text


def _container_failure(status: Json) -> str | None:
    waiting = (status.get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason not in FATAL_WAITING_REASONS:
        return None
    message = _short(waiting.get("message") or "")
    if reason == "CrashLoopBackOff":
        last = status.get("lastState") or {}
        restarts = status.get("restartCount", 0)
        return (
            f"the worker container keeps crashing (CrashLoopBackOff, {restarts} restarts; "
            f"last exit: {_termination(last)})"
        )
    if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"):
        return (
            f"the worker image {status.get('image', '')!r} cannot be pulled ({reason}: "
            f"{message or 'no details'}); check REXEC_K8S_WORKER_IMAGE and pull secrets"
        )
    return f"the worker container cannot start ({reason}: {message or 'no details'})"


def assess_pod(pod: Json, events: list[Json]) -> PodAssessment:
    """Progress steps so far and the pod's state; ``events`` are the pod's events, any order."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    steps = ["worker pod created; waiting for a node"]
    if metadata.get("deletionTimestamp"):
        return PodAssessment("stopping", (*steps, "worker pod is being deleted"))

    scheduled = _condition(pod, "PodScheduled")
    node = spec.get("nodeName")
    if node or (scheduled and scheduled.get("status") == "True"):
        steps.append(f"scheduled on node {node}" if node else "scheduled on a node")
    elif scheduled and scheduled.get("reason") == "Unschedulable":
        scaling = _events_of(events, SCALE_UP_REASONS)
        if scaling:
            steps.append("no node fits yet; the cluster autoscaler is adding one")
            return PodAssessment("starting", tuple(steps))
        message = _short(scheduled.get("message") or "no node fits its resource requests")
        return PodAssessment(
            "failed",
            tuple(steps),
            f"the worker pod cannot be scheduled: {message}; ask for fewer resources "
            "(REXEC_K8S_PROFILE) or for more cluster capacity",
        )

    for event in sorted(_events_of(events, {"Pulling", "Pulled"}), key=_event_time):
        if event.get("reason") == "Pulling":
            steps.append("pulling the worker image")
        else:
            steps.append("worker image pulled")

    container_statuses = status.get("containerStatuses") or []
    for container in container_statuses:
        failure = _container_failure(container)
        if failure is not None:
            return PodAssessment("failed", tuple(steps), failure)

    if phase == "Failed":
        last = container_statuses[0].get("state", {}) if container_statuses else {}
        reason = status.get("reason") or ""
        detail = (
            _termination(last)
            if last.get("terminated")
            else _short(status.get("message") or reason)
        )
        return PodAssessment("failed", tuple(steps), f"the worker pod failed: {detail}")
    if phase == "Succeeded":
        return PodAssessment("stopped", (*steps, "worker process exited"))
    running = any("running" in (c.get("state") or {}) for c in container_statuses)
    if phase == "Running" and running:
        restarts = max((int(c.get("restartCount") or 0) for c in container_statuses), default=0)
        steps.append("worker container running")
        if restarts:
            steps.append(f"worker container restarted {restarts} time(s)")
        return PodAssessment("running", tuple(steps))
    return PodAssessment("starting", tuple(steps))


def _event_time(event: Json) -> str:
    return str(
        event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or ""
    )


def admission_settling(detail: str) -> bool:
    """Whether an admission refusal only means the namespace is still being set up.

    The ServiceAccount plugin refuses pods until the namespace's default ServiceAccount (and,
    before Kubernetes 1.24, its token) exists; the ResourceQuota plugin refuses what a new quota
    covers until the quota controller has counted the namespace ("status unknown"). Both are
    done by the controller manager within about a second.
    """
    text = detail.lower()
    if "cannot " in text:  # RBAC: "... cannot create resource ..." never settles
        return False
    return (
        "service account" in text or "serviceaccount" in text or "status unknown for quota" in text
    )
