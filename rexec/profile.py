"""Where things live on disk, and how a client finds its stack.

A *connection profile* tells a client where the spawner and the broker are and which token to
use. ``rexec up`` writes one for the local stack; clients read it, and environment variables
override each field:

==========================  ===============================================================
``REXEC_PROFILE``           path of the profile file (default ``$REXEC_HOME/profile.json``)
``REXEC_SPAWNER_URL``       base URL of the spawner, e.g. ``http://127.0.0.1:8750``
``REXEC_TOKEN``             Bearer token
``REXEC_BROKER_URL``        broker frontend, e.g. ``tcp://broker.example.org:30001``
``REXEC_BROKER_PUBLIC_KEY`` the broker's CurveZMQ public key (Z85), turns encryption on
``REXEC_WORKER``            worker name (default ``default``)
``REXEC_HOME``              data directory (default ``~/.local/share/rexec``)
==========================  ===============================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rexec.credentials import write_secret_file
from rexec.errors import ConfigError

DEFAULT_WORKER = "default"
NO_STACK_MESSAGE = (
    "no Rexec stack found: run `rexec up` (local stack) or set REXEC_SPAWNER_URL and REXEC_TOKEN"
)


def rexec_home() -> Path:
    configured = os.environ.get("REXEC_HOME")
    if configured:
        return Path(configured).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "rexec"


def profile_path() -> Path:
    configured = os.environ.get("REXEC_PROFILE")
    return Path(configured).expanduser() if configured else rexec_home() / "profile.json"


@dataclass(frozen=True)
class Profile:
    """How to reach one Rexec stack as one user."""

    spawner_url: str | None = None
    token: str | None = None
    broker_url: str | None = None
    broker_public_key: str | None = None
    worker: str = DEFAULT_WORKER
    source: str = "defaults"

    def with_overrides(self, **fields: Any) -> Profile:
        given = {key: value for key, value in fields.items() if value is not None}
        return replace(self, **given) if given else self

    def require_token(self) -> str:
        if not self.token:
            raise ConfigError(
                "no token configured: run `rexec up`, set REXEC_TOKEN, or pass token=..."
            )
        return self.token

    def describe(self) -> str:
        where = self.spawner_url or self.broker_url or "nowhere"
        return f"{where} (from {self.source})"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return data

    def __repr__(self) -> str:
        token = "***" if self.token else None
        return (
            f"Profile(spawner_url={self.spawner_url!r}, broker_url={self.broker_url!r}, "
            f"token={token}, worker={self.worker!r}, source={self.source!r})"
        )


_FIELDS = ("spawner_url", "token", "broker_url", "broker_public_key", "worker")
_ENV = {
    "spawner_url": "REXEC_SPAWNER_URL",
    "token": "REXEC_TOKEN",
    "broker_url": "REXEC_BROKER_URL",
    "broker_public_key": "REXEC_BROKER_PUBLIC_KEY",
    "worker": "REXEC_WORKER",
}


def read_profile_file(path: Path) -> Profile | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the connection profile {path}: {exc}; rerun `rexec up`"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"connection profile {path} is not a JSON object; rerun `rexec up`")
    fields = {key: data[key] for key in _FIELDS if data.get(key) is not None}
    return Profile(source=str(path), **fields)


def load_profile(**overrides: Any) -> Profile:
    """The profile file, then environment variables, then explicit ``overrides``.

    Raises ``ConfigError`` when nothing says where a stack is.
    """
    profile = read_profile_file(profile_path()) or Profile()
    from_env = {key: os.environ[var] for key, var in _ENV.items() if os.environ.get(var)}
    if from_env:
        source = (
            "environment" if profile.source == "defaults" else f"{profile.source} + environment"
        )
        profile = replace(profile, source=source, **from_env)
    profile = profile.with_overrides(**overrides)
    if not (profile.spawner_url or profile.broker_url):
        raise ConfigError(NO_STACK_MESSAGE)
    return profile


def write_profile(profile: Profile, path: Path | None = None) -> Path:
    """Write ``profile`` (it holds a token) readable by its owner only."""
    target = path or profile_path()
    write_secret_file(target, json.dumps(profile.to_json(), indent=2).encode() + b"\n")
    return target
