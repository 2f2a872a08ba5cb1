"""Where workers run. ``make_backend`` picks the implementation the settings name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rexec_spawner.backends.base import (
    EnvironmentSpec,
    ProgressEvent,
    WorkerBackend,
    WorkerRecord,
    WorkerState,
)

if TYPE_CHECKING:
    from rexec_spawner.config import SpawnerSettings

__all__ = [
    "EnvironmentSpec",
    "ProgressEvent",
    "WorkerBackend",
    "WorkerRecord",
    "WorkerState",
    "make_backend",
]


def make_backend(settings: SpawnerSettings, signing_key: bytes) -> WorkerBackend:
    """The backend ``settings.backend`` names (settings were validated on construction)."""
    # Imported here so that choosing one backend never imports another's dependencies.
    if settings.backend == "kubernetes":
        try:
            from rexec_spawner.backends.kubernetes.backend import KubernetesBackend
        except ImportError as exc:
            from rexec.errors import ConfigError

            raise ConfigError(
                f"the kubernetes backend needs the Kubernetes client ({exc}); install "
                "rexec[kubernetes]"
            ) from None
        return KubernetesBackend.from_settings(settings, signing_key)
    from rexec_spawner.backends.local import LocalBackend

    return LocalBackend.from_settings(settings, signing_key)
