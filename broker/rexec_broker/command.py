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
    parser.add_argument(
        "--speak-within",
        type=float,
        default=_env_number("REXEC_BROKER_SPEAK_WITHIN", defaults.speak_within),
        help="seconds a new connection has to send its first message (its handshake included) "
        "before it is closed [REXEC_BROKER_SPEAK_WITHIN, %(default)s]",
    )
    parser.add_argument(
        "--greet-within",
        type=float,
        default=_env_number("REXEC_BROKER_GREET_WITHIN", defaults.greet_within),
        help="seconds a new connection has to authenticate before it is closed "
        "[REXEC_BROKER_GREET_WITHIN, %(default)s]",
    )
    parser.add_argument(
        "--max-pending-per-address",
        type=int,
        default=int(_env_number("REXEC_BROKER_MAX_PENDING_PER_ADDRESS", defaults.per_address)),
        help="unauthenticated connections one IP address may hold, per port "
        "[REXEC_BROKER_MAX_PENDING_PER_ADDRESS, %(default)s]",
    )
    parser.add_argument(
        "--max-pending",
        type=int,
        default=int(_env_number("REXEC_BROKER_MAX_PENDING", defaults.total)),
        help="unauthenticated connections in all, per port [REXEC_BROKER_MAX_PENDING, %(default)s]",
    )
    parser.add_argument(
        "--connection-rate",
        type=float,
        default=_env_number("REXEC_BROKER_CONNECTION_RATE", defaults.rate),
        help="new connections per second one IP address may open after a burst of "
        "--connection-burst [REXEC_BROKER_CONNECTION_RATE, %(default)s]",
    )
    parser.add_argument(
        "--connection-burst",
        type=int,
        default=int(_env_number("REXEC_BROKER_CONNECTION_BURST", defaults.burst)),
        help="new connections one IP address may open at once [REXEC_BROKER_CONNECTION_BURST, "
        "%(default)s]",
    )
    parser.add_argument(
        "--total-connection-rate",
        type=float,
        default=_env_number("REXEC_BROKER_TOTAL_CONNECTION_RATE", defaults.total_rate),
        help="new connections per second from all addresses together, after a burst of "
        "--total-connection-burst [REXEC_BROKER_TOTAL_CONNECTION_RATE, %(default)s]",
    )
    parser.add_argument(
        "--total-connection-burst",
        type=int,
        default=int(_env_number("REXEC_BROKER_TOTAL_CONNECTION_BURST", defaults.total_burst)),
        help="new connections from all addresses at once [REXEC_BROKER_TOTAL_CONNECTION_BURST, "
        "%(default)s]",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    add_auth_arguments(parser)
    return parser


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    """The connection limits the parsed command line asks for."""
    return ConnectionLimits(
        per_address=args.max_pending_per_address,
        total=args.max_pending,
        rate=args.connection_rate,
        burst=args.connection_burst,
        total_rate=args.total_connection_rate,
        total_burst=args.total_connection_burst,
        speak_within=args.speak_within,
        greet_within=args.greet_within,
    )


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
