"""Spawner settings.

:meth:`SpawnerSettings.from_env` reads these variables (command-line options override them):

================================  ==========================================================
``REXEC_SPAWNER_HOST``            address to listen on (default ``127.0.0.1``)
``REXEC_SPAWNER_PORT``            port to listen on (default ``8750``)
``REXEC_SIGNING_KEY_FILE``        worker-credential signing key shared with the broker
                                  (default ``<data dir>/signing.key``)
``REXEC_BROKER_URL``              broker frontend given to clients
                                  (default ``tcp://127.0.0.1:5559``)
``REXEC_BROKER_BACKEND_URL``      broker backend given to workers
                                  (default ``tcp://127.0.0.1:5560``)
``REXEC_BROKER_PUBLIC_KEY``       the broker's CurveZMQ public key (Z85); turns encryption on
``REXEC_SPAWNER_DATA_DIR``        worker directories, logs, credentials
                                  (default ``$REXEC_HOME/stack``)
``REXEC_SPAWNER_BACKEND``         where workers run: ``local`` (default) or ``kubernetes``
``REXEC_WORKER_READY_TIMEOUT``    seconds a new worker has to reach the broker (default 60)
``REXEC_WORKER_COMMAND``          command that starts a local worker, split like a shell would
                                  but never run by one (default ``<python> -m rexec worker``)
``REXEC_BROKER_INTERNAL_URL``     the broker frontend as the spawner reaches it, for worker
                                  activity queries (default: ``REXEC_BROKER_URL``)
``REXEC_IDLE_TIMEOUT``            seconds a worker may stay idle (no request in flight, none
                                  for that long) before it is deleted; ``0`` = never (default)
``REXEC_CULL_INTERVAL``           seconds between idle checks (default 60)
``REXEC_WORKER_CREDENTIAL_TTL``  seconds a worker credential is valid; renewed at half
                                  of it while the worker runs (default 43200, 12 h; with
                                  the Kubernetes backend at least 300, as a kubelet takes
                                  up to a minute to update the mounted credential)
``REXEC_WORKER_HUNG_AFTER``       seconds without a sign of life from a registered worker
                                  (see ``backends.lifecycle``) before it is replaced as hung
                                  (default 30; ``0`` = never)
``REXEC_MAX_WORKERS_PER_USER``   active workers one user may have at once (default 8;
                                  ``0`` = no limit)
``REXEC_SPAWNER_MAX_BODY_BYTES``  the largest request body the API reads, in bytes (default
                                  1048576 = 1 MiB); larger ones get 413
``REXEC_LOCAL_USERS``             comma-separated users the local backend serves; several users
                                  are NOT isolated from each other (their workers run as one OS
                                  user). Empty (default): the first user who creates a worker,
                                  recorded in ``<data dir>/local-owner.json``, and nobody else
``REXEC_ENV_ALLOW_OPTIONS``       ``1`` lets requirements files carry installer options such as
                                  ``--index-url`` (default off: option lines are refused)
``REXEC_ENV_ALLOW_URLS``          ``1`` lets requirements name direct URLs and VCS references
                                  (default off)
================================  ==========================================================

Kubernetes backend (``REXEC_SPAWNER_BACKEND=kubernetes``), read into :class:`KubernetesSettings`:

=======================================  ========================================================
``REXEC_K8S_KUBECONFIG``                 kubeconfig file; unset: the pod's service account when
                                         running in a cluster, else
                                         ``$KUBECONFIG``/``~/.kube/config``
``REXEC_K8S_RELEASE``                    names this spawner's objects (label
                                         ``rexec.dev/release``), so two releases in one cluster
                                         never adopt each other's (default ``rexec``)
``REXEC_K8S_NAMESPACE_PREFIX``           prefix of the per-user namespaces (default ``rexec-u-``)
``REXEC_K8S_WORKER_IMAGE``               worker image (default ``rexec-worker:latest``)
``REXEC_K8S_IMAGE_PULL_POLICY``          ``IfNotPresent`` (default), ``Always`` or ``Never``
``REXEC_K8S_WORKER_COMMAND``             worker container command, split like a shell would
                                         (default ``python -m rexec worker``)
``REXEC_K8S_RUN_AS_USER``                uid (and gid) of the worker container (default 1000)
``REXEC_K8S_CPU_REQUEST``                CPU request of the ``default`` profile (default
                                         ``100m``)
``REXEC_K8S_CPU_LIMIT``                  CPU limit of the ``default`` profile (default ``1``)
``REXEC_K8S_MEMORY_REQUEST``             memory request of the ``default`` profile (``256Mi``)
``REXEC_K8S_MEMORY_LIMIT``               memory limit of the ``default`` profile (``1Gi``)
``REXEC_K8S_EPHEMERAL_STORAGE_REQUEST``  local disk request of the ``default`` profile (``1Gi``)
``REXEC_K8S_EPHEMERAL_STORAGE_LIMIT``    local disk limit of the ``default`` profile (``10Gi``):
                                         the worker's emptyDirs count against it, so it must be
                                         at least the sum of the three volume sizes below; the
                                         kubelet evicts a pod that writes more
``REXEC_K8S_PROFILES``                   JSON: more named profiles, e.g. ``{"large":
                                         {"cpu_request": "2", "cpu_limit": "4", "memory_request":
                                         "8Gi", "memory_limit": "8Gi"}}`` (missing keys: the
                                         default's; keys also
                                         ``ephemeral_storage_request``/``_limit``). In every
                                         profile each request must not exceed its limit
``REXEC_K8S_PROFILE``                    the profile workers get (default ``default``)
``REXEC_K8S_NODE_SELECTOR``              JSON object: nodeSelector of worker pods (default none)
``REXEC_K8S_BROKER_NAMESPACE``           namespace of the broker pods; with the next one, narrows
                                         worker egress to those pods (default: any destination on
                                         the broker backend port)
``REXEC_K8S_BROKER_POD_LABELS``          labels of the broker pods, ``key=value,key=value``
``REXEC_K8S_PACKAGE_INDEX_CIDRS``        comma-separated CIDRs workers may reach on TCP 443 to
                                         install environments (e.g. ``0.0.0.0/0``); empty
                                         (default): no egress besides the broker and DNS
``REXEC_K8S_DNS_NAMESPACE``              namespace of the cluster DNS pods, the only DNS servers
                                         workers may ask (default ``kube-system``), selected by
                                         its ``kubernetes.io/metadata.name`` label, which
                                         Kubernetes sets by itself only from 1.21
``REXEC_K8S_DNS_NAMESPACE_LABELS``       ``key=value,...`` labels that select the DNS namespace
                                         instead (for clusters before 1.21: label it yourself)
``REXEC_K8S_DNS_POD_LABELS``             labels of the cluster DNS pods (default
                                         ``k8s-app=kube-dns``, which CoreDNS and kube-dns both
                                         carry)
``REXEC_K8S_DNS_CIDRS``                  comma-separated CIDRs also allowed on port 53, for DNS
                                         that is not a pod (e.g. NodeLocal DNSCache
                                         ``169.254.20.10/32``)
``REXEC_K8S_ENV_VOLUME_SIZE``            size limit of the emptyDir holding environments
                                         (``4Gi``)
``REXEC_K8S_TMP_VOLUME_SIZE``            size limit of the worker's ``/tmp`` emptyDir (``2Gi``)
``REXEC_K8S_HOME_VOLUME_SIZE``           size limit of the worker's ``$HOME`` emptyDir, which
                                         holds pip's cache (``2Gi``)
``REXEC_K8S_POD_SECURITY_VERSION``       version of the Pod Security Standards the per-user
                                         namespaces enforce at level ``restricted``
                                         (``pod-security.kubernetes.io/*`` labels): ``latest``
                                         (default) or e.g. ``v1.30``; enforced from Kubernetes
                                         1.23 on
=======================================  ========================================================

Identity settings (``AUTH_API_URL``, ``REXEC_TOKEN_FILE``, ...) are read by
:meth:`rexec.auth.AuthSettings.from_env`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from rexec.auth import AuthSettings
from rexec.errors import ConfigError
from rexec.profile import rexec_home
from rexec.requirements import ALLOW_OPTIONS_ENV, ALLOW_URLS_ENV, RequirementsPolicy, env_flag
from rexec_spawner.backends.kubernetes.quantity import format_quantity, parse_quantity

BACKENDS = ("local", "kubernetes")
DEFAULT_BROKER_URL = "tcp://127.0.0.1:5559"
DEFAULT_BROKER_BACKEND_URL = "tcp://127.0.0.1:5560"
SIGNING_KEY_NAME = "signing.key"
# The largest legitimate body is a 64 KiB requirements file; JSON escaping can grow it a few times.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def default_data_dir() -> Path:
    return rexec_home() / "stack"


def default_worker_command() -> tuple[str, ...]:
    return (sys.executable, "-m", "rexec", "worker")


PULL_POLICIES = ("IfNotPresent", "Always", "Never")
PROFILE_KEYS = (
    "cpu_request",
    "cpu_limit",
    "memory_request",
    "memory_limit",
    "ephemeral_storage_request",
    "ephemeral_storage_limit",
)
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_CIDR = re.compile(r"[0-9a-fA-F.:]+/[0-9]{1,3}")
_POD_SECURITY_VERSION = re.compile(r"latest|v1\.[0-9]{1,3}")


@dataclass(frozen=True)
class ResourceProfile:
    """CPU, memory and local-disk (ephemeral-storage) requests and limits of a worker pod, as
    Kubernetes quantities."""

    cpu_request: str = "100m"
    cpu_limit: str = "1"
    memory_request: str = "256Mi"
    memory_limit: str = "1Gi"
    ephemeral_storage_request: str = "1Gi"
    ephemeral_storage_limit: str = "10Gi"

    def __post_init__(self) -> None:
        for key in PROFILE_KEYS:
            value = getattr(self, key)
            if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
                raise ConfigError(
                    f"{key} {value!r} is not a Kubernetes quantity; write e.g. '500m', '2', '1Gi'"
                )
        # The API server refuses a pod whose request exceeds its limit; say so at start-up.
        for resource in ("cpu", "memory", "ephemeral_storage"):
            request = getattr(self, f"{resource}_request")
            limit = getattr(self, f"{resource}_limit")
            if parse_quantity(request) > parse_quantity(limit):
                raise ConfigError(
                    f"{resource}_request {request} is more than {resource}_limit {limit}; "
                    "raise the limit or lower the request"
                )

    def resources(self) -> dict[str, dict[str, str]]:
        """The container ``resources`` of a pod with this profile."""
        return {
            "requests": {
                "cpu": self.cpu_request,
                "memory": self.memory_request,
                "ephemeral-storage": self.ephemeral_storage_request,
            },
            "limits": {
                "cpu": self.cpu_limit,
                "memory": self.memory_limit,
                "ephemeral-storage": self.ephemeral_storage_limit,
            },
        }


@dataclass(frozen=True, kw_only=True)
class KubernetesSettings:
    """Settings of the Kubernetes backend (``REXEC_K8S_*``, see the module docstring)."""

    kubeconfig: Path | None = None
    release: str = "rexec"
    namespace_prefix: str = "rexec-u-"
    worker_image: str = "rexec-worker:latest"
    image_pull_policy: str = "IfNotPresent"
    worker_command: tuple[str, ...] = ("python", "-m", "rexec", "worker")
    run_as_user: int = 1000
    profiles: Mapping[str, ResourceProfile] = field(
        default_factory=lambda: {"default": ResourceProfile()}
    )
    profile: str = "default"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    broker_namespace: str | None = None
    broker_pod_labels: Mapping[str, str] = field(default_factory=dict)
    package_index_cidrs: tuple[str, ...] = ()
    env_volume_size: str = "4Gi"
    tmp_volume_size: str = "2Gi"
    home_volume_size: str = "2Gi"
    pod_security_version: str = "latest"
    dns_namespace: str = "kube-system"
    dns_namespace_labels: Mapping[str, str] = field(default_factory=dict)
    dns_pod_labels: Mapping[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    dns_cidrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "worker_command", tuple(self.worker_command))
        object.__setattr__(self, "package_index_cidrs", tuple(self.package_index_cidrs))
        object.__setattr__(self, "dns_cidrs", tuple(self.dns_cidrs))
        if self.kubeconfig is not None:
            object.__setattr__(self, "kubeconfig", Path(self.kubeconfig).expanduser())
        if not _DNS_LABEL.fullmatch(self.release) or len(self.release) > 40:
            raise ConfigError(
                f"REXEC_K8S_RELEASE {self.release!r} must be 1-40 lowercase letters, digits, '-'"
            )
        prefix = self.namespace_prefix
        if not re.fullmatch(r"[a-z][-a-z0-9]{0,19}", prefix):
            raise ConfigError(
                f"REXEC_K8S_NAMESPACE_PREFIX {prefix!r} must start with a letter and hold at "
                "most 20 lowercase letters, digits and '-' (e.g. 'rexec-u-')"
            )
        if self.image_pull_policy not in PULL_POLICIES:
            raise ConfigError(
                f"REXEC_K8S_IMAGE_PULL_POLICY {self.image_pull_policy!r}: use one of "
                + ", ".join(PULL_POLICIES)
            )
        if not self.worker_image.strip():
            raise ConfigError("REXEC_K8S_WORKER_IMAGE is empty; name the worker image")
        if not self.worker_command:
            raise ConfigError("REXEC_K8S_WORKER_COMMAND is empty; unset it for the default")
        if self.run_as_user <= 0:
            raise ConfigError("REXEC_K8S_RUN_AS_USER must be a non-root uid (> 0)")
        if self.profile not in self.profiles:
            raise ConfigError(
                f"REXEC_K8S_PROFILE {self.profile!r} is not defined; known profiles: "
                + ", ".join(sorted(self.profiles))
            )
        if bool(self.broker_namespace) != bool(self.broker_pod_labels):
            raise ConfigError(
                "set both REXEC_K8S_BROKER_NAMESPACE and REXEC_K8S_BROKER_POD_LABELS, or neither"
            )
        volumes = {
            "REXEC_K8S_ENV_VOLUME_SIZE": self.env_volume_size,
            "REXEC_K8S_TMP_VOLUME_SIZE": self.tmp_volume_size,
            "REXEC_K8S_HOME_VOLUME_SIZE": self.home_volume_size,
        }
        for name, size in volumes.items():
            if not isinstance(size, str) or not _QUANTITY.fullmatch(size):
                raise ConfigError(f"{name} {size!r} is not a size; write e.g. '2Gi'")
        # emptyDirs count against the pod's ephemeral-storage limit: a smaller limit would get
        # the pod evicted before a volume reaches its own size limit.
        volume_total = sum((parse_quantity(size) for size in volumes.values()), Decimal(0))
        for profile_name, profile in self.profiles.items():
            if parse_quantity(profile.ephemeral_storage_limit) < volume_total:
                raise ConfigError(
                    f"profile {profile_name!r}: ephemeral_storage_limit "
                    f"{profile.ephemeral_storage_limit} is less than the worker's volumes "
                    f"({' + '.join(volumes.values())} = {format_quantity(volume_total)}, "
                    + ", ".join(volumes)
                    + "); raise the limit or make the volumes smaller"
                )
        if not _POD_SECURITY_VERSION.fullmatch(self.pod_security_version):
            raise ConfigError(
                f"REXEC_K8S_POD_SECURITY_VERSION {self.pod_security_version!r}: use 'latest' or a "
                "Kubernetes minor version such as 'v1.30'"
            )
        if not _DNS_LABEL.fullmatch(self.dns_namespace) or len(self.dns_namespace) > 63:
            raise ConfigError(
                f"REXEC_K8S_DNS_NAMESPACE {self.dns_namespace!r} is not a namespace name; name "
                "the namespace of the cluster DNS pods (usually kube-system)"
            )
        if not self.dns_pod_labels:
            raise ConfigError(
                "REXEC_K8S_DNS_POD_LABELS is empty; give the labels of the cluster DNS pods "
                "(`kubectl -n kube-system get pods --show-labels`), e.g. k8s-app=kube-dns"
            )
        for name, labels in (
            ("REXEC_K8S_DNS_NAMESPACE_LABELS", self.dns_namespace_labels),
            ("REXEC_K8S_DNS_POD_LABELS", self.dns_pod_labels),
        ):
            for key, value in labels.items():
                if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                    raise ConfigError(
                        f"{name}: {key}={value} is not a Kubernetes label; keys are "
                        "[prefix/]name, values at most 63 letters, digits, '-', '_', '.'"
                    )
        for cidr in self.dns_cidrs:
            if not _CIDR.fullmatch(cidr):
                raise ConfigError(f"REXEC_K8S_DNS_CIDRS: {cidr!r} is not a CIDR like 10.0.0.10/32")

    @property
    def worker_profile(self) -> ResourceProfile:
        return self.profiles[self.profile]

    @classmethod
    def from_env(cls, source: Mapping[str, str]) -> KubernetesSettings:
        def text(name: str) -> str | None:
            value = source.get(name, "").strip()
            return value or None

        try:
            default = ResourceProfile(
                **{
                    key: value
                    for key in PROFILE_KEYS
                    if (value := text(f"REXEC_K8S_{key.upper()}")) is not None
                }
            )
        except ConfigError as exc:
            raise ConfigError(f"the default profile (REXEC_K8S_<KEY>): {exc}") from None
        profiles = {"default": default}
        for name, given in _json_object(text("REXEC_K8S_PROFILES"), "REXEC_K8S_PROFILES").items():
            if not isinstance(given, dict) or set(given) - set(PROFILE_KEYS):
                raise ConfigError(
                    f"REXEC_K8S_PROFILES[{name!r}] must be an object with keys among "
                    + ", ".join(PROFILE_KEYS)
                )
            try:
                profiles[name] = ResourceProfile(**{**default.__dict__, **given})
            except ConfigError as exc:
                raise ConfigError(f"REXEC_K8S_PROFILES[{name!r}]: {exc}") from None
        node_selector = _json_object(text("REXEC_K8S_NODE_SELECTOR"), "REXEC_K8S_NODE_SELECTOR")
        values: dict[str, Any] = {
            "kubeconfig": _path(text("REXEC_K8S_KUBECONFIG")),
            "release": text("REXEC_K8S_RELEASE"),
            "namespace_prefix": text("REXEC_K8S_NAMESPACE_PREFIX"),
            "worker_image": text("REXEC_K8S_WORKER_IMAGE"),
            "image_pull_policy": text("REXEC_K8S_IMAGE_PULL_POLICY"),
            "worker_command": _command(
                text("REXEC_K8S_WORKER_COMMAND"), "REXEC_K8S_WORKER_COMMAND"
            ),
            "run_as_user": _number(text("REXEC_K8S_RUN_AS_USER"), "REXEC_K8S_RUN_AS_USER", int),
            "profiles": profiles,
            "profile": text("REXEC_K8S_PROFILE"),
            "node_selector": {str(k): str(v) for k, v in node_selector.items()},
            "broker_namespace": text("REXEC_K8S_BROKER_NAMESPACE"),
            "broker_pod_labels": _labels(text("REXEC_K8S_BROKER_POD_LABELS")),
            "package_index_cidrs": _csv(text("REXEC_K8S_PACKAGE_INDEX_CIDRS")),
            "env_volume_size": text("REXEC_K8S_ENV_VOLUME_SIZE"),
            "tmp_volume_size": text("REXEC_K8S_TMP_VOLUME_SIZE"),
            "home_volume_size": text("REXEC_K8S_HOME_VOLUME_SIZE"),
            "pod_security_version": text("REXEC_K8S_POD_SECURITY_VERSION"),
            "dns_namespace": text("REXEC_K8S_DNS_NAMESPACE"),
            "dns_namespace_labels": _labels(
                text("REXEC_K8S_DNS_NAMESPACE_LABELS"), "REXEC_K8S_DNS_NAMESPACE_LABELS"
            ),
            "dns_pod_labels": _labels(text("REXEC_K8S_DNS_POD_LABELS"), "REXEC_K8S_DNS_POD_LABELS"),
            "dns_cidrs": _csv(text("REXEC_K8S_DNS_CIDRS")),
        }
        return cls(**{key: value for key, value in values.items() if value is not None})


@dataclass(frozen=True, kw_only=True)
class SpawnerSettings:
    """Everything the spawner needs; build one directly or with :meth:`from_env`."""

    host: str = "127.0.0.1"
    port: int = 8750
    auth: AuthSettings
    signing_key_path: Path
    broker_url: str = DEFAULT_BROKER_URL
    broker_backend_url: str = DEFAULT_BROKER_BACKEND_URL
    broker_public_key: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    backend: str = "local"
    worker_ready_timeout: float = 60.0
    worker_command: tuple[str, ...] = field(default_factory=default_worker_command)
    broker_internal_url: str | None = None
    idle_timeout: float = 0.0
    cull_interval: float = 60.0
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    env_allow_options: bool = False
    env_allow_urls: bool = False
    max_workers_per_user: int = 8
    worker_credential_ttl: float = 12 * 3600.0
    worker_hung_after: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Who the local backend serves; empty: its first user only (see LocalBackend).
    local_users: tuple[str, ...] = ()

    @property
    def requirements_policy(self) -> RequirementsPolicy:
        """What requirements files may contain beyond PEP 508 requirements."""
        return RequirementsPolicy(self.env_allow_options, self.env_allow_urls)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signing_key_path", Path(self.signing_key_path).expanduser())
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "worker_command", tuple(self.worker_command))
        object.__setattr__(self, "local_users", tuple(dict.fromkeys(self.local_users)))
        if not all(isinstance(user, str) and user.strip() for user in self.local_users):
            raise ConfigError(
                "REXEC_LOCAL_USERS holds an empty user name; list user ids, e.g. alice"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown spawner backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}"
            )
        if not 0 <= int(self.port) <= 65535:
            raise ConfigError(f"spawner port {self.port} is out of range; use 1-65535")
        if self.worker_ready_timeout <= 0:
            raise ConfigError("the worker ready timeout must be a positive number of seconds")
        if not self.worker_command:
            raise ConfigError("the worker command is empty; set REXEC_WORKER_COMMAND or unset it")
        if self.idle_timeout < 0:
            raise ConfigError("REXEC_IDLE_TIMEOUT must be 0 (never cull) or a number of seconds")
        if self.max_workers_per_user < 0:
            raise ConfigError("REXEC_MAX_WORKERS_PER_USER must be 0 (no limit) or a count")
        if self.worker_credential_ttl < 10:
            raise ConfigError("REXEC_WORKER_CREDENTIAL_TTL must be at least 10 seconds")
        if self.worker_hung_after < 0:
            raise ConfigError("REXEC_WORKER_HUNG_AFTER must be 0 (never) or a number of seconds")
        if self.max_body_bytes <= 0:
            raise ConfigError(
                "REXEC_SPAWNER_MAX_BODY_BYTES must be a positive number of bytes "
                f"(default {DEFAULT_MAX_BODY_BYTES})"
            )
        if self.cull_interval <= 0:
            raise ConfigError("REXEC_CULL_INTERVAL must be a positive number of seconds")
        for url, name in (
            (self.broker_url, "broker URL"),
            (self.broker_backend_url, "broker backend URL"),
            (self.activity_url, "broker internal URL"),
        ):
            if not url.startswith(("tcp://", "ipc://")):
                raise ConfigError(f"{name} {url!r} must look like tcp://host:port")

    @property
    def activity_url(self) -> str:
        """The broker frontend address the spawner uses for its own queries."""
        return self.broker_internal_url or self.broker_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SpawnerSettings:
        """Settings from ``REXEC_*`` variables (see the module docstring); non-None overrides win.

        ``auth`` may be given as an override; otherwise it comes from ``AuthSettings.from_env``.
        """
        source = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = source.get(name, "").strip()
            return value or None

        values: dict[str, Any] = {
            "host": text("REXEC_SPAWNER_HOST"),
            "port": _number(text("REXEC_SPAWNER_PORT"), "REXEC_SPAWNER_PORT", int),
            "broker_url": text("REXEC_BROKER_URL"),
            "broker_backend_url": text("REXEC_BROKER_BACKEND_URL"),
            "broker_public_key": text("REXEC_BROKER_PUBLIC_KEY"),
            "data_dir": _path(text("REXEC_SPAWNER_DATA_DIR")),
            "signing_key_path": _path(text("REXEC_SIGNING_KEY_FILE")),
            "backend": text("REXEC_SPAWNER_BACKEND"),
            "worker_ready_timeout": _number(
                text("REXEC_WORKER_READY_TIMEOUT"), "REXEC_WORKER_READY_TIMEOUT", float
            ),
            "worker_command": _command(text("REXEC_WORKER_COMMAND")),
            "broker_internal_url": text("REXEC_BROKER_INTERNAL_URL"),
            "idle_timeout": _number(text("REXEC_IDLE_TIMEOUT"), "REXEC_IDLE_TIMEOUT", float),
            "cull_interval": _number(text("REXEC_CULL_INTERVAL"), "REXEC_CULL_INTERVAL", float),
            "env_allow_options": _flag(source, ALLOW_OPTIONS_ENV),
            "env_allow_urls": _flag(source, ALLOW_URLS_ENV),
            "max_workers_per_user": _number(
                text("REXEC_MAX_WORKERS_PER_USER"), "REXEC_MAX_WORKERS_PER_USER", int
            ),
            "worker_credential_ttl": _number(
                text("REXEC_WORKER_CREDENTIAL_TTL"), "REXEC_WORKER_CREDENTIAL_TTL", float
            ),
            "worker_hung_after": _number(
                text("REXEC_WORKER_HUNG_AFTER"), "REXEC_WORKER_HUNG_AFTER", float
            ),
            "max_body_bytes": _number(
                text("REXEC_SPAWNER_MAX_BODY_BYTES"), "REXEC_SPAWNER_MAX_BODY_BYTES", int
            ),
            "local_users": _csv(text("REXEC_LOCAL_USERS")) or None,
        }
        # Read only for the backend that uses them, so a stray REXEC_K8S_* never breaks local.
        backend = overrides.get("backend") or text("REXEC_SPAWNER_BACKEND")
        if backend == "kubernetes" and "kubernetes" not in overrides:
            values["kubernetes"] = KubernetesSettings.from_env(source)
        # None means "not given on the command line": the environment value stays.
        values.update({key: value for key, value in overrides.items() if value is not None})
        given = {key: value for key, value in values.items() if value is not None}
        if "auth" not in given:
            given["auth"] = AuthSettings.from_env(source)
        data_dir = Path(given.get("data_dir") or default_data_dir())
        given.setdefault("signing_key_path", data_dir / SIGNING_KEY_NAME)
        return cls(**given)


def _flag(source: Mapping[str, str], name: str) -> bool | None:
    if not source.get(name, "").strip():
        return None
    return env_flag(source[name])


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def _number(value: str | None, name: str, kind: type[int] | type[float]) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {value!r}") from None


def _command(value: str | None, name: str = "REXEC_WORKER_COMMAND") -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise ConfigError(f"{name} cannot be split into arguments: {exc}") from None


def _json_object(value: str | None, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f'{name} must be a JSON object, like {{"key": "value"}}')
    return parsed


def _labels(value: str | None, name: str = "REXEC_K8S_BROKER_POD_LABELS") -> dict[str, str] | None:
    if value is None:
        return None
    labels: dict[str, str] = {}
    for part in value.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{name} part {part!r} must look like key=value")
        labels[key.strip()] = val.strip()
    return labels


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())
