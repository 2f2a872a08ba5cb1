"""One frozen description of a worker, from which every manifest is built.

The manifest builders in ``objects`` take only a :class:`WorkerSpec` (or its
:class:`NetworkSpec`), never settings or loose arguments, so a test can state a whole pod in one
expression and compare dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from rexec.errors import ConfigError
from rexec_spawner.backends.base import EnvironmentSpec
from rexec_spawner.backends.kubernetes.naming import make_namespace_name
from rexec_spawner.backends.kubernetes.quantity import parse_quantity
from rexec_spawner.config import PROFILE_KEYS, ResourceProfile, SpawnerSettings

DNS_PORT = 53
HTTPS_PORT = 443
# Set on every namespace by Kubernetes itself from 1.21 on; before that only if someone did.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class NetworkSpec:
    """Where a user's workers may connect to: the broker's backend port, the cluster DNS pods
    (and ``dns_cidrs``) on port 53, package indexes on HTTPS."""

    broker_port: int
    broker_namespace: str | None = None
    broker_pod_labels: tuple[tuple[str, str], ...] = ()
    package_index_cidrs: tuple[str, ...] = ()
    dns_namespace_labels: tuple[tuple[str, str], ...] = ((NAMESPACE_NAME_LABEL, "kube-system"),)
    dns_pod_labels: tuple[tuple[str, str], ...] = (("k8s-app", "kube-dns"),)
    dns_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerSpec:
    user: str
    worker: str
    namespace: str
    release: str
    instance: str
    image: str
    image_pull_policy: str
    command: tuple[str, ...]
    broker_backend_url: str
    broker_public_key: str | None
    profile_name: str
    profile: ResourceProfile
    run_as_user: int
    env_volume_size: str
    network: NetworkSpec
    tmp_volume_size: str = "2Gi"
    home_volume_size: str = "2Gi"
    node_selector: tuple[tuple[str, str], ...] = ()
    environment: EnvironmentSpec | None = None
    # The operator's requirements policy, as the worker reads it when it re-checks a request.
    policy_variables: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class QuotaSpec:
    """What one user's namespace may hold, whatever created the pods in it.

    ``max_workers`` pods (0: no ResourceQuota), each at most ``largest``: per resource, the
    largest request and limit of any profile, so a pod of every profile fits.
    """

    max_workers: int
    largest: ResourceProfile


def largest_profile(profiles: Mapping[str, ResourceProfile]) -> ResourceProfile:
    """Per key, the largest value among ``profiles``, spelled as that profile spells it.

    Each profile's requests are at most its limits, so the largest request is at most the
    largest limit and the result is a valid profile too.
    """
    values = {
        key: max((getattr(p, key) for p in profiles.values()), key=parse_quantity)
        for key in PROFILE_KEYS
    }
    return ResourceProfile(**values)


def make_quota_spec(settings: SpawnerSettings) -> QuotaSpec:
    return QuotaSpec(
        max_workers=settings.max_workers_per_user,
        largest=largest_profile(settings.kubernetes.profiles),
    )


def broker_port(url: str) -> int:
    """The TCP port of a ``tcp://host:port`` URL (the NetworkPolicy allows exactly that one)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or port is None:
        raise ConfigError(
            f"the Kubernetes backend needs REXEC_BROKER_BACKEND_URL as tcp://host:port, not {url!r}"
        )
    return port


def make_network_spec(settings: SpawnerSettings) -> NetworkSpec:
    k8s = settings.kubernetes
    return NetworkSpec(
        broker_port=broker_port(settings.broker_backend_url),
        broker_namespace=k8s.broker_namespace,
        broker_pod_labels=tuple(sorted(k8s.broker_pod_labels.items())),
        package_index_cidrs=k8s.package_index_cidrs,
        dns_namespace_labels=tuple(
            sorted((k8s.dns_namespace_labels or {NAMESPACE_NAME_LABEL: k8s.dns_namespace}).items())
        ),
        dns_pod_labels=tuple(sorted(k8s.dns_pod_labels.items())),
        dns_cidrs=k8s.dns_cidrs,
    )


def make_worker_spec(
    settings: SpawnerSettings,
    user: str,
    worker: str,
    instance: str,
    environment: EnvironmentSpec | None = None,
) -> WorkerSpec:
    k8s = settings.kubernetes
    return WorkerSpec(
        user=user,
        worker=worker,
        namespace=make_namespace_name(k8s.namespace_prefix, user),
        release=k8s.release,
        instance=instance,
        image=k8s.worker_image,
        image_pull_policy=k8s.image_pull_policy,
        command=k8s.worker_command,
        broker_backend_url=settings.broker_backend_url,
        broker_public_key=settings.broker_public_key,
        profile_name=k8s.profile,
        profile=k8s.worker_profile,
        run_as_user=k8s.run_as_user,
        env_volume_size=k8s.env_volume_size,
        network=make_network_spec(settings),
        tmp_volume_size=k8s.tmp_volume_size,
        home_volume_size=k8s.home_volume_size,
        node_selector=tuple(sorted(k8s.node_selector.items())),
        environment=environment,
        policy_variables=tuple(sorted(settings.requirements_policy.worker_variables().items())),
    )
