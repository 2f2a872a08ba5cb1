"""Command line: ``python -m rexec_spawner`` and ``rexec spawner`` run the spawner under uvicorn.

Options override the environment variables documented in :mod:`rexec_spawner.config` and
:mod:`rexec.auth`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rexec.auth_options import add_auth_arguments, auth_settings_from_args
from rexec.errors import ConfigError
from rexec.logs import configure_logging
from rexec_spawner.config import BACKENDS, SpawnerSettings


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the Rexec spawner: an HTTP API that creates, reports and deletes "
        "per-user workers. Every option falls back to the environment variable named in its help.",
    )
    serve = parser.add_argument_group("server")
    serve.add_argument("--host", help="address to listen on [REXEC_SPAWNER_HOST, 127.0.0.1]")
    serve.add_argument("--port", type=int, help="port to listen on [REXEC_SPAWNER_PORT, 8750]")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="logging level (default info)",
    )
    workers = parser.add_argument_group("workers")
    workers.add_argument(
        "--backend", choices=BACKENDS, help="where workers run [REXEC_SPAWNER_BACKEND, local]"
    )
    workers.add_argument(
        "--data-dir",
        type=Path,
        help="worker directories, logs, credentials [REXEC_SPAWNER_DATA_DIR, $REXEC_HOME/stack]",
    )
    workers.add_argument(
        "--signing-key",
        type=Path,
        dest="signing_key_path",
        help="worker-credential signing key shared with the broker "
        "[REXEC_SIGNING_KEY_FILE, <data dir>/signing.key]",
    )
    workers.add_argument(
        "--local-users",
        type=_user_list,
        help="comma-separated users the local backend serves; several users are NOT isolated "
        "from each other, as every worker runs as this OS user [REXEC_LOCAL_USERS; default: the "
        "first user who creates a worker, and nobody else]",
    )
    workers.add_argument(
        "--worker-ready-timeout",
        type=float,
        help="seconds a new worker has to reach the broker [REXEC_WORKER_READY_TIMEOUT, 60]",
    )
    broker = parser.add_argument_group("broker")
    broker.add_argument(
        "--broker-url",
        help="broker frontend given to clients [REXEC_BROKER_URL, tcp://127.0.0.1:5559]",
    )
    broker.add_argument(
        "--broker-backend-url",
        help="broker backend given to workers [REXEC_BROKER_BACKEND_URL, tcp://127.0.0.1:5560]",
    )
    broker.add_argument(
        "--broker-public-key",
        help="the broker's CurveZMQ public key, Z85 [REXEC_BROKER_PUBLIC_KEY]",
    )
    add_auth_arguments(parser)
    return parser


def _user_list(value: str) -> tuple[str, ...]:
    users = tuple(user.strip() for user in value.split(",") if user.strip())
    if not users:
        raise argparse.ArgumentTypeError("name at least one user, e.g. --local-users alice")
    return users


def settings_from_args(args: argparse.Namespace) -> SpawnerSettings:
    """Environment first, then the options that were given."""
    fields: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "host",
            "port",
            "backend",
            "data_dir",
            "signing_key_path",
            "worker_ready_timeout",
            "broker_url",
            "broker_backend_url",
            "broker_public_key",
            "local_users",
        )
    }
    return SpawnerSettings.from_env(auth=auth_settings_from_args(args), **fields)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the spawner until interrupted; returns the process exit code."""
    parser = make_parser(prog)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    # Imported late so `--help` stays fast and works without the server dependencies.
    try:
        import uvicorn

        from rexec_spawner.app import create_app
    except ImportError as exc:
        print(
            f"{parser.prog}: {exc}; install the spawner extra: pip install 'rexec[spawner]'",
            file=sys.stderr,
        )
        return 2
    try:
        settings = settings_from_args(args)
        app = create_app(settings)
    except ConfigError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)
    return 0
