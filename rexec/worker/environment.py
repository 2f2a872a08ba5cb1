"""Worker environments: virtual environments layered on the worker's base, keyed by id.

An environment lives in ``<root>/<env id>/`` (root: ``$REXEC_ENV_ROOT``, default
``$REXEC_HOME/envs``). It is a venv whose site-packages holds a ``.pth`` file adding every
site-packages directory of the worker's base interpreter *after* its own, so packages installed
into the environment take precedence while everything of the base (rexec itself, editable
installs) stays importable — which ``--system-site-packages`` alone would not give when the
worker itself runs in a venv.

Building: ``venv`` into ``<root>/<id>.partial-<random>``, then ``<venv>/bin/python -m pip
install ... -- <requirements>`` run with an argument list (never a shell), its output streamed
line by line; on success the directory is renamed into place and marked complete. On failure
the partial directory is removed and nothing changes. A lock file serializes builds of the
same id, so two workers never build one environment twice.

Switching: the worker re-checks the requirements itself (it never trusts the caller's id),
replies, and replaces its process with the environment's interpreter running the same worker
command (``os.execv``); the new process registers again. The namespace is lost.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import json
import logging
import os
import secrets
import select
import shutil
import site
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rexec import protocol as p
from rexec.errors import RexecError
from rexec.profile import rexec_home
from rexec.requirements import (
    BASE_ENVIRONMENT,
    ParsedRequirements,
    RequirementsError,
    RequirementsPolicy,
    environment_id,
    parse_requirements,
)

log = logging.getLogger("rexec.worker.environment")

ENV_ROOT_ENV = "REXEC_ENV_ROOT"
ENV_ID_ENV = "REXEC_ENV_ID"
ENV_REQUIREMENTS_ENV = "REXEC_ENV_REQUIREMENTS"
BASE_PYTHON_ENV = "REXEC_ENV_BASE_PYTHON"
BASE_SITE_ENV = "REXEC_ENV_BASE_SITE"
# Set just before exec'ing into an environment: a process that finds itself asked to enter the
# environment it was exec'ed for, yet is not in it, must not exec again (no loops).
ENTERED_ENV = "REXEC_ENV_ENTERED"
BUILD_TIMEOUT_ENV = "REXEC_ENV_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT = 1800.0
LOCK_TIMEOUT = 3600.0
MARKER = "rexec-env.json"
PTH_NAME = "_rexec_base.pth"
ERROR_LINES = 15


# Why the environment configured at start-up is not the one this worker runs, if it is not.
_startup_error: list[str] = []
_switching = threading.Lock()
SEND_GRACE = 0.2
SEND_TIMEOUT = 2.0


class BuildFailed(RexecError):
    """The installer failed or timed out; the message carries pip's own error lines. Clients
    receive it as ``rexec.client.environment.EnvironmentBuildError``."""


@dataclass(frozen=True)
class Target:
    """Where a switch leads: the environment id and the interpreter to run."""

    env_id: str
    python: str
    requirements: ParsedRequirements
    status: str  # "active" (nothing to do), "cached", "built" or "base"


def python_minor() -> str:
    return "{}.{}".format(*sys.version_info[:2])


def env_root() -> Path:
    configured = os.environ.get(ENV_ROOT_ENV)
    return Path(configured).expanduser() if configured else rexec_home() / "envs"


def remember_base() -> None:
    """Record the base interpreter and its site directories, once, for later environments."""
    if os.environ.get(BASE_PYTHON_ENV):
        return
    os.environ[BASE_PYTHON_ENV] = sys.executable
    os.environ[BASE_SITE_ENV] = json.dumps(_site_dirs())


def _site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and os.path.isdir(user):
        dirs.append(user)
    return [d for d in dirs if os.path.isdir(d)]


def base_python() -> str:
    return os.environ.get(BASE_PYTHON_ENV) or sys.executable


def base_site_dirs() -> list[str]:
    try:
        dirs = json.loads(os.environ.get(BASE_SITE_ENV) or "null")
    except ValueError:
        dirs = None
    if isinstance(dirs, list) and all(isinstance(d, str) for d in dirs):
        return dirs
    return _site_dirs()


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def current_env_id() -> str:
    """The id of the environment this process runs in, or ``"base"``."""
    prefix = Path(sys.prefix)
    if prefix.parent.resolve() == env_root().resolve() and is_complete(prefix):
        return prefix.name
    return BASE_ENVIRONMENT


def describe() -> dict[str, str]:
    """What the worker reports about its environment at registration."""
    info = {"env_id": current_env_id()}
    if _startup_error:
        error = _startup_error[0]
        # The broker refuses a worker whose info holds longer texts; the log has all of it.
        if len(error) > p.MAX_INFO_TEXT:
            error = error[: p.MAX_INFO_TEXT - 20] + " ... (see the log)"
        info["env_error"] = error
    return info


def resolve(lines: list[str], policy: RequirementsPolicy | None = None) -> Target:
    """Check ``lines`` again and say where they lead. Raises ``RequirementsError``."""
    parsed = parse_requirements(lines, policy or RequirementsPolicy.from_env())
    env_id = environment_id(parsed, python_minor())
    if env_id == current_env_id():
        return Target(env_id, sys.executable, parsed, "active")
    if env_id == BASE_ENVIRONMENT:
        return Target(env_id, base_python(), parsed, "base")
    path = env_root() / env_id
    status = "cached" if is_complete(path) else "built"
    return Target(env_id, str(path / "bin" / "python"), parsed, status)


# -- building -------------------------------------------------------------------------------


@contextlib.contextmanager
def _build_lock(root: Path, env_id: str, timeout: float) -> Any:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(root / f"{env_id}.lock", "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildFailed(
                        f"another worker has been building environment {env_id} for over "
                        f"{timeout:.0f} s; try again later"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _site_packages(prefix: Path) -> Path:
    return prefix / "lib" / f"python{python_minor()}" / "site-packages"


def _base_has_pip() -> bool:
    import importlib.util

    return importlib.util.find_spec("pip") is not None


def _layer_on_base(prefix: Path) -> None:
    """The ``.pth`` that appends the base's site directories after the environment's own."""
    lines = [f"import site; site.addsitedir({d!r})" for d in base_site_dirs()]
    (_site_packages(prefix) / PTH_NAME).write_text("\n".join(lines) + "\n")


def _fix_scripts(partial: Path, final: Path) -> None:
    """Point the shebangs of installed scripts at the final location instead of the partial."""
    old, new = str(partial).encode(), str(final).encode()
    for script in (partial / "bin").iterdir():
        if not script.is_file() or script.is_symlink():
            continue
        with script.open("rb") as handle:
            head = handle.read(2)
        if head != b"#!":
            continue
        data = script.read_bytes()
        if old in data:
            script.write_bytes(data.replace(old, new))


def build(
    env_id: str,
    requirements: ParsedRequirements,
    write: Callable[[str], None],
    timeout: float | None = None,
) -> Path:
    """Build environment ``env_id`` (or find it built); returns its directory.

    ``write`` receives the installer's output as it comes. Raises ``BuildFailed``
    with pip's own error lines when the installation fails; nothing is left behind then.
    """
    root = env_root()
    final = root / env_id
    limit = timeout or float(os.environ.get(BUILD_TIMEOUT_ENV) or DEFAULT_BUILD_TIMEOUT)
    with _build_lock(root, env_id, LOCK_TIMEOUT):
        if is_complete(final):
            return final
        # Leftovers of builds that crashed (we hold the lock, so nobody else is building it).
        for stale in [final, *root.glob(f"{env_id}.partial-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        partial = root / f"{env_id}.partial-{secrets.token_hex(4)}"
        try:
            started = time.monotonic()
            write(f"creating environment {env_id} (Python {python_minor()})\n")
            # The current interpreter's venv module builds on the real base interpreter even when
            # this process runs in another environment (it uses sys._base_executable).
            venv.EnvBuilder(with_pip=not _base_has_pip(), symlinks=True).create(partial)
            _layer_on_base(partial)
            _run_pip(partial, requirements, write, started + limit)
            _fix_scripts(partial, final)
            marker = {
                "env_id": env_id,
                "requirements": requirements.lines(),
                "python": python_minor(),
                "created": time.time(),
                "seconds": round(time.monotonic() - started, 3),
            }
            (partial / MARKER).write_text(json.dumps(marker, indent=1))
            os.rename(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return final


def _lines(process: subprocess.Popen[bytes], deadline: float) -> Iterator[str]:
    """The process's output lines as they come. Waits in short slices, so an interrupt of this
    thread (a cancelled request) and the deadline take effect even while pip prints nothing."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    waiter = select.poll()
    waiter.register(fd, select.POLLIN | select.POLLHUP)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    while True:
        if time.monotonic() > deadline:
            raise BuildFailed(
                f"pip did not finish in time (limit: {BUILD_TIMEOUT_ENV}); the environment was "
                "not changed"
            )
        if not waiter.poll(200):
            continue
        data = os.read(fd, 65536)
        if not data:
            if pending:
                yield pending
            return
        pending += decoder.decode(data)
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line + "\n"


