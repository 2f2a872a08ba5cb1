"""Pure manifest builders: a :class:`WorkerSpec` in, plain Kubernetes dicts out.

Nothing here talks to a cluster; ``tests/unit/test_k8s_objects.py`` compares the results with
expected dicts. The worker pod

* runs as a non-root user with every capability dropped, no privilege escalation, the runtime's
  default seccomp profile and a read-only root filesystem (writable: ``/tmp``, ``$HOME`` and
  ``$REXEC_ENV_ROOT``, all emptyDirs with a size limit, inside the profile's ephemeral-storage
  limit, so one worker cannot fill its node's disk);
* uses only volume types the Pod Security Standards' ``restricted`` profile allows (secret,
  emptyDir), no host namespaces, paths or ports;
* gets no service-account token and no service-link variables: it has no business with the
  Kubernetes API;
* reads its one-user credential from a Secret mounted as a file; the credential is never in the
  pod spec or an environment variable, and the backend renews it by replacing the Secret (the
  kubelet updates mounted Secrets, never environment variables);
* opens no port: it connects out to the broker, and the namespace's NetworkPolicy refuses all
  ingress and allows egress only to the broker's backend port, the cluster DNS pods on port 53
  and (if configured) package indexes on HTTPS.

The namespace's ResourceQuota and LimitRange make the cluster enforce the per-user worker limit
and the profiles' sizes even for pods the spawner did not count (a bug, a race, a second
spawner): at most ``max workers`` pods, each within the largest profile.

:func:`stamp` adds a digest of a manifest to it, so the backend can tell that an object made by
an older spawner (or with other settings) differs from what it would make now, and replace it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

from rexec_spawner.backends.base import EnvironmentSpec
from rexec_spawner.backends.kubernetes import naming
from rexec_spawner.backends.kubernetes.quantity import format_quantity, parse_quantity
from rexec_spawner.backends.kubernetes.spec import (
    DNS_PORT,
    HTTPS_PORT,
    NAMESPACE_NAME_LABEL,
    NetworkSpec,
    QuotaSpec,
    WorkerSpec,
)

Manifest = dict[str, Any]

CONTAINER_NAME = "worker"
CREDENTIAL_DIR = "/var/run/rexec/credential"
CREDENTIAL_PATH = f"{CREDENTIAL_DIR}/{naming.CREDENTIAL_KEY}"
HOME_DIR = "/home/rexec"
TMP_DIR = "/tmp"
ENV_ROOT = "/opt/rexec/envs"
TERMINATION_GRACE_SECONDS = 10
# Secrets a user's namespace may hold besides one credential per worker: the default
# ServiceAccount's token Secret (Kubernetes before 1.24 makes one) and room for its rotation.
EXTRA_SECRETS = 4


def make_namespace(
    release: str, user: str, name: str, pod_security_version: str = "latest"
) -> Manifest:
    """The user's namespace; Pod Security Admission holds every pod in it to ``restricted``."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                **naming.base_labels(release, user),
                naming.LABEL_COMPONENT: naming.COMPONENT_USER,
                **naming.pod_security_labels(pod_security_version),
            },
            "annotations": {naming.ANNOTATION_USER: user},
        },
    }


