"""Kubernetes manifests, names, readiness and settings of the spawner: pure, no cluster."""

from __future__ import annotations

import base64
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from rexec.auth import AuthSettings
from rexec.errors import ConfigError
from rexec_spawner.activity import WorkerActivity
from rexec_spawner.backends.base import EnvironmentSpec
from rexec_spawner.backends.kubernetes import naming, objects
from rexec_spawner.backends.kubernetes.quantity import format_quantity, parse_quantity
from rexec_spawner.backends.kubernetes.readiness import admission_settling, assess_pod
from rexec_spawner.backends.kubernetes.spec import (
    QuotaSpec,
    broker_port,
    largest_profile,
    make_quota_spec,
    make_worker_spec,
)
from rexec_spawner.config import KubernetesSettings, ResourceProfile, SpawnerSettings
from rexec_spawner.culling import pick_idle
from tests.k8s.pod_security import restricted_violations

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ALICE_HASH = naming.user_hash("alice")


def settings(**k8s: object) -> SpawnerSettings:
    return SpawnerSettings(
        auth=AuthSettings(),
        signing_key_path=Path("/nonexistent/signing.key"),
        backend="kubernetes",
        broker_backend_url="tcp://rexec-broker-internal.rexec.svc:5560",
        kubernetes=KubernetesSettings(**k8s),  # type: ignore[arg-type]
    )


def test_namespace_names_are_valid_distinct_and_stable():
    users = ["alice", "Alice", "a.l.i.c.e", "a-l-i-c-e", "ü", "ü ", "", "-", "x" * 500, "x" * 501]
    names = [naming.make_namespace_name("rexec-u-", user) for user in users]
    assert len(set(names)) == len(users)
    for name in names:
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        assert name.startswith("rexec-u-")
    assert names[0] == naming.make_namespace_name("rexec-u-", "alice")
    assert names[0].startswith("rexec-u-alice-")
    assert naming.make_namespace_name("rexec-u-", "ü").startswith("rexec-u-user-")
    longest = naming.make_namespace_name("abcdefghijklmnopqrs-", "y" * 300)
    assert len(longest) == 63 and DNS_LABEL.match(longest)


def test_worker_pod_manifest():
    spec = make_worker_spec(
        settings(worker_image="example.org/rexec-worker:1.0", node_selector={"pool": "cpu"}),
        "alice",
        "default",
        "abc123",
        EnvironmentSpec("env-1", ("numpy>=1.26",)),
    )
    labels = {
        "app.kubernetes.io/managed-by": "rexec-spawner",
        "app.kubernetes.io/part-of": "rexec",
        "rexec.dev/release": "rexec",
        "rexec.dev/user-hash": ALICE_HASH,
        "app.kubernetes.io/component": "worker",
        "rexec.dev/worker": "default",
    }
    assert objects.make_worker_pod(spec) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "worker-default",
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {
                "rexec.dev/user": "alice",
                "rexec.dev/instance": "abc123",
                "rexec.dev/profile": "default",
                "rexec.dev/env-id": "env-1",
            },
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "OnFailure",
            "terminationGracePeriodSeconds": 10,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "nodeSelector": {"pool": "cpu"},
            "containers": [
                {
                    "name": "worker",
                    "image": "example.org/rexec-worker:1.0",
                    "imagePullPolicy": "IfNotPresent",
                    "command": [
                        "python",
                        "-m",
                        "rexec",
                        "worker",
                        "--broker",
                        "tcp://rexec-broker-internal.rexec.svc:5560",
                        "--name",
                        "default",
                    ],
                    "env": [
                        {
                            "name": "REXEC_WORKER_CREDENTIAL_FILE",
                            "value": "/var/run/rexec/credential/credential",
                        },
                        {"name": "HOME", "value": "/home/rexec"},
                        {"name": "TMPDIR", "value": "/tmp"},
                        {"name": "PYTHONUNBUFFERED", "value": "1"},
                        {"name": "REXEC_ENV_ROOT", "value": "/opt/rexec/envs"},
                        {"name": "REXEC_ENV_ALLOW_OPTIONS", "value": "0"},
                        {"name": "REXEC_ENV_ALLOW_URLS", "value": "0"},
                        {"name": "REXEC_ENV_ID", "value": "env-1"},
                        {"name": "REXEC_ENV_REQUIREMENTS", "value": '["numpy>=1.26"]'},
                    ],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "1Gi"},
                        "limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "10Gi"},
                    },
                    "securityContext": {
                        "runAsNonRoot": True,
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [
                        {
                            "name": "credential",
                            "mountPath": "/var/run/rexec/credential",
                            "readOnly": True,
                        },
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "home", "mountPath": "/home/rexec"},
                        {"name": "envs", "mountPath": "/opt/rexec/envs"},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "credential",
                    "secret": {"secretName": "worker-default-credential", "defaultMode": 0o440},
                },
                {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "home", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "envs", "emptyDir": {"sizeLimit": "4Gi"}},
            ],
        },
    }