def _run_pip(
    prefix: Path, requirements: ParsedRequirements, write: Callable[[str], None], deadline: float
) -> None:
    command = [
        str(prefix / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        *requirements.installer_arguments(),
    ]
    write("pip install " + " ".join(requirements.lines()) + "\n")
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "PIP_NO_INPUT": "1"}
    for name in (ENV_ID_ENV, ENV_REQUIREMENTS_ENV, ENTERED_ENV, "PYTHONHOME"):
        env.pop(name, None)
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )  # in the worker's process group, so stopping the worker's group stops pip too
    assert process.stdout is not None
    errors: list[str] = []
    try:
        for line in _lines(process, deadline):
            write(line)
            if line.startswith("ERROR:") or errors:
                errors.append(line.rstrip())
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    finally:
        process.stdout.close()
    if code != 0:
        shown = "\n".join(errors[-ERROR_LINES:]) or f"pip exited with code {code}"
        raise BuildFailed(
            f"pip could not install {', '.join(requirements.lines())}:\n{shown}\n"
            "The worker keeps running in its previous environment; nothing was lost"
        )


# -- switching ------------------------------------------------------------------------------


def exec_worker(target: Target, fds: Sequence[tuple[int, int]] = ()) -> None:
    """Replace this process with ``target``'s interpreter running the same worker command.

    ``fds`` are ``(saved, original)`` descriptor pairs to restore first (the worker points its
    stdout and stderr at capture pipes that the new process must not inherit).
    """
    if target.env_id == BASE_ENVIRONMENT:
        os.environ.pop(ENV_ID_ENV, None)
        os.environ.pop(ENV_REQUIREMENTS_ENV, None)
    else:
        os.environ[ENV_ID_ENV] = target.env_id
        os.environ[ENV_REQUIREMENTS_ENV] = json.dumps(target.requirements.lines())
    os.environ[ENTERED_ENV] = target.env_id
    for saved, original in fds:
        os.dup2(saved, original)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    argv = [target.python, *sys.orig_argv[1:]]
    log.info("restarting into environment %s (%s)", target.env_id, target.python)
    os.execv(target.python, argv)


