"""Command line: ``rexec broker`` and ``python -m rexec_broker`` run the broker."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rexec.auth import make_validator
from rexec.auth_options import add_auth_arguments, auth_settings_from_args
from rexec.credentials import load_key
from rexec.errors import ConfigError
from rexec.logs import configure_logging
from rexec.protocol import MAX_INFLIGHT_PER_CLIENT
from rexec.transport import raise_open_file_limit
from rexec_broker.config import (
    DEFAULT_BACKEND,
    DEFAULT_FRONTEND,
    DEFAULT_MAX_MESSAGE_BYTES,
    BrokerSettings,
)
from rexec_broker.connections import ConnectionLimits

# Bounds on connections that have not authenticated yet: (option, ConnectionLimits field, type,
# environment variable, help).
CONNECTION_OPTIONS: tuple[tuple[str, str, type[int] | type[float], str, str], ...] = (
    (
        "--speak-within",
        "speak_within",
        float,
        "REXEC_BROKER_SPEAK_WITHIN",
        "seconds a new connection has to send its first message (its handshake included)",
    ),
    (
        "--greet-within",
        "greet_within",
        float,
        "REXEC_BROKER_GREET_WITHIN",
        "seconds a new connection has to authenticate before it is closed",
    ),
    (
        "--max-pending-per-address",
        "per_address",
        int,
        "REXEC_BROKER_MAX_PENDING_PER_ADDRESS",
        "unauthenticated connections one IP address may hold, per port",
    ),
    (
        "--max-pending",
        "total",
        int,
        "REXEC_BROKER_MAX_PENDING",
        "unauthenticated connections in all, per port",
    ),
    (
        "--connection-rate",
        "rate",
        float,
        "REXEC_BROKER_CONNECTION_RATE",
        "new connections per second one IP address may open after a burst of --connection-burst",
    ),
    (
        "--connection-burst",
        "burst",
        int,
        "REXEC_BROKER_CONNECTION_BURST",
        "new connections one IP address may open at once",
    ),
    (
        "--total-connection-rate",
        "total_rate",
        float,
        "REXEC_BROKER_TOTAL_CONNECTION_RATE",
        "new connections per second from all addresses together, after a burst of "
        "--total-connection-burst",
    ),
    (
        "--total-connection-burst",
        "total_burst",
        int,
        "REXEC_BROKER_TOTAL_CONNECTION_BURST",
        "new connections from all addresses at once",
    ),
)


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise SystemExit(f"{name} must be a number, not {text!r}") from None


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the Rexec broker: routes requests from authenticated clients to their "
        "own user's worker. Options fall back to the environment variable named in their help.",
    )
    parser.add_argument(
        "--frontend",
        default=os.environ.get("REXEC_BROKER_FRONTEND", DEFAULT_FRONTEND),
        help=f"client-facing bind address [REXEC_BROKER_FRONTEND, {DEFAULT_FRONTEND}]",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("REXEC_BROKER_BACKEND", DEFAULT_BACKEND),
        help=f"worker-facing bind address [REXEC_BROKER_BACKEND, {DEFAULT_BACKEND}]",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=os.environ.get("REXEC_SIGNING_KEY_FILE"),
        help="key the spawner signs worker credentials with [REXEC_SIGNING_KEY_FILE]",
    )
    parser.add_argument(
        "--curve-secret-key",
        type=Path,
        default=os.environ.get("REXEC_CURVE_SECRET_KEY_FILE"),
        help="CurveZMQ secret key file; turns encryption on [REXEC_CURVE_SECRET_KEY_FILE]",
    )
    parser.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="allow non-loopback binds without CurveZMQ (private networks only)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(os.environ.get("REXEC_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)),
        help="largest message accepted [REXEC_MAX_MESSAGE_BYTES, %(default)s]",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=int(os.environ.get("REXEC_MAX_IN_FLIGHT", MAX_INFLIGHT_PER_CLIENT)),
        help="requests one client connection may have in flight; clients keep more waiting "
        "on their side [REXEC_MAX_IN_FLIGHT, %(default)s]",
    )
    defaults = ConnectionLimits()
    for flag, field, kind, variable, help_text in CONNECTION_OPTIONS:
        parser.add_argument(
            flag,
            dest=field,
            type=kind,
            default=kind(_env_number(variable, getattr(defaults, field))),
            help=f"{help_text} [{variable}, %(default)s]",
        )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    add_auth_arguments(parser)
    return parser


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    """The connection limits the parsed command line asks for."""
    return ConnectionLimits(**{field: getattr(args, field) for _, field, *_ in CONNECTION_OPTIONS})


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from rexec_broker.server import Broker

    parser = make_parser(prog)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.signing_key is None:
            raise ConfigError("--signing-key is required (the spawner's worker signing key)")
        settings = BrokerSettings(
            signing_key_path=args.signing_key,
            auth=auth_settings_from_args(args),
            frontend=args.frontend,
            backend=args.backend,
            curve_secret_key_path=args.curve_secret_key,
            allow_plaintext=args.allow_plaintext,
            max_message_bytes=args.max_message_bytes,
            max_in_flight=args.max_in_flight,
            connection_limits=connection_limits(args),
        )
        broker = Broker(
            settings, make_validator(settings.auth), load_key(settings.signing_key_path)
        )
    except ConfigError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    raise_open_file_limit()  # every connection is a file descriptor
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    signal.signal(signal.SIGINT, lambda *_: broker.stop())
    broker.serve_forever()
    return 0