def test_profile_and_public_key_reach_the_pod():
    base = settings(
        profiles={"default": ResourceProfile(), "big": ResourceProfile("2", "4", "8Gi", "8Gi")},
        profile="big",
    )
    spec = make_worker_spec(
        SpawnerSettings(**{**base.__dict__, "broker_public_key": "K" * 40}), "bob", "gpu-1", "i"
    )
    pod = objects.make_worker_pod(spec)
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "1Gi"},
        "limits": {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "10Gi"},
    }
    assert {"name": "REXEC_BROKER_PUBLIC_KEY", "value": "K" * 40} in container["env"]
    assert pod["metadata"]["annotations"]["rexec.dev/profile"] == "big"
    assert "nodeSelector" not in pod["spec"]
    assert not any(e["name"].startswith("REXEC_ENV_ID") for e in container["env"])


def test_operator_requirements_policy_reaches_the_pod():
    allowing = SpawnerSettings(**{**settings().__dict__, "env_allow_urls": True})
    env = objects.make_worker_pod(make_worker_spec(allowing, "alice", "default", "abc"))["spec"][
        "containers"
    ][0]["env"]
    assert {"name": "REXEC_ENV_ALLOW_URLS", "value": "1"} in env
    assert {"name": "REXEC_ENV_ALLOW_OPTIONS", "value": "0"} in env