def wait_sent(drained: Callable[[], bool]) -> None:
    """Give queued messages (the switch's reply) time to leave before the process is replaced."""
    deadline = time.monotonic() + SEND_TIMEOUT
    while not drained() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(SEND_GRACE)


def enter_configured_environment(status: Callable[[str, dict[str, Any]], None]) -> None:
    """At worker start: enter the environment ``$REXEC_ENV_ID`` names, building it if needed.

    Does not return when it exec's into the environment. When the environment cannot be
    entered, the worker serves from where it is and reports why (``env_error``).
    """
    error = _enter(status)
    if error:
        log.error("%s", error)
        _startup_error[:] = [error]


def _enter(status: Callable[[str, dict[str, Any]], None]) -> str | None:
    remember_base()
    wanted = os.environ.get(ENV_ID_ENV)
    if not wanted:
        return None
    try:
        lines = json.loads(os.environ.get(ENV_REQUIREMENTS_ENV) or "[]")
        if not isinstance(lines, list):
            raise ValueError("not a list")
        target = resolve([str(line) for line in lines])
    except (ValueError, RequirementsError) as exc:
        return f"the configured environment is invalid ({exc}); serving the base environment"
    if target.env_id != wanted:
        log.warning(
            "environment id %s was configured but the requirements give %s here (another "
            "Python version?); using %s",
            wanted,
            target.env_id,
            target.env_id,
        )
    if target.status == "active":
        return None
    if os.environ.get(ENTERED_ENV) == target.env_id:
        return f"environment {target.env_id} could not be entered; serving the base environment"
    if target.status == "built":
        status("building", {"env_id": target.env_id})
        log.info("building environment %s before registering", target.env_id)
        try:
            build(target.env_id, target.requirements, _log_lines)
        except (BuildFailed, OSError) as exc:
            return f"environment {target.env_id} could not be built: {exc}"
    exec_worker(target)
    return None  # pragma: no cover - exec does not return