def make_network_policy(release: str, user: str, namespace: str, network: NetworkSpec) -> Manifest:
    """No ingress at all; egress to the broker backend port, the cluster DNS pods (and
    ``dns_cidrs``) on port 53 and optional package indexes on HTTPS."""
    if network.broker_namespace and network.broker_pod_labels:
        broker_peer: list[Manifest] = [
            {
                "namespaceSelector": {
                    "matchLabels": {NAMESPACE_NAME_LABEL: network.broker_namespace}
                },
                "podSelector": {"matchLabels": dict(network.broker_pod_labels)},
            }
        ]
        broker_rule: Manifest = {
            "to": broker_peer,
            "ports": [{"protocol": "TCP", "port": network.broker_port}],
        }
    else:
        broker_rule = {"ports": [{"protocol": "TCP", "port": network.broker_port}]}
    # Port 53 to any address would be a way out for anything that speaks UDP or TCP on port 53
    # (DNS tunnels, a server of one's own): only the cluster's DNS pods answer workers.
    dns_peers: list[Manifest] = [
        {
            "namespaceSelector": {"matchLabels": dict(network.dns_namespace_labels)},
            "podSelector": {"matchLabels": dict(network.dns_pod_labels)},
        },
        *({"ipBlock": {"cidr": cidr}} for cidr in network.dns_cidrs),
    ]
    egress = [
        broker_rule,
        {
            "to": dns_peers,
            "ports": [
                {"protocol": "UDP", "port": DNS_PORT},
                {"protocol": "TCP", "port": DNS_PORT},
            ],
        },
    ]
    if network.package_index_cidrs:
        egress.append(
            {
                "to": [{"ipBlock": {"cidr": cidr}} for cidr in network.package_index_cidrs],
                "ports": [{"protocol": "TCP", "port": HTTPS_PORT}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": naming.NETWORK_POLICY_NAME,
            "namespace": namespace,
            "labels": naming.base_labels(release, user),
        },
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def make_resource_quota(release: str, user: str, namespace: str, quota: QuotaSpec) -> Manifest:
    """At most ``max_workers`` pods and their credentials, and the CPU, memory and local disk
    of as many pods of the largest profile, requested and limited."""
    workers = quota.max_workers
    resources = quota.largest.resources()
    hard = {"pods": str(workers), "secrets": str(workers + EXTRA_SECRETS)}
    for kind in ("requests", "limits"):
        for resource, value in resources[kind].items():
            hard[f"{kind}.{resource}"] = format_quantity(workers * parse_quantity(value))
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": naming.POLICY_NAME,
            "namespace": namespace,
            "labels": naming.base_labels(release, user),
        },
        "spec": {"hard": hard},
    }


def make_limit_range(release: str, user: str, namespace: str, quota: QuotaSpec) -> Manifest:
    """Every container at most the largest profile; one that names no resources gets it.

    ``defaultRequest`` is given explicitly: left out, Kubernetes would default requests to the
    limits.
    """
    resources = quota.largest.resources()
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {
            "name": naming.POLICY_NAME,
            "namespace": namespace,
            "labels": naming.base_labels(release, user),
        },
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": resources["limits"],
                    "defaultRequest": resources["requests"],
                    "max": resources["limits"],
                }
            ]
        },
    }


def make_credential_secret(spec: WorkerSpec, credential: str) -> Manifest:
    """The Secret the worker pod of ``spec`` mounts its credential from."""
    return make_credential_secret_for(
        spec.release, spec.user, spec.namespace, spec.worker, spec.instance, credential
    )