def test_every_emptydir_has_a_size_limit_within_the_ephemeral_storage_limit():
    """The kubelet evicts a pod whose emptyDirs outgrow their sizeLimit, or whose disk use
    (emptyDirs included) outgrows its ephemeral-storage limit; without either, a worker could
    fill its node's disk."""
    big = ResourceProfile("1", "2", "1Gi", "2Gi", "5Gi", "40Gi")
    for k8s in (
        {},
        {
            "env_volume_size": "20Gi",
            "tmp_volume_size": "8Gi",
            "home_volume_size": "8Gi",
            "profiles": {"default": ResourceProfile(ephemeral_storage_limit="36Gi")},
        },
        {"profiles": {"default": ResourceProfile(), "big": big}, "profile": "big"},
    ):
        pod = objects.make_worker_pod(make_worker_spec(settings(**k8s), "alice", "w", "i"))
        empty_dirs = [v["emptyDir"] for v in pod["spec"]["volumes"] if "emptyDir" in v]
        assert len(empty_dirs) == 3
        assert all(parse_quantity(d["sizeLimit"]) > 0 for d in empty_dirs), empty_dirs
        [container] = pod["spec"]["containers"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        total = sum(parse_quantity(d["sizeLimit"]) for d in empty_dirs)
        assert parse_quantity(limits["ephemeral-storage"]) >= total
        assert parse_quantity(requests["ephemeral-storage"]) > 0


def test_quantities_parse_exactly_and_format_back():
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("1.5Gi") == 3 * 2**29
    assert parse_quantity("2") == 2 and parse_quantity("1k") == 1000
    assert parse_quantity("0.1") == Decimal("0.1")
    for bad in ("", "1e3", "-1", "1 Gi", "1gi", "lots", "1.Gi"):
        with pytest.raises(ConfigError, match="not a Kubernetes quantity"):
            parse_quantity(bad)
    cases = {
        "8Gi": 8 * 2**30,
        "12Gi": 12 * parse_quantity("1Gi"),
        "800m": 8 * parse_quantity("100m"),
        "4": 8 * parse_quantity("500m"),
        "2G": 2 * 10**9,
        "1536Mi": 3 * parse_quantity("512Mi"),
        "1001": 1001,
        "0": 0,
        "1m": Decimal("0.0001"),  # below 1m: rounded up, never down
    }
    for text, value in cases.items():
        assert format_quantity(Decimal(value)) == text
        if value and text != "1m":
            assert parse_quantity(text) == value


def test_profile_requests_may_not_exceed_limits():
    with pytest.raises(ConfigError, match="cpu_request 2 is more than cpu_limit 1"):
        ResourceProfile(cpu_request="2", cpu_limit="1")
    with pytest.raises(ConfigError, match="ephemeral_storage_request 20Gi is more than"):
        ResourceProfile(ephemeral_storage_request="20Gi")
    with pytest.raises(ConfigError, match="ephemeral_storage_limit 'big' is not a Kubernetes"):
        ResourceProfile(ephemeral_storage_limit="big")
    ResourceProfile(memory_request="1Gi", memory_limit="1024Mi")  # equal is fine


def test_ephemeral_storage_limit_must_hold_the_volumes():
    with pytest.raises(ConfigError) as refused:
        KubernetesSettings(env_volume_size="8Gi")
    message = str(refused.value)
    assert "profile 'default': ephemeral_storage_limit 10Gi is less than" in message
    assert "8Gi + 2Gi + 2Gi = 12Gi" in message and "REXEC_K8S_ENV_VOLUME_SIZE" in message
    assert "raise the limit or make the volumes smaller" in message
    small = {"default": ResourceProfile(), "small": ResourceProfile(ephemeral_storage_limit="6Gi")}
    with pytest.raises(ConfigError, match="profile 'small'"):
        KubernetesSettings(profiles=small)
    KubernetesSettings(env_volume_size="6Gi")  # 6 + 2 + 2 = 10: exactly fits


RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/audit": "restricted",
    "pod-security.kubernetes.io/audit-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}


def test_user_namespace_enforces_the_restricted_pod_security_standard():
    name = naming.make_namespace_name("rexec-u-", "alice")
    assert objects.make_namespace("rexec", "alice", name) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "rexec-spawner",
                "app.kubernetes.io/part-of": "rexec",
                "rexec.dev/release": "rexec",
                "rexec.dev/user-hash": ALICE_HASH,
                "app.kubernetes.io/component": "user",
                **RESTRICTED,
            },
            "annotations": {"rexec.dev/user": "alice"},
        },
    }
    pinned = objects.make_namespace("rexec", "alice", name, "v1.30")["metadata"]["labels"]
    assert {k: v for k, v in pinned.items() if k.endswith("-version")} == {
        "pod-security.kubernetes.io/enforce-version": "v1.30",
        "pod-security.kubernetes.io/audit-version": "v1.30",
        "pod-security.kubernetes.io/warn-version": "v1.30",
    }


def test_worker_pod_satisfies_the_restricted_pod_security_standard():
    """Checked control by control (tests/k8s/pod_security.py), since no API server here (nor the
    k8s tier's 1.20) runs PodSecurity admission."""
    for k8s in ({}, {"node_selector": {"pool": "cpu"}, "run_as_user": 4242}):
        environment = EnvironmentSpec("env-1", ("numpy",))
        spec = make_worker_spec(settings(**k8s), "alice", "default", "abc", environment)
        pod = objects.make_worker_pod(spec)
        assert restricted_violations(pod) == []
        pod_sc = pod["spec"]["securityContext"]
        [container] = pod["spec"]["containers"]
        # The controls the profile names, on the manifest itself.
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod["spec"])
        assert {next(iter(set(v) - {"name"})) for v in pod["spec"]["volumes"]} == {
            "secret",
            "emptyDir",
        }
        assert all("hostPort" not in port for port in container.get("ports", []))


def _break(pod: Any, path: str, value: object) -> None:
    """Set ``value`` at a dotted ``path`` ("spec.containers.0.securityContext.privileged")."""
    *parents, last = path.split(".")
    node = pod
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


