"""The exact Kubernetes permissions the backend uses, as ClusterRole rules.

A ClusterRole because the backend creates and deletes per-user namespaces, which are
cluster-scoped. The k8s test tier runs the backend with a ServiceAccount bound to exactly these
rules, so a call that needs more fails there; the Helm chart's ClusterRole must match.

A ClusterRole applies in every namespace, so what the backend only does to objects of its own
name (``rexec-workers``) is granted for that name only: RBAC can limit get, update and delete to
names, not create.

Secrets: ``create`` and ``delete`` a worker's credential Secret, and ``update`` it to renew the
credential. ``update`` cannot be limited to the credentials' names (``worker-<name>-credential``:
``resourceNames`` lists exact names, never patterns), but it adds nothing that ``delete`` and
``create`` of any Secret did not already allow. There is still no ``get``, ``list`` or ``watch``:
the spawner never reads a Secret back.
"""

from __future__ import annotations

from typing import Any

from rexec_spawner.backends.kubernetes.naming import POLICY_NAME

RBAC_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "create", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "update", "delete"]},
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "verbs": ["get", "create", "update", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["create"]},
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "resourceNames": [POLICY_NAME],
        "verbs": ["get", "update"],
    },
    # The namespace's quota and container limits; the quota goes when the limit is turned off.
    {"apiGroups": [""], "resources": ["resourcequotas", "limitranges"], "verbs": ["create"]},
    {
        "apiGroups": [""],
        "resources": ["resourcequotas"],
        "resourceNames": [POLICY_NAME],
        "verbs": ["get", "update", "delete"],
    },
    {
        "apiGroups": [""],
        "resources": ["limitranges"],
        "resourceNames": [POLICY_NAME],
        "verbs": ["get", "update"],
    },
]