def status_writer(path: Path | None) -> Callable[[str, dict[str, Any]], None]:
    """Reports start-up states in the worker's status file (the format the worker uses)."""

    def write(state: str, extra: dict[str, Any]) -> None:
        if path is None:
            return
        data = {**extra, "state": state, "pid": os.getpid(), "updated": time.time()}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    return write


def _log_lines(text: str) -> None:
    for line in text.splitlines():
        log.info("pip: %s", line)


def switch_reply(request_id: str, target: Target, seconds: float, restart: bool) -> list[Any]:
    content = {
        "env_id": target.env_id,
        "status": target.status,
        "requirements": target.requirements.lines(),
        "python": python_minor(),
        "seconds": round(seconds, 3),
        "restart": restart,
    }
    return p.make_reply(request_id, p.STATUS_OK, [p.make_json_frame(content)])


def handle_request(ctx: Any, payload: list[Any], restart: Callable[[Target], None]) -> None:
    """The ``environment`` operation: one switch at a time per worker."""
    if not _switching.acquire(blocking=False):
        message = "another environment switch is in progress on this worker; wait for it to end"
        ctx.finish(p.make_error_reply(ctx.request_id, p.E_ENVIRONMENT, message))
        return
    try:
        _handle(ctx, payload, restart)
    finally:
        _switching.release()


def _handle(ctx: Any, payload: list[Any], restart: Callable[[Target], None]) -> None:
    """Check, build or find, reply, then ``restart``."""
    started = time.monotonic()
    try:
        spec = p.parse_json_frame(payload[0]) if payload else {}
        lines = spec.get("requirements") if isinstance(spec, dict) else None
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise ValueError("the request needs {'requirements': [lines]}")
        target = resolve(lines)
    except (ValueError, RexecError) as exc:
        ctx.finish(p.make_error_reply(ctx.request_id, p.E_ENVIRONMENT, str(exc)))
        return
    if target.status == "active":
        ctx.write_stream("stdout", f"environment {target.env_id} is already active\n")
        ctx.finish(switch_reply(ctx.request_id, target, time.monotonic() - started, False))
        return
    if target.status == "built":
        try:
            with ctx.activate():
                build(target.env_id, target.requirements, lambda t: ctx.write_stream("stdout", t))
        except KeyboardInterrupt:
            ctx.finish(p.make_reply(ctx.request_id, p.STATUS_CANCELLED))
            return
        except (BuildFailed, OSError) as exc:
            ctx.finish(p.make_error_reply(ctx.request_id, p.E_ENVIRONMENT, str(exc)))
            return
    else:
        ctx.write_stream("stdout", f"using the existing environment {target.env_id}\n")
    ctx.finish(switch_reply(ctx.request_id, target, time.monotonic() - started, True))
    restart(target)
