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
``REXEC_SPAWNER_BACKEND``         where workers run: ``local`` (default)
``REXEC_WORKER_READY_TIMEOUT``    seconds a new worker has to reach the broker (default 60)
``REXEC_WORKER_COMMAND``          command that starts a worker, split like a shell would but
                                  never run by one (default ``<python> -m rexec worker``)
================================  ==========================================================

Identity settings (``AUTH_API_URL``, ``REXEC_TOKEN_FILE``, ...) are read by
:meth:`rexec.auth.AuthSettings.from_env`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rexec.auth import AuthSettings
from rexec.errors import ConfigError
from rexec.profile import rexec_home

BACKENDS = ("local",)
DEFAULT_BROKER_URL = "tcp://127.0.0.1:5559"
DEFAULT_BROKER_BACKEND_URL = "tcp://127.0.0.1:5560"
SIGNING_KEY_NAME = "signing.key"


def default_data_dir() -> Path:
    return rexec_home() / "stack"


def default_worker_command() -> tuple[str, ...]:
    return (sys.executable, "-m", "rexec", "worker")


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "signing_key_path", Path(self.signing_key_path).expanduser())
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "worker_command", tuple(self.worker_command))
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
        for url, name in (
            (self.broker_url, "broker URL"),
            (self.broker_backend_url, "broker backend URL"),
        ):
            if not url.startswith(("tcp://", "ipc://")):
                raise ConfigError(f"{name} {url!r} must look like tcp://host:port")

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
        }
        values.update(overrides)
        given = {key: value for key, value in values.items() if value is not None}
        if "auth" not in given:
            given["auth"] = AuthSettings.from_env(source)
        data_dir = Path(given.get("data_dir") or default_data_dir())
        given.setdefault("signing_key_path", data_dir / SIGNING_KEY_NAME)
        return cls(**given)


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def _number(value: str | None, name: str, kind: type[int] | type[float]) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {value!r}") from None


def _command(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise ConfigError(f"REXEC_WORKER_COMMAND cannot be split into arguments: {exc}") from None