@pytest.mark.parametrize(
    ("path", "value", "control"),
    [
        ("spec.hostNetwork", True, "host namespaces"),
        ("spec.hostPID", True, "host namespaces"),
        ("spec.volumes.1", {"name": "tmp", "hostPath": {"path": "/"}}, "hostPath volumes"),
        ("spec.volumes.2", {"name": "home", "nfs": {"server": "x", "path": "/"}}, "volume types"),
        ("spec.containers.0.securityContext.privileged", True, "privileged"),
        ("spec.containers.0.securityContext.allowPrivilegeEscalation", True, "privilege escal"),
        ("spec.containers.0.securityContext.runAsNonRoot", False, "running as non-root"),
        ("spec.securityContext.runAsUser", 0, "non-root user"),
        ("spec.securityContext.seccompProfile", {"type": "Unconfined"}, "seccomp"),
        ("spec.containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}, "capabilit"),
        ("spec.containers.0.securityContext.capabilities.add", ["SYS_ADMIN"], "capabilities"),
        ("spec.containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "host ports"),
        ("spec.containers.0.securityContext.procMount", "Unmasked", "/proc mount"),
        ("spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "sysctls"),
        ("spec.securityContext.seLinuxOptions", {"type": "spc_t"}, "SELinux"),
    ],
)
def test_the_restricted_check_catches_each_control(path, value, control):
    """The check above is only worth something if it fails for pods that break the profile."""
    pod = objects.make_worker_pod(make_worker_spec(settings(), "alice", "default", "abc"))
    _break(pod, path, value)
    violations = restricted_violations(pod)
    assert any(v.startswith(control) for v in violations), violations


BIG = ResourceProfile("2", "4", "1Gi", "8Gi", "1Gi", "10Gi")
TALL = ResourceProfile("500m", "8", "4Gi", "4Gi", "2Gi", "20Gi")


def test_largest_profile_takes_each_resource_from_the_profile_with_most():
    assert largest_profile({"big": BIG, "tall": TALL}) == ResourceProfile(
        "2", "8", "4Gi", "8Gi", "2Gi", "20Gi"
    )
    assert largest_profile({"only": TALL}) == TALL
    # Compared as quantities, not as strings ("900m" < "1", "1024Mi" == "1Gi").
    milli = {"a": ResourceProfile("900m", "900m"), "b": ResourceProfile("1", "1")}
    assert largest_profile(milli).cpu_limit == "1"


def test_quota_spec_from_settings():
    base = settings(profiles={"default": ResourceProfile(), "big": BIG})
    assert make_quota_spec(base) == QuotaSpec(
        8, largest_profile({"d": ResourceProfile(), "b": BIG})
    )
    unlimited = SpawnerSettings(**{**base.__dict__, "max_workers_per_user": 0})
    assert make_quota_spec(unlimited).max_workers == 0


def test_resource_quota_bounds_pods_secrets_and_the_largest_profile_times_the_limit():
    quota = QuotaSpec(3, largest_profile({"big": BIG, "tall": TALL}))
    assert objects.make_resource_quota("rexec", "alice", "ns-a", quota) == {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": "rexec-workers",
            "namespace": "ns-a",
            "labels": naming.base_labels("rexec", "alice"),
        },
        "spec": {
            "hard": {
                "pods": "3",
                "secrets": "7",  # 3 credentials + the ServiceAccount token and spares
                "requests.cpu": "6",
                "requests.memory": "12Gi",
                "requests.ephemeral-storage": "6Gi",
                "limits.cpu": "24",
                "limits.memory": "24Gi",
                "limits.ephemeral-storage": "60Gi",
            }
        },
    }
    default = objects.make_resource_quota("rexec", "a", "n", make_quota_spec(settings()))
    assert default["spec"]["hard"]["requests.cpu"] == "800m"  # 8 x 100m
    assert default["spec"]["hard"]["limits.ephemeral-storage"] == "80Gi"


def test_limit_range_defaults_and_caps_containers_at_the_largest_profile():
    quota = QuotaSpec(3, largest_profile({"big": BIG, "tall": TALL}))
    largest = {"cpu": "8", "memory": "8Gi", "ephemeral-storage": "20Gi"}
    assert objects.make_limit_range("rexec", "alice", "ns-a", quota) == {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {
            "name": "rexec-workers",
            "namespace": "ns-a",
            "labels": naming.base_labels("rexec", "alice"),
        },
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": largest,
                    "defaultRequest": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "2Gi"},
                    "max": largest,
                }
            ]
        },
    }


