"""The embedded local stack from the command line, used by separate client processes."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rexec.profile import read_profile_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def rexec(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rexec", *args], capture_output=True, text=True, timeout=timeout
    )


def run_client(code: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python process: a user's script or notebook."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


@pytest.fixture
def local_stack(isolated_home: Path) -> Iterator[Path]:
    started = rexec(
        "up", "--detach", "--broker-port", "0", "--backend-port", "0", "--spawner-port", "0"
    )
    assert started.returncode == 0, started.stderr
    yield isolated_home
    rexec("down")


def test_status_follows_the_stack(local_stack):
    status = rexec("status")
    assert status.returncode == 0, status.stderr
    assert "authenticated as" in status.stdout
    assert rexec("down").returncode == 0
    stopped = rexec("status", "--timeout", "2")
    assert stopped.returncode != 0
    assert "rexec status:" in stopped.stderr


def test_profile_is_private_and_status_fails_without_a_stack():
    missing = rexec("status")
    assert missing.returncode != 0
    assert "rexec up" in missing.stderr


def test_remote_func_from_a_separate_process(local_stack):
    profile = read_profile_file(local_stack / "profile.json")
    assert profile is not None and profile.token
    assert oct((local_stack / "profile.json").stat().st_mode & 0o777) == "0o600"
    result = run_client(
        """
        import json, os, sys, time
        from rexec import remote_func

        @remote_func
        def collatz_steps(n: int) -> int:
            steps = 0
            while n != 1:
                n = n // 2 if n % 2 == 0 else 3 * n + 1
                steps += 1
            return steps

        @remote_func(timeout=60)
        def describe(a, *, b=0):
            print("working", flush=True)
            print("warning", file=sys.stderr)
            return {"pid": os.getpid(), "sum": a + b}

        @remote_func
        def fail():
            raise ZeroDivisionError("remote division")

        @remote_func
        def countdown(n):
            while n:
                yield n
                n -= 1

        @remote_func
        def nap(i):
            time.sleep(1)
            return i

        info = describe(1, b=2)
        try:
            fail()
            caught = None
        except ZeroDivisionError as exc:
            caught = str(exc)
        start = time.monotonic()
        futures = [nap.submit(i) for i in range(4)]
        naps = [f.result(timeout=60) for f in futures]
        elapsed = time.monotonic() - start
        print(json.dumps({"collatz": collatz_steps(27), "info": info, "me": os.getpid(),
                          "caught": caught, "countdown": list(countdown(3)), "naps": naps,
                          "elapsed": elapsed}))
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["collatz"] == 111
    assert report["info"]["sum"] == 3 and report["info"]["pid"] != report["me"]
    assert report["caught"] == "remote division"
    assert report["countdown"] == [3, 2, 1]
    assert report["naps"] == [0, 1, 2, 3] and report["elapsed"] < 3.5
    assert "working" in lines
    assert "warning" in result.stderr


def test_reference_client_api_works_unchanged(local_stack):
    profile = read_profile_file(local_stack / "profile.json")
    assert profile is not None
    host, port = profile.broker_url.removeprefix("tcp://").rsplit(":", 1)
    explicit = run_client(
        f"""
        from rexec.client_api import remote_func
        remote_func().set_remote_addr({host!r})
        remote_func().set_remote_port({port!r})
        remote_func().set_exec_token({profile.token!r})
        remote_func().set_api_url({profile.spawner_url + "/rexec/spawn"!r})

        @remote_func
        def my_fn():
            import platform
            return platform.node()

        print("node:", my_fn())
        """,
        REXEC_PROFILE=str(local_stack / "nowhere.json"),
    )
    assert explicit.returncode == 0, explicit.stderr
    assert "node:" in explicit.stdout
    # With no setter at all, the profile written by `rexec up` is enough.
    implicit = run_client(
        """
        from rexec.client_api import remote_func

        @remote_func
        def add(a, b):
            return a + b

        print("sum:", add(2, 3))
        """
    )
    assert implicit.returncode == 0, implicit.stderr
    assert "sum: 5" in implicit.stdout


def test_bad_token_is_an_exception_not_none(local_stack):
    result = run_client(
        """
        from rexec import remote_func
        from rexec.errors import AuthError

        @remote_func
        def f():
            return 1

        try:
            f()
        except AuthError as exc:
            print("refused:", exc)
        """,
        REXEC_TOKEN="not-a-valid-token",
    )
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout
    assert "not-a-valid-token" not in result.stdout + result.stderr


def test_dead_worker_is_replaced_on_the_next_call(local_stack):
    result = run_client(
        """
        import os, signal
        from rexec import connect
        from rexec.errors import WorkerDied

        with connect() as session:
            first = session.call(os.getpid)
            session.execute("state = 42")
            try:
                session.call(lambda: os.kill(os.getpid(), signal.SIGKILL), timeout=30)
            except WorkerDied as exc:
                print("died:", exc)
            second = session.call(os.getpid, timeout=60)
            reply = session.execute("print('state' in globals())")
            print("pids differ:", first != second)
        """,
        REXEC_QUIET="",
    )
    assert result.returncode == 0, result.stderr
    assert "died:" in result.stdout and "state is lost" in result.stdout
    assert "pids differ: True" in result.stdout
    assert "False" in result.stdout  # the new worker has a fresh namespace
    assert "starting a new one" in result.stderr or "starting worker" in result.stderr


def test_set_environment_refuses_bad_lines_before_touching_the_worker(local_stack, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy>=1.26\n--index-url http://evil.example/simple\n")
    result = run_client(
        f"""
        from rexec.client_api import remote_func
        from rexec.requirements import RequirementsError
        try:
            remote_func().set_environment({str(requirements)!r}, None)
        except RequirementsError as exc:
            print("refused:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "refused: requirements line 2" in result.stdout


def test_the_stack_serves_only_the_user_who_started_it(local_stack):
    profile = read_profile_file(local_stack / "profile.json")
    assert profile is not None and profile.spawner_url
    # Another user with a valid token for this stack is still not served by its local backend.
    made = rexec("token", "--file", str(local_stack / "stack" / "tokens.json"), "--user", "mallory")
    assert made.returncode == 0, made.stderr
    other = {"Authorization": f"Bearer {made.stdout.strip()}"}
    refused = httpx.put(f"{profile.spawner_url}/api/v1/workers/default", headers=other, timeout=10)
    assert refused.status_code == 403, refused.text
    assert f"serves only the user {getpass.getuser()!r}" in refused.json()["detail"]
    mine = {"Authorization": f"Bearer {profile.token}"}
    assert httpx.get(f"{profile.spawner_url}/api/v1/workers", headers=mine, timeout=10).is_success
