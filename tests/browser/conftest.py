"""Fixtures of the `browser` tier: a real local stack, a real ``jupyter lab`` on 127.0.0.1 and
Debian's Chromium driven by Playwright — one of each per test module. Module scope matters:
Playwright's sync API runs an event loop in the main thread while it is up, so it must be
stopped before tests of other tiers that call ``asyncio.run``.

Chromium comes from Debian (``/usr/bin/chromium``), never from Playwright's downloader. When it
or the Playwright module is missing the tests are skipped, except under ``CI=true``, where
``scripts/browser-setup`` installs them first. Deselect the tier with ``-m "not browser"``.

On failure each test saves a screenshot of the page to ``artifacts/browser/`` (or
``$REXEC_BROWSER_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kernel.stack import LocalStack, start_stack

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LAB_START_TIMEOUT = 90.0
SETUP_TIMEOUT = 900
ARTIFACTS = Path(os.environ.get("REXEC_BROWSER_ARTIFACTS", REPO / "artifacts" / "browser"))
EXTENSION = "rexec-jupyterlab"

# JupyterLab's defaults that would put network calls or pop-ups in front of the page.
OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "checkForUpdates": False,
        "fetchNews": "false",
        "doNotDisturbMode": True,
    },
    "@jupyterlab/extensionmanager-extension:plugin": {"enabled": False},
}


def _is_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _browser_ready() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return os.access(CHROMIUM, os.X_OK)


def _ensure_browser() -> None:
    if _browser_ready():
        return
    if not _is_ci():
        pytest.skip(
            f"browser tier: needs {CHROMIUM} and the playwright module; run scripts/browser-setup"
        )
    subprocess.run(
        [str(REPO / "scripts" / "browser-setup")],
        check=True,
        timeout=SETUP_TIMEOUT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if not _browser_ready():
        raise RuntimeError("scripts/browser-setup ran but Chromium or playwright is still missing")


@dataclass
class LabServer:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def page_url(self, workspace: str) -> str:
        return f"{self.url}/lab/workspaces/{workspace}?reset&token={self.token}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _extension_installed() -> bool:
    found = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return EXTENSION in found.stdout + found.stderr


@pytest.fixture(scope="module")
def browser_stack() -> Iterator[LocalStack]:
    _ensure_browser()
    yield from start_stack()


@pytest.fixture(scope="module")
def lab(browser_stack: LocalStack) -> Iterator[LabServer]:
    """``jupyter lab`` on 127.0.0.1 with its own config, data and runtime dirs and a token."""
    if not _extension_installed():
        raise RuntimeError(
            f"the {EXTENSION} extension is not installed: `pip install -e '.[jupyter]'` builds "
            "and installs it (see docs/jupyterlab.md)"
        )
    root = Path(tempfile.mkdtemp(prefix="rexec-lab-"))
    settings = root / "app-settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(OVERRIDES))
    notebooks = root / "notebooks"
    notebooks.mkdir()
    token = secrets.token_hex(16)
    port = _free_port()
    env = browser_stack.env(
        # In a venv made with --system-site-packages, extensions installed with the base
        # interpreter (the widget manager) live under its prefix, which Jupyter does not search.
        JUPYTER_PATH=os.pathsep.join(
            [browser_stack.env()["JUPYTER_PATH"], str(Path(sys.base_prefix) / "share" / "jupyter")]
        ),
        JUPYTER_CONFIG_DIR=str(root / "config"),
        JUPYTER_DATA_DIR=str(root / "data"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        REXEC_QUIET="1",
    )
    log_path = root / "lab.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ServerApp.allow_root=True",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--ServerApp.root_dir={notebooks}",
                f"--IdentityProvider.token={token}",
                f"--LabApp.app_settings_dir={settings}",
                f"--LabApp.workspaces_dir={root / 'workspaces'}",
                "--LabApp.news_url=",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = LabServer(f"http://127.0.0.1:{port}", token, process, log_path)
    try:
        _wait_for_lab(server)
        yield server
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_lab(server: LabServer) -> None:
    deadline = time.monotonic() + LAB_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited ({server.process.returncode}):\n{server.log()}")
        try:
            response = httpx.get(
                f"{server.url}/api/status", params={"token": server.token}, timeout=2
            )
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"jupyter lab did not answer within {LAB_START_TIMEOUT:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def screenshot_on_failure(request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Tests append their pages; a failed test leaves a screenshot of each in ARTIFACTS."""
    pages: list[Any] = []
    yield pages
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for index, page in enumerate(pages):
            path = ARTIFACTS / f"{request.node.name}-{index}.png"
            try:
                page.screenshot(path=str(path), full_page=True)
                print(f"screenshot: {path}")
            except Exception as exc:  # the page may be gone with the failure
                print(f"no screenshot of page {index}: {exc}")
