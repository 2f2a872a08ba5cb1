"""The ``rexec`` command.

Examples::

    rexec up                                 # local stack on 127.0.0.1 until Ctrl-C
    rexec up -- python examples/quickstart.py  # start, run a command against it, stop
    rexec up --detach && rexec status && rexec down
    rexec broker --help | rexec spawner --help | rexec worker --help
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from rexec.errors import RexecError


def _cmd_up(args: argparse.Namespace) -> int:
    from rexec.localstack import StackOptions, start_stack

    options = StackOptions(
        host=args.host,
        broker_port=args.broker_port,
        backend_port=args.backend_port,
        spawner_port=args.spawner_port,
        curve=args.curve,
    )
    stack = start_stack(options)
    profile = stack.profile
    quiet = bool(args.command)
    if not quiet:
        print(
            f"Rexec local stack is up.\n"
            f"  spawner  {profile.spawner_url}\n"
            f"  broker   {profile.broker_url}"
            f"{' (CurveZMQ on)' if profile.broker_public_key else ''}\n"
            f"  profile  {profile.source} (clients find the stack through it)\n"
            f"  logs     {stack.directory / 'logs'}",
            flush=True,
        )
    if args.detach:
        print("Running in the background; stop it with `rexec down`.")
        return 0
    command = [part for part in args.command if part != "--"]
    if command:
        try:
            return subprocess.call(command, env={**os.environ, "REXEC_PROFILE": profile.source})
        finally:
            stack.stop()
    stopped = threading.Event()
    # Explicit handlers: a SIGINT disposition inherited as "ignored" (background jobs) must not
    # leave the stack unstoppable.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    print("Press Ctrl-C to stop.", flush=True)
    while not stopped.wait(1.0):
        for name, proc in stack.processes.items():
            if proc.poll() is not None:
                print(f"rexec: the {name} exited (code {proc.returncode}); stopping")
                stopped.set()
    print("Stopping the local stack...", flush=True)
    stack.stop()
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from rexec.localstack import stop_recorded_stack

    if stop_recorded_stack():
        print("Local stack stopped.")
        return 0
    print("No detached local stack is recorded.", file=sys.stderr)
    return 1


def _cmd_status(args: argparse.Namespace) -> int:
    from rexec.client.session import Session
    from rexec.client.spawner import SpawnerClient
    from rexec.profile import load_profile

    profile = load_profile()
    print(f"profile: {profile.describe()}")
    if profile.spawner_url:
        spawner = SpawnerClient(profile.spawner_url, profile.require_token(), timeout=args.timeout)
        try:
            broker = spawner.broker()
            worker = spawner.get_worker(profile.worker)
        finally:
            spawner.close()
        print(f"spawner: ok ({profile.spawner_url})")
        print(f"worker:  {worker['state'] if worker else 'not started'}")
        profile = profile.with_overrides(broker_url=profile.broker_url or broker.get("url"))
    session = Session(profile, spawn=False, connect_timeout=args.timeout)
    try:
        session.connect()
        print(f"broker:  ok ({profile.broker_url}), authenticated as {session.user}")
    finally:
        session.close()
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rexec.transport import create_curve_keypair

    public, secret_path = create_curve_keypair(Path(args.directory))
    print(f"secret key: {secret_path} (keep it private)\npublic key: {public}")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from rexec.auth import create_static_token

    token = create_static_token(args.file, args.user, tuple(args.group or ()))
    print(token)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rexec",
        description="Remote execution for Jupyter.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    up = commands.add_parser("up", help="start the local stack (broker + spawner) on 127.0.0.1")
    up.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    up.add_argument("--broker-port", type=int, default=5559, help="client port, 0 = any free one")
    up.add_argument("--backend-port", type=int, default=5560, help="worker port, 0 = any free one")
    up.add_argument("--spawner-port", type=int, default=8750, help="HTTP port, 0 = any free one")
    up.add_argument("--curve", action="store_true", help="encrypt both broker ports (CurveZMQ)")
    up.add_argument("--detach", action="store_true", help="leave the stack running and return")
    up.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after `--`: a command to run against the stack, which stops when it exits",
    )
    up.set_defaults(run=_cmd_up)

    down = commands.add_parser("down", help="stop a stack started with `rexec up --detach`")
    down.set_defaults(run=_cmd_down)

    status = commands.add_parser(
        "status", help="check the stack named by the profile; exit 0 only if it answers"
    )
    status.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    status.set_defaults(run=_cmd_status)

    keys = commands.add_parser("keys", help="generate a CurveZMQ keypair for the broker")
    keys.add_argument("directory", help="where to write broker.key (0600) and broker.pub")
    keys.set_defaults(run=_cmd_keys)

    token = commands.add_parser("token", help="add a user to a static token file; print the token")
    token.add_argument("--file", required=True, help="token file (created 0600, hashes only)")
    token.add_argument("--user", required=True, help="user id the token authenticates")
    token.add_argument("--group", action="append", help="group of the user (repeatable)")
    token.set_defaults(run=_cmd_token)

    for name, text in (
        ("broker", "run the broker"),
        ("spawner", "run the spawner"),
        ("worker", "run a worker"),
    ):
        sub = commands.add_parser(name, help=text, add_help=False)
        sub.add_argument("args", nargs=argparse.REMAINDER)
        sub.set_defaults(run=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("broker", "spawner", "worker"):
        return _component(argv[0], argv[1:])
    args = make_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except RexecError as exc:
        print(f"rexec {args.cmd}: {exc}", file=sys.stderr)
        return 1


def _component(name: str, argv: list[str]) -> int:
    prog = f"rexec {name}"
    try:
        if name == "broker":
            from rexec_broker.command import main as run_broker

            return run_broker(argv, prog=prog)
        if name == "spawner":
            from rexec_spawner.cli import main as run_spawner

            return run_spawner(argv, prog=prog)
        from rexec.worker.command import main as run_worker

        return run_worker(argv)
    except RexecError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
