"""The product's main flow in a real browser: JupyterLab, the "Rexec (remote)" kernel, the
magics in a normal Python kernel, and the status-bar extension, against a real local stack.

The tests share one Lab server, one stack and one page, and run in file order: the page keeps
the notebooks earlier tests opened, as a person's Lab would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LabServer
from tests.browser.lab import (
    Notebook,
    new_notebook,
    open_workspace,
    record_status,
    recorded_status,
    status_item,
    text_of,
)
from tests.kernel.stack import LocalStack

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(300)]

REXEC = "Rexec (remote)"
PYTHON = "Python 3 (ipykernel)"


@pytest.fixture(scope="module")
def page(lab: LabServer, browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    open_workspace(page, lab.page_url("rexec-browser-tests"))
    yield page
    context.close()


@pytest.fixture
def shown(page: Page, screenshot_on_failure: list[Any]) -> Page:
    screenshot_on_failure.append(page)
    return page


@pytest.fixture(scope="module")
def rexec_notebook(page: Page) -> Notebook:
    notebook = new_notebook(page, REXEC)
    expect(status_item(page)).to_have_attribute("data-state", "ready", timeout=60_000)
    return notebook


def spawner_worker(stack: LocalStack) -> dict[str, Any]:
    """The worker record as the spawner reports it (GET /api/v1/workers/default)."""
    profile = json.loads((stack.home / "profile.json").read_text())
    response = httpx.get(
        f"{profile['spawner_url']}/api/v1/workers/default",
        headers={"Authorization": f"Bearer {profile['token']}"},
        timeout=10,
    )
    response.raise_for_status()
    return dict(response.json())


def test_launcher_shows_the_rexec_kernel(shown: Page) -> None:
    card = shown.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{REXEC}"]')
    expect(card).to_be_visible()
    expect(card).to_contain_text(REXEC)


def test_a_cell_runs_on_the_worker_not_in_lab(
    shown: Page, rexec_notebook: Notebook, lab: LabServer, browser_stack: LocalStack
) -> None:
    index = rexec_notebook.run("import os, socket\nprint('PID', os.getpid(), socket.gethostname())")
    text = text_of(rexec_notebook.output(index))
    match = re.search(r"PID (\d+) (\S+)", text)
    assert match, text
    pid = int(match.group(1))
    assert pid != lab.process.pid
    worker = spawner_worker(browser_stack)
    assert worker["state"] == "ready"
    assert pid == worker["info"]["pid"], "the cell ran somewhere else than the spawner's worker"


def test_output_appears_progressively(shown: Page, rexec_notebook: Notebook) -> None:
    index = rexec_notebook.run(
        "import time\nfor i in range(3):\n    print(f'tick {i}', flush=True)\n    time.sleep(1.5)",
        wait=False,
    )
    output = rexec_notebook.output(index)
    started = time.monotonic()
    expect(output).to_contain_text("tick 0", timeout=20_000)
    seen_first = time.monotonic()
    # The last line is printed 3 s after the first: it must not be on the page yet.
    assert "tick 2" not in text_of(output)
    expect(output).to_contain_text("tick 2", timeout=20_000)
    assert time.monotonic() - seen_first >= 2.0, (started, seen_first)
    rexec_notebook.wait_done(index)


def test_stop_button_interrupts_and_the_namespace_survives(
    shown: Page, rexec_notebook: Notebook
) -> None:
    rexec_notebook.run("kept_before_interrupt = 'still here'")
    index = rexec_notebook.run("while True:\n    pass", wait=False)
    prompt = rexec_notebook.cell(index).locator(".jp-InputPrompt")
    expect(prompt).to_contain_text("*")
    time.sleep(1)
    rexec_notebook.interrupt()
    expect(rexec_notebook.output(index)).to_contain_text("KeyboardInterrupt", timeout=20_000)
    rexec_notebook.wait_done(index)
    after = rexec_notebook.run("print(kept_before_interrupt)")
    expect(rexec_notebook.output(after)).to_contain_text("still here")


def test_status_bar_shows_busy_then_ready(
    shown: Page, rexec_notebook: Notebook, browser_stack: LocalStack
) -> None:
    item = status_item(shown)
    expect(item).to_have_attribute("data-state", "ready", timeout=30_000)
    env_id = spawner_worker(browser_stack)["info"].get("env_id") or "unknown"
    expect(item).to_contain_text(f"env {env_id}")
    index = rexec_notebook.run("import time\ntime.sleep(4)", wait=False)
    expect(item).to_have_attribute("data-state", "busy", timeout=10_000)
    expect(item).to_contain_text("Rexec: busy")
    rexec_notebook.wait_done(index)
    expect(item).to_have_attribute("data-state", "ready", timeout=10_000)
    expect(item).to_contain_text("Rexec: ready")


def test_a_dead_worker_shows_and_the_next_cell_gets_a_new_one(
    shown: Page, rexec_notebook: Notebook, browser_stack: LocalStack
) -> None:
    item = status_item(shown)
    expect(item).to_have_attribute("data-state", "ready", timeout=30_000)
    pid = spawner_worker(browser_stack)["info"]["pid"]
    os.kill(pid, signal.SIGKILL)
    expect(item).to_have_attribute("data-state", "dead", timeout=30_000)
    index = rexec_notebook.run("import os\nprint('respawned', os.getpid())")
    output = rexec_notebook.output(index)
    expect(output).to_contain_text("respawned")
    new_pid = int(re.search(r"respawned (\d+)", text_of(output)).group(1))  # type: ignore[union-attr]
    assert new_pid != pid
    expect(item).to_have_attribute("data-state", "ready", timeout=30_000)


def test_tab_completes_a_remote_variable(shown: Page, rexec_notebook: Notebook) -> None:
    rexec_notebook.run("remote_only_alpha = 1\nremote_only_beta = 2")
    rexec_notebook.type_in_last_cell("remote_only_")
    shown.keyboard.press("Tab")
    completer = shown.locator(".jp-Completer")
    expect(completer).to_be_visible(timeout=20_000)
    expect(completer).to_contain_text("remote_only_alpha")
    expect(completer).to_contain_text("remote_only_beta")
    shown.keyboard.press("Escape")
    # Leave the cell empty for the next test.
    shown.keyboard.press("Control+a")
    shown.keyboard.press("Delete")


def test_details_panel_opens_the_worker_log(shown: Page, rexec_notebook: Notebook) -> None:
    status_item(shown).click()
    panel = shown.locator(".rexec-DetailsPanel")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text("Rexec remote worker")
    expect(panel).to_contain_text(re.compile(r"pid \d+ on "))
    panel.locator(".rexec-open-log").click()
    log = shown.locator(".rexec-LogView-text")
    expect(log).to_contain_text("registered with the broker", timeout=20_000)


def test_restart_from_the_panel_gives_a_new_worker(
    shown: Page, rexec_notebook: Notebook, browser_stack: LocalStack
) -> None:
    old_pid = spawner_worker(browser_stack)["info"]["pid"]
    rexec_notebook.panel.click()
    record_status(shown)
    status_item(shown).click()
    panel = shown.locator(".rexec-DetailsPanel")
    panel.locator(".rexec-restart").click()
    expect(panel.locator(".rexec-DetailsPanel-message")).to_contain_text(
        "new worker", timeout=120_000
    )
    item = status_item(shown)
    expect(item).to_have_attribute("data-state", "ready", timeout=30_000)
    new_pid = spawner_worker(browser_stack)["info"]["pid"]
    assert new_pid != old_pid
    # On the way the status bar showed the spawn progress.
    seen = recorded_status(shown)
    assert any(text.startswith("Rexec: starting · ") for text in seen), seen
    assert any("worker process" in text for text in seen), seen
    shown.keyboard.press("Escape")
    index = rexec_notebook.run("import os\nprint('now', os.getpid())")
    expect(rexec_notebook.output(index)).to_contain_text(f"now {new_pid}")


def test_kernel_restart_gives_a_fresh_namespace_and_the_status_comes_back(
    shown: Page, rexec_notebook: Notebook, browser_stack: LocalStack
) -> None:
    rexec_notebook.run("before_restart = 1")
    old_pid = spawner_worker(browser_stack)["info"]["pid"]
    rexec_notebook.panel.click()
    record_status(shown)
    shown.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click()
    shown.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Restart Kernel")).first.click()
    shown.locator(".jp-Dialog button.jp-mod-accept").click()
    # The old kernel's status goes away; the restarted kernel opens a new status channel.
    shown.wait_for_function(
        "() => window.rexecSeen.some(text => text.startsWith('Rexec: not connected'))",
        timeout=30_000,
    )
    expect(status_item(shown)).to_have_attribute("data-state", "ready", timeout=60_000)
    index = rexec_notebook.run("import os\nprint('kept:', 'before_restart' in dir(), os.getpid())")
    found = re.search(r"kept: (True|False) (\d+)", text_of(rexec_notebook.output(index)))
    assert found, text_of(rexec_notebook.output(index))
    assert found.group(1) == "False"
    assert int(found.group(2)) != old_pid


def test_change_environment_from_the_panel(
    shown: Page, rexec_notebook: Notebook, browser_stack: LocalStack
) -> None:
    rexec_notebook.panel.click()
    status_item(shown).click()
    panel = shown.locator(".rexec-DetailsPanel")
    panel.locator(".rexec-requirements").fill("six>=1.10")
    panel.locator(".rexec-apply-env").click()
    # pip's output streams into the panel while the environment is built.
    expect(panel.locator(".rexec-DetailsPanel-output")).to_contain_text("six", timeout=120_000)
    message = panel.locator(".rexec-DetailsPanel-message")
    expect(message).to_have_attribute("data-outcome", "ok", timeout=180_000)
    env_id = text_of(message).split()[1].rstrip(";")
    assert env_id not in ("", "base", "applied"), text_of(message)
    shown.keyboard.press("Escape")
    item = status_item(shown)
    expect(item).to_contain_text(f"env {env_id}", timeout=60_000)
    index = rexec_notebook.run("import six, sys\nprint('env python', sys.prefix)")
    expect(rexec_notebook.output(index)).to_contain_text(env_id)


def test_magics_stream_into_the_output_widget(shown: Page) -> None:
    notebook = new_notebook(shown, PYTHON)
    notebook.run("%load_ext rexec_magics")
    # The kernel opened the status channel: the status bar follows this notebook now.
    expect(status_item(shown)).to_be_visible(timeout=20_000)
    index = notebook.run(
        "%%rexec\nimport time\nfor i in range(3):\n    print(f'magic {i}', flush=True)\n"
        "    time.sleep(1.5)",
        wait=False,
    )
    widget = notebook.output(index).locator(".widget-output, .jupyter-widgets-output-area")
    expect(widget.first).to_contain_text("magic 0", timeout=60_000)
    assert "magic 2" not in text_of(widget.first)
    expect(widget.first).to_contain_text("magic 2", timeout=20_000)
    notebook.wait_done(index)
    expect(status_item(shown)).to_have_attribute("data-state", "ready", timeout=20_000)
