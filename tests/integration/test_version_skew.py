"""Version skew with a real worker on another Python (pyenv's 3.12): told at connect, cells work,
functions travel as source, and what cannot travel fails with a message — never a crash or hang.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from rexec.client.outputs import CollectingOutput
from rexec.credentials import write_secret_file
from rexec.errors import RexecError
from rexec.serialization import SourceUnavailable, VersionSkewError
from tests.conftest import REPO, WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

OTHER_PYTHON = Path("/root/.pyenv/versions/3.12.1/bin/python3")
_PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# What a worker installs: the base dependencies and the worker extra, read from pyproject.toml.
WORKER_PACKAGES = [*_PROJECT["dependencies"], *_PROJECT["optional-dependencies"]["worker"]]
SCALE = 3  # a plain-data global that travels with a function shipped as source


@pytest.fixture(scope="session")
def other_python() -> Path:
    """A venv of Python 3.12 with the worker's dependencies (rexec itself comes from the repo).

    Cached under the temp directory, keyed by the package list, so reruns do not reinstall.
    """
    if not OTHER_PYTHON.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{OTHER_PYTHON} is missing; CI must test version skew with it")
        pytest.skip(f"no second Python at {OTHER_PYTHON}")
    if sys.version_info[:2] == (3, 12):
        pytest.skip("the tests run on 3.12 themselves; the skew needs another version")
    key = hashlib.sha256(" ".join(WORKER_PACKAGES).encode()).hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"rexec-test-py312-{key}"
    ready = venv / "rexec-ready"
    if not ready.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([str(OTHER_PYTHON), "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *WORKER_PACKAGES],
            check=True,
            timeout=600,
        )
        ready.write_text("ok")
    return venv / "bin" / "python"


@pytest.fixture
def skewed_worker(broker_stack, other_python: Path) -> Iterator[WorkerProcess]:
    directory = broker_stack.directory
    credential = directory / "py312.cred"
    write_secret_file(credential, broker_stack.credential("alice").encode())
    status, log = directory / "py312.json", directory / "py312.log"
    env = {
        **os.environ,
        "REXEC_WORKER_CREDENTIAL_FILE": str(credential),
        "PYTHONPATH": str(REPO),
    }
    command = [str(other_python), "-m", "rexec", "worker", "--broker", broker_stack.backend]
    command += ["--status-file", str(status)]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(proc, status, log)
    broker_stack.workers.append(worker)
    wait_for(
        lambda: worker.status().get("state") == "registered" or proc.poll() is not None,
        60,
        "the Python 3.12 worker to register",
    )
    assert proc.poll() is None, worker.log()
    yield worker


def area(radius: float) -> float:
    return round(math.pi * radius**2 * SCALE, 3)


def test_skew_is_reported_at_connect_and_calls_fall_back_to_source(
    broker_stack, session_factory, skewed_worker
):
    token = broker_stack.add_user("alice")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = session_factory(broker_stack.profile(token))
    assert session.worker_info["python_minor"] == "3.12"
    mine = "{}.{}".format(*sys.version_info[:2])
    told = [w for w in session.skew_warnings if "worker runs Python 3.12" in w]
    assert told and f"your notebook {mine}" in told[0] and "source" in told[0]
    assert any("worker runs Python 3.12" in str(w.message) for w in caught)

    # Cells are source: they work as usual.
    out = CollectingOutput()
    assert session.execute("import sys; print(sys.version_info[:2])", output=out)["status"] == "ok"
    assert out.text() == "(3, 12)\n"

    # A function travels as source, with the modules and plain data it uses.
    assert session.call(area, (2.0,)) == round(math.pi * 4 * SCALE, 3)
    session.execute("offset = 100")

    def nested(x):  # no closure: fine as source; `offset` comes from the worker's namespace
        return x + offset  # noqa: F821

    assert session.call(nested, (1,)) == 101

    # What cannot travel as source fails here, with the reason, before anything is sent.
    with pytest.raises(SourceUnavailable, match="lambda"):
        session.call(lambda: 1)
    # A by-value function inside the arguments is refused by the worker with the versions.
    with pytest.raises(RexecError, match=re.escape(f"serialized by Python {mine}")):
        session.call(area, (lambda: 1,))
    # Bytecode sent anyway (as an older client would) is refused, not run: no crash.
    session._shipper.by_source = False

    def loops(n):
        return [len(str(i)) * sum(j for j in range(i)) for i in range(n)]

    with pytest.raises(RexecError, match=re.escape(f"serialized by Python {mine}")):
        session.call(loops, (10,))
    session._shipper.by_source = True
    # A result holding code from the worker is refused here the same way.
    session.execute("def made_there():\n    return 1")
    with pytest.raises(VersionSkewError, match=r"serialized by Python 3\.12"):
        session.call(fetch_made_there)
    # The worker survived all of it.
    assert skewed_worker.proc.poll() is None
    assert session.call(area, (1.0,)) == round(math.pi * SCALE, 3)


def fetch_made_there():
    return made_there  # noqa: F821 - defined by a cell on the worker
