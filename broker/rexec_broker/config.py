"""Broker settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rexec.auth import AuthSettings
from rexec.errors import ConfigError
from rexec.protocol import MAX_INFLIGHT_PER_CLIENT
from rexec.transport import HIGH_WATER_MARK, is_loopback_url
from rexec_broker.connections import ConnectionLimits
from rexec_broker.outbound import FlowLimits

DEFAULT_FRONTEND = "tcp://127.0.0.1:5559"
DEFAULT_BACKEND = "tcp://127.0.0.1:5560"
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class BrokerSettings:
    """Everything the broker needs to run.

    ``curve_secret_key_path`` switches CurveZMQ encryption on for both ports. Binding a port
    beyond loopback without it is refused unless ``allow_plaintext`` says the operator knows the
    network is private.
    """

    signing_key_path: Path
    auth: AuthSettings
    frontend: str = DEFAULT_FRONTEND
    backend: str = DEFAULT_BACKEND
    curve_secret_key_path: Path | None = None
    allow_plaintext: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    validation_threads: int = 8
    queue_depth: int = HIGH_WATER_MARK
    max_in_flight: int = MAX_INFLIGHT_PER_CLIENT
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    flow_limits: FlowLimits = field(default_factory=FlowLimits)

    def check(self) -> None:
        self.connection_limits.check()
        self.flow_limits.check()
        if self.max_message_bytes < 64 * 1024:
            raise ConfigError("max message size must be at least 64 KiB")
        if self.max_in_flight < 1:
            raise ConfigError("--max-in-flight must be at least 1")
        if self.curve_secret_key_path is None and not self.allow_plaintext:
            for url in (self.frontend, self.backend):
                if not is_loopback_url(url):
                    raise ConfigError(
                        f"{url} is reachable beyond this machine but CurveZMQ is off: pass "
                        "--curve-secret-key FILE (generate one with `rexec keys`), or "
                        "--allow-plaintext if the network is private"
                    )
