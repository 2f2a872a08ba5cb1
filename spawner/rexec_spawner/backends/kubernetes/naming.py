"""Names and labels of what the Kubernetes backend creates.

Every object carries labels that say who made it (``rexec.dev/release``), for whom
(``rexec.dev/user-hash``) and what it is, so a restarted spawner finds its objects by label
selector and never has to remember anything. The exact user id is kept in an annotation,
because label values cannot hold arbitrary text.
"""

from __future__ import annotations

import re
from hashlib import sha256

MANAGED_BY = "rexec-spawner"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_RELEASE = "rexec.dev/release"
LABEL_USER_HASH = "rexec.dev/user-hash"
LABEL_WORKER = "rexec.dev/worker"
ANNOTATION_USER = "rexec.dev/user"
ANNOTATION_INSTANCE = "rexec.dev/instance"
ANNOTATION_PROFILE = "rexec.dev/profile"
ANNOTATION_ENV_ID = "rexec.dev/env-id"
ANNOTATION_SPEC_HASH = "rexec.dev/spec-hash"
COMPONENT_WORKER = "worker"
COMPONENT_ENVIRONMENT = "environment"
COMPONENT_USER = "user"
# The name of each namespace-wide object the backend keeps (NetworkPolicy, ResourceQuota,
# LimitRange); RBAC grants get/update/delete on these kinds for this name only.
POLICY_NAME = "rexec-workers"
NETWORK_POLICY_NAME = POLICY_NAME
POD_SECURITY_LEVEL = "restricted"
POD_SECURITY_PREFIX = "pod-security.kubernetes.io/"
CREDENTIAL_KEY = "credential"

MAX_NAME = 63
HASH_CHARS = 10
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def user_hash(user: str) -> str:
    """A label-safe digest of the exact user id (16 hex characters)."""
    return sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def make_namespace_name(prefix: str, user: str) -> str:
    """``<prefix><slug>-<hash>``: a valid DNS label (at most 63 characters) for ``user``.

    The slug keeps namespaces recognisable; the hash of the exact id keeps ids that slug alike
    ("Alice", "alice", "a.l.i.c.e", "ü") apart.
    """
    room = MAX_NAME - len(prefix) - HASH_CHARS - 1
    slug = _NOT_SLUG.sub("-", user.lower()).strip("-")[:room].strip("-") or "user"
    digest = user_hash(user)[:HASH_CHARS]
    return f"{prefix}{slug}-{digest}"


def pod_name(worker: str) -> str:
    return f"worker-{worker}"


def secret_name(worker: str) -> str:
    return f"worker-{worker}-credential"


def environment_name(worker: str) -> str:
    return f"rexec-env-{worker}"


def base_labels(release: str, user: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "rexec",
        LABEL_RELEASE: release,
        LABEL_USER_HASH: user_hash(user),
    }


def pod_security_labels(version: str) -> dict[str, str]:
    """Pod Security Admission labels: enforce, audit and warn the ``restricted`` level.

    Enforced by the API server from Kubernetes 1.23 on (earlier ones keep them as plain labels).
    Audit and warn too, so a violation shows up in audit logs and as a warning to whoever
    submits it, not only as a refusal.
    """
    labels = {}
    for mode in ("enforce", "audit", "warn"):
        labels[f"{POD_SECURITY_PREFIX}{mode}"] = POD_SECURITY_LEVEL
        labels[f"{POD_SECURITY_PREFIX}{mode}-version"] = version
    return labels


def worker_labels(release: str, user: str, worker: str) -> dict[str, str]:
    return {**base_labels(release, user), LABEL_COMPONENT: COMPONENT_WORKER, LABEL_WORKER: worker}


def selector(labels: dict[str, str]) -> str:
    """A label selector string matching all of ``labels``."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def release_selector(release: str) -> str:
    return selector({LABEL_MANAGED_BY: MANAGED_BY, LABEL_RELEASE: release})