def test_every_profile_fits_the_namespace_bounds():
    """A worker of any profile is admitted by the LimitRange, and max_workers of them by the
    quota: otherwise a valid setting would make the cluster refuse the spawner's own pods."""
    profiles = {"default": ResourceProfile(), "big": BIG, "tall": TALL}
    quota = QuotaSpec(4, largest_profile(profiles))
    bounds = objects.make_limit_range("r", "u", "n", quota)["spec"]["limits"][0]["max"]
    hard = objects.make_resource_quota("r", "u", "n", quota)["spec"]["hard"]
    for profile in profiles.values():
        resources = profile.resources()
        for resource, value in resources["limits"].items():
            assert parse_quantity(value) <= parse_quantity(bounds[resource])
            for kind in ("requests", "limits"):
                one = parse_quantity(resources[kind][resource])
                assert 4 * one <= parse_quantity(hard[f"{kind}.{resource}"])


@pytest.mark.parametrize(
    ("detail", "settling"),
    [
        ('error looking up service account ns/default: serviceaccount "default" not found', True),
        ('No API token found for service account "default", retry after the token is ...', True),
        ("status unknown for quota: rexec-workers, resources: pods", True),
        ("exceeded quota: rexec-workers, requested: pods=1, used: pods=2, limited: pods=2", False),
        (
            'pods is forbidden: User "system:serviceaccount:rexec:rexec-spawner" cannot create '
            'resource "pods" in API group "" in the namespace "x"',
            False,
        ),
        ("maximum cpu usage per Container is 8, but limit is 64", False),
    ],
)
def test_only_a_namespace_being_set_up_is_waited_for(detail, settling):
    assert admission_settling(detail) is settling


def test_credential_lives_only_in_the_secret():
    spec = make_worker_spec(settings(), "alice", "default", "abc")
    secret = objects.make_credential_secret(spec, "rxw1.secret.sig")
    assert base64.b64decode(secret["data"]["credential"]) == b"rxw1.secret.sig"
    assert secret["metadata"]["name"] == "worker-default-credential"
    assert "rxw1.secret.sig" not in json.dumps(objects.make_worker_pod(spec))


def test_a_renewed_credential_secret_differs_from_the_first_only_in_its_data():
    spec = make_worker_spec(settings(), "alice", "default", "abc")
    made = objects.make_credential_secret(spec, "rxw1.first.sig")
    renewed = objects.make_credential_secret_for(
        "rexec", "alice", spec.namespace, "default", "abc", "rxw1.second.sig"
    )
    assert renewed == {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": "worker-default-credential",
            "namespace": spec.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "rexec-spawner",
                "app.kubernetes.io/part-of": "rexec",
                "rexec.dev/release": "rexec",
                "rexec.dev/user-hash": ALICE_HASH,
                "app.kubernetes.io/component": "worker",
                "rexec.dev/worker": "default",
            },
            "annotations": {"rexec.dev/instance": "abc"},
        },
        "data": {"credential": base64.b64encode(b"rxw1.second.sig").decode()},
    }
    assert {**made, "data": renewed["data"]} == renewed


def test_network_policy_default_and_narrowed():
    spec = make_worker_spec(settings(), "alice", "default", "abc")
    policy = objects.make_network_policy("rexec", "alice", "ns-a", spec.network)
    assert policy["metadata"]["namespace"] == "ns-a"
    assert policy["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [
            {"ports": [{"protocol": "TCP", "port": 5560}]},
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                        },
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            },
        ],
    }
    narrowed = make_worker_spec(
        settings(
            broker_namespace="rexec",
            broker_pod_labels={"app.kubernetes.io/component": "broker"},
            package_index_cidrs=("0.0.0.0/0",),
            dns_namespace="dns-system",
            dns_pod_labels={"app": "coredns", "tier": "dns"},
            dns_cidrs=("169.254.20.10/32",),
        ),
        "alice",
        "default",
        "abc",
    )
    egress = objects.make_network_policy("rexec", "alice", "ns-a", narrowed.network)["spec"][
        "egress"
    ]
    assert egress[0] == {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "rexec"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "broker"}},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 5560}],
    }
    assert egress[1] == {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns-system"}},
                "podSelector": {"matchLabels": {"app": "coredns", "tier": "dns"}},
            },
            {"ipBlock": {"cidr": "169.254.20.10/32"}},
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    assert egress[2] == {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }


