"""The embedded local stack behind ``rexec up``: broker + spawner (local backend) on 127.0.0.1.

``up`` creates what the stack needs under ``$REXEC_HOME/stack`` — a static token for the current
user (only its hash is stored; the token goes in the 0600 profile), the worker signing key, and
a CurveZMQ keypair when encryption is asked for — starts both services as child processes, waits
until they answer, and writes the connection profile clients find by default. The spawner's local
backend serves that user only (``--local-users``): its workers all run as this OS user, so it
could not keep other users apart.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rexec.auth import create_static_token
from rexec.credentials import create_key_file
from rexec.errors import ConfigError
from rexec.profile import Profile, profile_path, read_profile_file, rexec_home, write_profile
from rexec.transport import create_curve_keypair

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    broker_port: int = 5559
    backend_port: int = 5560
    spawner_port: int = 8750
    curve: bool = False
    user: str = field(default_factory=getpass.getuser)
    # Put before the broker's command line, to run it under a profiler (e.g. valgrind).
    broker_prefix: tuple[str, ...] = ()


@dataclass
class RunningStack:
    directory: Path
    profile: Profile
    processes: dict[str, subprocess.Popen[bytes]]

    def stop(self) -> None:
        stop_processes(list(self.processes.values()))
        (self.directory / "stack.json").unlink(missing_ok=True)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port(host: str, port: int) -> int:
    return free_port(host) if port == 0 else port


def _ensure_secrets(directory: Path, options: StackOptions) -> tuple[Path, Path, str]:
    """Token file and signing key (created once, reused); returns paths and the user's token."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = directory / "tokens.json"
    key = directory / "signing.key"
    if not key.exists():
        create_key_file(key)
    existing = read_profile_file(profile_path())
    token = existing.token if existing and tokens.exists() else None
    if token is None or not _token_known(tokens, token):
        token = create_static_token(tokens, options.user)
    return tokens, key, token


def _token_known(tokens: Path, token: str) -> bool:
    from rexec.auth import StaticTokenValidator

    try:
        StaticTokenValidator(tokens).validate(token)
    except Exception:
        return False
    return True


def start_stack(options: StackOptions, log: callable = print) -> RunningStack:  # type: ignore[valid-type]
    if not options.user.strip() or "," in options.user:
        raise ConfigError(
            f"the user name {options.user!r} cannot name the stack's only user (it is empty or "
            "holds a comma); run `rexec up` as another OS user"
        )
    directory = rexec_home() / "stack"
    tokens, key, token = _ensure_secrets(directory, options)
    host = options.host
    frontend = f"tcp://{host}:{_port(host, options.broker_port)}"
    backend = f"tcp://{host}:{_port(host, options.backend_port)}"
    spawner_port = _port(host, options.spawner_port)
    spawner_url = f"http://{host}:{spawner_port}"
    public_key = None
    broker_args = ["--frontend", frontend, "--backend", backend]
    if options.curve:
        public_key, secret_path = create_curve_keypair(directory)
        broker_args += ["--curve-secret-key", str(secret_path)]
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    common = ["--signing-key", str(key), "--token-file", str(tokens)]
    env = {key_: value for key_, value in os.environ.items() if key_ != "AUTH_API_URL"}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        processes["broker"] = _spawn(
            [*options.broker_prefix, sys.executable, "-m", "rexec_broker", *broker_args, *common],
            logs / "broker.log",
            env,
        )
        spawner_args = spawner_arguments(
            host, spawner_port, directory, frontend, backend, options.user, public_key
        )
        processes["spawner"] = _spawn(
            [sys.executable, "-m", "rexec_spawner", *spawner_args, *common],
            logs / "spawner.log",
            env,
        )
        _wait_until_up(spawner_url, token, processes, logs)
    except BaseException:
        stop_processes(list(processes.values()))
        raise
    profile = Profile(
        spawner_url=spawner_url,
        token=token,
        broker_url=frontend,
        broker_public_key=public_key,
        source=str(profile_path()),
    )
    write_profile(profile)
    state = {name: proc.pid for name, proc in processes.items()}
    (directory / "stack.json").write_text(json.dumps({"pids": state, "spawner_url": spawner_url}))
    return RunningStack(directory, profile, processes)


def spawner_arguments(
    host: str,
    port: int,
    directory: Path,
    frontend: str,
    backend: str,
    user: str,
    public_key: str | None,
) -> list[str]:
    """The spawner's options for this stack. Values that may start with "-" (a Z85 key, a user
    name) are joined to their option, so the parser cannot take them for options."""
    arguments = [
        f"--host={host}",
        f"--port={port}",
        f"--data-dir={directory}",
        f"--broker-url={frontend}",
        f"--broker-backend-url={backend}",
        f"--local-users={user}",
    ]
    if public_key:
        arguments.append(f"--broker-public-key={public_key}")
    return arguments


def _spawn(command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    try:
        return subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    finally:
        log_file.close()


def _wait_until_up(
    spawner_url: str, token: str, processes: dict[str, subprocess.Popen[bytes]], logs: Path
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        for name, proc in processes.items():
            if proc.poll() is not None:
                tail = _tail(logs / f"{name}.log")
                raise ConfigError(f"the {name} exited with code {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{spawner_url}/api/v1/whoami", headers=headers, timeout=1).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise ConfigError(
        f"the local stack did not come up within {STARTUP_TIMEOUT:.0f} s; see the logs in {logs}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM in reverse start order (spawner first: it stops its workers), then SIGKILL."""
    for proc in reversed(processes):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def stop_recorded_stack() -> bool:
    """Stop a stack started with ``rexec up --detach``; False if none is recorded."""
    record = rexec_home() / "stack" / "stack.json"
    try:
        pids = json.loads(record.read_text())["pids"]
    except (OSError, ValueError, KeyError):
        return False
    for name in ("spawner", "broker"):
        pid = pids.get(name)
        if pid:
            _terminate_pid(int(pid))
    record.unlink(missing_ok=True)
    return True


def _terminate_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
