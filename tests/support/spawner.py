"""A spawner for tests: real settings, a real static token file and signing key in a temp dir."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rexec.auth import AuthSettings, create_static_token
from rexec.credentials import create_key_file
from rexec_spawner.config import SpawnerSettings


@dataclass
class SpawnerFixture:
    settings: SpawnerSettings
    signing_key: bytes
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


def make_spawner_fixture(
    root: Path,
    users: dict[str, tuple[str, ...]] | None = None,
    auth: AuthSettings | None = None,
    **overrides: Any,
) -> SpawnerFixture:
    """Settings for a spawner under ``root``, with a static token for each of ``users``.

    ``users`` maps user name to groups (default: alice and bob, group "science"). The local
    backend serves exactly these users (``local_users``): the tests use several on purpose, to
    show that each sees only their own workers. Pass ``local_users=()`` for the default, where
    the first user who creates a worker is the only one served.
    """
    users = {"alice": ("science",), "bob": ("science",)} if users is None else users
    token_file = root / "tokens.json"
    tokens = {user: create_static_token(token_file, user, groups) for user, groups in users.items()}
    key_path = root / "signing.key"
    key = create_key_file(key_path)
    values: dict[str, Any] = {
        "auth": auth or AuthSettings(token_file=token_file),
        "signing_key_path": key_path,
        "data_dir": root / "stack",
        "broker_url": "tcp://127.0.0.1:5559",
        "broker_backend_url": "tcp://127.0.0.1:5560",
        "local_users": tuple(users),
    }
    values.update(overrides)
    return SpawnerFixture(SpawnerSettings(**values), key, tokens)