def test_dns_namespace_can_be_selected_by_labels_on_clusters_before_1_21():
    """Before 1.21 namespaces have no kubernetes.io/metadata.name label unless given one."""
    spec = make_worker_spec(
        settings(dns_namespace_labels={"rexec.dev/dns": "true"}), "alice", "default", "abc"
    )
    dns = objects.make_network_policy("rexec", "alice", "ns-a", spec.network)["spec"]["egress"][1]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"rexec.dev/dns": "true"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]


def test_every_egress_rule_names_its_destinations_except_the_unnarrowed_broker():
    """No rule may open a port to every address, except the broker's port when the operator has
    not said where the broker runs (the rule the chart always narrows)."""
    spec = make_worker_spec(settings(), "alice", "default", "abc")
    egress = objects.make_network_policy("rexec", "alice", "ns", spec.network)["spec"]["egress"]
    open_rules = [rule for rule in egress if not rule.get("to")]
    assert open_rules == [{"ports": [{"protocol": "TCP", "port": 5560}]}]


def test_stamp_digests_the_manifest_and_ignores_its_own_annotation():
    spec = make_worker_spec(settings(), "alice", "default", "abc")
    policy = objects.make_network_policy("rexec", "alice", "ns", spec.network)
    stamped = objects.stamp(policy)
    digest = stamped["metadata"]["annotations"]["rexec.dev/spec-hash"]
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert "annotations" not in policy["metadata"], "stamp must not change its argument"
    assert objects.stamped_hash(stamped) == digest == objects.spec_hash(stamped)
    assert objects.stamp(stamped) == stamped
    assert objects.stamped_hash(policy) is None
    other = make_worker_spec(settings(dns_namespace="dns"), "alice", "default", "abc").network
    changed = objects.stamp(objects.make_network_policy("rexec", "alice", "ns", other))
    assert objects.stamped_hash(changed) != digest


def test_environment_configmap_round_trip_and_garbage():
    environment = EnvironmentSpec("env-9", ("pandas<3", "numpy>=1.26"))
    manifest = objects.make_environment_configmap("rexec", "alice", "ns", "default", environment)
    assert manifest["metadata"]["name"] == "rexec-env-default"
    assert objects.parse_environment_configmap(manifest["data"]) == environment
    for data in (None, {}, {"env_id": ""}, {"env_id": "e", "requirements": "{"}):
        assert objects.parse_environment_configmap(data) is None
    assert objects.parse_environment_configmap({"env_id": "e", "requirements": "[1]"}) is None


def _pod(**status: object) -> dict[str, object]:
    return {"metadata": {"name": "worker-default"}, "spec": {}, "status": status}


def test_readiness_steps_and_fast_failures():
    assert assess_pod(_pod(phase="Pending"), []).state == "starting"
    unschedulable = _pod(
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory.",
            }
        ],
    )
    failed = assess_pod(unschedulable, [])
    assert failed.state == "failed"
    assert "cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory." in (
        failed.failure or ""
    )
    scaling = assess_pod(unschedulable, [{"reason": "TriggeredScaleUp"}])
    assert scaling.state == "starting" and "autoscaler" in scaling.steps[-1]

    pulling = {
        **_pod(
            phase="Pending",
            containerStatuses=[
                {
                    "image": "nope:1",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                }
            ],
        ),
        "spec": {"nodeName": "n1"},
    }
    result = assess_pod(pulling, [{"reason": "Pulling", "lastTimestamp": "2026-01-01T00:00:00Z"}])
    assert result.state == "failed"
    assert result.steps[1:] == ("scheduled on node n1", "pulling the worker image")
    assert "'nope:1' cannot be pulled (ImagePullBackOff: not found)" in (result.failure or "")

    crashing = _pod(
        phase="Running",
        containerStatuses=[
            {
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 3, "message": "ImportError: rexec"}},
            }
        ],
    )
    crash = assess_pod(crashing, [])
    assert crash.state == "failed"
    assert "4 restarts; last exit: exit code 3; its last output: ImportError: rexec" in (
        crash.failure or ""
    )

    running = _pod(phase="Running", containerStatuses=[{"state": {"running": {}}}])
    assert assess_pod(running, []).state == "running"
    assert assess_pod(_pod(phase="Succeeded"), []).state == "stopped"
    deleting = {**_pod(phase="Running"), "metadata": {"deletionTimestamp": "x"}}
    assert assess_pod(deleting, []).state == "stopping"


