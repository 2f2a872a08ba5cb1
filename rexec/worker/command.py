"""``rexec worker``: run a worker process connected to the broker's backend port."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from rexec.errors import ConfigError
from rexec.logs import configure_logging

CREDENTIAL_FILE_ENV = "REXEC_WORKER_CREDENTIAL_FILE"
CREDENTIAL_ENV = "REXEC_WORKER_CREDENTIAL"
PUBLIC_KEY_ENV = "REXEC_BROKER_PUBLIC_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default=os.environ.get("REXEC_BROKER_BACKEND_URL", "tcp://127.0.0.1:5560"),
        help="the broker's worker-facing address (default: %(default)s)",
    )
    parser.add_argument("--name", default="default", help="informational worker name")
    parser.add_argument("--status-file", type=Path, help="write the worker's state here as JSON")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.epilog = (
        f"The credential is read from ${CREDENTIAL_FILE_ENV} (a file) or ${CREDENTIAL_ENV}, never "
        f"from the command line. ${PUBLIC_KEY_ENV} turns CurveZMQ encryption on."
    )


def credential_file() -> Path | None:
    """Where the spawner keeps this worker's credential (it rewrites the file to renew it)."""
    path = os.environ.get(CREDENTIAL_FILE_ENV)
    return Path(path) if path else None


def read_credential() -> str:
    path = os.environ.get(CREDENTIAL_FILE_ENV)
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the worker credential {path}: {exc.strerror}") from exc
    credential = os.environ.get(CREDENTIAL_ENV, "").strip()
    if not credential:
        raise ConfigError(
            f"no worker credential: set {CREDENTIAL_FILE_ENV} to the file the spawner wrote"
        )
    return credential


def run(args: argparse.Namespace) -> int:
    from rexec.worker import environment
    from rexec.worker.runtime import Worker, WorkerSettings

    configure_logging(args.log_level)
    os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="rexec-ipython-"))
    environment.enter_configured_environment(environment.status_writer(args.status_file))
    settings = WorkerSettings(
        broker_url=args.broker,
        credential=read_credential(),
        credential_file=credential_file(),
        broker_public_key=os.environ.get(PUBLIC_KEY_ENV) or None,
        status_file=args.status_file,
        parent_pid=args.parent_pid,
    )
    return Worker(settings).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rexec worker", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