def make_credential_secret_for(
    release: str, user: str, namespace: str, worker: str, instance: str, credential: str
) -> Manifest:
    """The credential Secret of worker pod ``instance``, also when it is renewed: the backend
    replaces the whole object with a fresh credential (no need to read the old one back)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": naming.secret_name(worker),
            "namespace": namespace,
            "labels": naming.worker_labels(release, user, worker),
            "annotations": {naming.ANNOTATION_INSTANCE: instance},
        },
        "data": {naming.CREDENTIAL_KEY: base64.b64encode(credential.encode()).decode()},
    }


def make_environment_configmap(
    release: str, user: str, namespace: str, worker: str, environment: EnvironmentSpec
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.environment_name(worker),
            "namespace": namespace,
            "labels": {
                **naming.base_labels(release, user),
                naming.LABEL_COMPONENT: naming.COMPONENT_ENVIRONMENT,
                naming.LABEL_WORKER: worker,
            },
        },
        "data": {
            "env_id": environment.env_id,
            "requirements": json.dumps(list(environment.requirements)),
        },
    }


def parse_environment_configmap(data: dict[str, str] | None) -> EnvironmentSpec | None:
    """The environment a ConfigMap from :func:`make_environment_configmap` holds, or None."""
    if not data or not data.get("env_id"):
        return None
    try:
        requirements = json.loads(data.get("requirements") or "[]")
    except ValueError:
        return None
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        return None
    return EnvironmentSpec(env_id=data["env_id"], requirements=tuple(requirements))


def _worker_env(spec: WorkerSpec) -> list[Manifest]:
    variables = {
        "REXEC_WORKER_CREDENTIAL_FILE": CREDENTIAL_PATH,
        "HOME": HOME_DIR,
        "TMPDIR": TMP_DIR,
        "PYTHONUNBUFFERED": "1",
        "REXEC_ENV_ROOT": ENV_ROOT,
    }
    if spec.broker_public_key:
        variables["REXEC_BROKER_PUBLIC_KEY"] = spec.broker_public_key
    variables.update(spec.policy_variables)
    if spec.environment is not None:
        variables.update(spec.environment.worker_variables())
    return [{"name": name, "value": value} for name, value in variables.items()]


def make_worker_pod(spec: WorkerSpec) -> Manifest:
    profile = spec.profile
    uid = spec.run_as_user
    annotations = {
        naming.ANNOTATION_USER: spec.user,
        naming.ANNOTATION_INSTANCE: spec.instance,
        naming.ANNOTATION_PROFILE: spec.profile_name,
    }
    if spec.environment is not None:
        annotations[naming.ANNOTATION_ENV_ID] = spec.environment.env_id
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "OnFailure",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": spec.image,
                "imagePullPolicy": spec.image_pull_policy,
                "command": [
                    *spec.command,
                    "--broker",
                    spec.broker_backend_url,
                    "--name",
                    spec.worker,
                ],
                "env": _worker_env(spec),
                "resources": profile.resources(),
                "securityContext": {
                    "runAsNonRoot": True,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {"name": "credential", "mountPath": CREDENTIAL_DIR, "readOnly": True},
                    {"name": "tmp", "mountPath": TMP_DIR},
                    {"name": "home", "mountPath": HOME_DIR},
                    {"name": "envs", "mountPath": ENV_ROOT},
                ],
            }
        ],
        "volumes": [
            {
                "name": "credential",
                "secret": {"secretName": naming.secret_name(spec.worker), "defaultMode": 0o440},
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": spec.tmp_volume_size}},
            {"name": "home", "emptyDir": {"sizeLimit": spec.home_volume_size}},
            {"name": "envs", "emptyDir": {"sizeLimit": spec.env_volume_size}},
        ],
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": naming.pod_name(spec.worker),
            "namespace": spec.namespace,
            "labels": naming.worker_labels(spec.release, spec.user, spec.worker),
            "annotations": annotations,
        },
        "spec": pod_spec,
    }


def stamp(manifest: Manifest) -> Manifest:
    """A copy of ``manifest`` annotated with a digest of its content (``rexec.dev/spec-hash``).

    The API server adds defaults and normalizes quantities, so an object read back never equals
    the manifest it was made from; the digest it keeps does, as long as the spawner would make
    the same object.
    """
    stamped = copy.deepcopy(manifest)
    metadata = stamped.setdefault("metadata", {})
    metadata.setdefault("annotations", {})[naming.ANNOTATION_SPEC_HASH] = spec_hash(manifest)
    return stamped


def spec_hash(manifest: Manifest) -> str:
    """The digest :func:`stamp` writes: of the manifest without that annotation."""
    content = copy.deepcopy(manifest)
    metadata = content.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    annotations.pop(naming.ANNOTATION_SPEC_HASH, None)
    if not annotations:
        metadata.pop("annotations", None)
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def stamped_hash(obj: Manifest) -> str | None:
    """The digest an object read from the cluster carries, or None."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(naming.ANNOTATION_SPEC_HASH)
    return str(value) if value is not None else None