def test_kubernetes_settings_from_env():
    parsed = SpawnerSettings.from_env(
        {
            "REXEC_SPAWNER_BACKEND": "kubernetes",
            "REXEC_K8S_RELEASE": "prod",
            "REXEC_K8S_MEMORY_LIMIT": "2Gi",
            "REXEC_K8S_EPHEMERAL_STORAGE_LIMIT": "12Gi",
            "REXEC_K8S_PROFILES": json.dumps(
                {"large": {"cpu_limit": "4", "ephemeral_storage_request": "2Gi"}}
            ),
            "REXEC_K8S_TMP_VOLUME_SIZE": "3Gi",
            "REXEC_K8S_HOME_VOLUME_SIZE": "1Gi",
            "REXEC_K8S_PROFILE": "large",
            "REXEC_K8S_BROKER_NAMESPACE": "rexec",
            "REXEC_K8S_BROKER_POD_LABELS": "a=b, c=d",
            "REXEC_K8S_PACKAGE_INDEX_CIDRS": "10.0.0.0/8, 0.0.0.0/0",
            "REXEC_K8S_WORKER_COMMAND": "/opt/venv/bin/python -m rexec worker",
            "REXEC_IDLE_TIMEOUT": "3600",
            "REXEC_BROKER_INTERNAL_URL": "tcp://rexec-broker:5559",
        },
        signing_key_path=Path("/x"),
    )
    k8s = parsed.kubernetes
    assert k8s.release == "prod"
    assert k8s.worker_profile == ResourceProfile("100m", "4", "256Mi", "2Gi", "2Gi", "12Gi")
    assert (k8s.tmp_volume_size, k8s.home_volume_size) == ("3Gi", "1Gi")
    assert k8s.pod_security_version == "latest"
    pinned = {"REXEC_SPAWNER_BACKEND": "kubernetes", "REXEC_K8S_POD_SECURITY_VERSION": "v1.30"}
    assert (
        SpawnerSettings.from_env(
            pinned, signing_key_path=Path("/x")
        ).kubernetes.pod_security_version
        == "v1.30"
    )
    assert k8s.broker_pod_labels == {"a": "b", "c": "d"}
    assert k8s.package_index_cidrs == ("10.0.0.0/8", "0.0.0.0/0")
    assert k8s.worker_command == ("/opt/venv/bin/python", "-m", "rexec", "worker")
    assert k8s.dns_namespace == "kube-system" and k8s.dns_pod_labels == {"k8s-app": "kube-dns"}
    dns = SpawnerSettings.from_env(
        {
            "REXEC_SPAWNER_BACKEND": "kubernetes",
            "REXEC_K8S_DNS_NAMESPACE": "dns",
            "REXEC_K8S_DNS_NAMESPACE_LABELS": "rexec.dev/dns=true",
            "REXEC_K8S_DNS_POD_LABELS": "app=coredns, tier=dns",
            "REXEC_K8S_DNS_CIDRS": "169.254.20.10/32, 10.0.0.10/32",
        },
        signing_key_path=Path("/x"),
    ).kubernetes
    assert dns.dns_namespace == "dns" and dns.dns_namespace_labels == {"rexec.dev/dns": "true"}
    assert dns.dns_pod_labels == {"app": "coredns", "tier": "dns"}
    assert dns.dns_cidrs == ("169.254.20.10/32", "10.0.0.10/32")
    assert parsed.idle_timeout == 3600 and parsed.activity_url == "tcp://rexec-broker:5559"
    # The local backend ignores REXEC_K8S_*, even broken ones.
    local = SpawnerSettings.from_env({"REXEC_K8S_PROFILES": "{"}, signing_key_path=Path("/x"))
    assert local.kubernetes == KubernetesSettings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REXEC_K8S_PROFILE": "huge"}, "not defined"),
        ({"REXEC_K8S_CPU_LIMIT": "lots"}, "not a Kubernetes quantity"),
        ({"REXEC_K8S_CPU_REQUEST": "2"}, "default profile .*cpu_request 2 is more than"),
        (
            {"REXEC_K8S_PROFILES": '{"x": {"memory_request": "2Gi"}}'},
            r"REXEC_K8S_PROFILES\['x'\]: memory_request 2Gi is more than memory_limit 1Gi",
        ),
        ({"REXEC_K8S_EPHEMERAL_STORAGE_LIMIT": "4Gi"}, "is less than the worker's volumes"),
        ({"REXEC_K8S_TMP_VOLUME_SIZE": "two"}, "REXEC_K8S_TMP_VOLUME_SIZE 'two' is not a size"),
        ({"REXEC_K8S_POD_SECURITY_VERSION": "1.30"}, "'latest' or a Kubernetes minor version"),
        ({"REXEC_K8S_PROFILES": "[1]"}, "JSON object"),
        ({"REXEC_K8S_PROFILES": '{"x": {"gpu": "1"}}'}, "keys among"),
        ({"REXEC_K8S_RELEASE": "Prod!"}, "REXEC_K8S_RELEASE"),
        ({"REXEC_K8S_NAMESPACE_PREFIX": "9" * 30}, "REXEC_K8S_NAMESPACE_PREFIX"),
        ({"REXEC_K8S_IMAGE_PULL_POLICY": "Sometimes"}, "IfNotPresent"),
        ({"REXEC_K8S_RUN_AS_USER": "0"}, "non-root"),
        ({"REXEC_K8S_BROKER_NAMESPACE": "rexec"}, "or neither"),
        ({"REXEC_K8S_BROKER_POD_LABELS": "novalue"}, "key=value"),
        ({"REXEC_K8S_DNS_NAMESPACE": "Kube_System"}, "REXEC_K8S_DNS_NAMESPACE"),
        ({"REXEC_K8S_DNS_POD_LABELS": "k8s-app"}, "REXEC_K8S_DNS_POD_LABELS part"),
        ({"REXEC_K8S_DNS_POD_LABELS": "k8s-app=kube dns"}, "is not a Kubernetes label"),
        ({"REXEC_K8S_DNS_NAMESPACE_LABELS": "a/b/c=1"}, "REXEC_K8S_DNS_NAMESPACE_LABELS"),
        ({"REXEC_K8S_DNS_CIDRS": "10.0.0.10"}, "REXEC_K8S_DNS_CIDRS"),
    ],
)
def test_bad_kubernetes_settings_say_what_to_fix(env, message):
    with pytest.raises(ConfigError, match=message):
        SpawnerSettings.from_env(
            {"REXEC_SPAWNER_BACKEND": "kubernetes", **env}, signing_key_path=Path("/x")
        )


def test_broker_port_needs_a_tcp_url():
    assert broker_port("tcp://broker.rexec.svc:5560") == 5560
    for url in ("ipc:///tmp/x", "tcp://host", "tcp://host:port"):
        with pytest.raises(ConfigError, match="tcp://host:port"):
            broker_port(url)


def test_pick_idle_never_picks_a_busy_worker():
    def row(worker: str, inflight: int, idle: float) -> WorkerActivity:
        return WorkerActivity("u", worker, inflight, 0.0, idle)

    rows = [row("idle", 0, 100), row("fresh", 0, 5), row("busy", 2, 0.0)]
    assert [r.worker for r in pick_idle(rows, 60)] == ["idle"]


def test_unset_command_line_options_leave_the_environment_alone():
    parsed = SpawnerSettings.from_env(
        {"REXEC_SPAWNER_BACKEND": "kubernetes", "REXEC_K8S_RELEASE": "prod"},
        backend=None,
        port=None,
        signing_key_path=Path("/x"),
    )
    assert parsed.backend == "kubernetes" and parsed.kubernetes.release == "prod"
