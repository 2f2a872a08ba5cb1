"""Driving JupyterLab's page the way a person does: launcher cards, typing in cells,
Shift+Enter, the stop button, Tab completion, the status bar."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from playwright.sync_api import Locator, Page, expect

KERNEL_START = 90_000  # ms: the first Rexec kernel also starts the worker
CELL_TIMEOUT = 60_000
EXECUTED = re.compile(r"\[\d+\]")  # the prompt once a cell ran; "[*]" while it runs


@dataclass
class Notebook:
    page: Page
    panel: Locator

    def cell(self, index: int) -> Locator:
        return self.panel.locator(".jp-Notebook .jp-Cell").nth(index)

    def output(self, index: int) -> Locator:
        return self.cell(index).locator(".jp-Cell-outputArea")

    def type_in_last_cell(self, code: str) -> int:
        """Type ``code`` into the last cell (without running it); returns its index."""
        cells = self.panel.locator(".jp-Notebook .jp-Cell")
        index = cells.count() - 1
        editor = self.cell(index).locator(".cm-content")
        editor.click()
        # insert_text: no auto-indent or bracket closing on the way in, like a paste.
        self.page.keyboard.insert_text(code)
        return index

    def run(self, code: str, wait: bool = True) -> int:
        """Type ``code`` into the last cell and run it with Shift+Enter; returns its index."""
        index = self.type_in_last_cell(code)
        self.page.keyboard.press("Shift+Enter")
        if wait:
            self.wait_done(index)
        return index

    def wait_done(self, index: int, timeout: float = CELL_TIMEOUT) -> None:
        prompt = self.cell(index).locator(".jp-InputPrompt")
        expect(prompt).to_have_text(EXECUTED, timeout=timeout)

    def interrupt(self) -> None:
        self.panel.locator('.jp-Toolbar-item[data-jp-item-name="interrupt"] button').click()

    def wait_idle(self, kernel_display_name: str, timeout: float = KERNEL_START) -> None:
        """Wait for the status bar's "<kernel> | Idle" (the toolbar's indicator starts out
        "idle" before the kernel is even connected)."""
        kernel_status = self.page.locator(".jp-StatusBar-Widget")
        expect(kernel_status).to_contain_text(f"{kernel_display_name} | Idle", timeout=timeout)


def open_workspace(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=60_000)


def new_notebook(page: Page, kernel_display_name: str) -> Notebook:
    """Open a launcher, click the notebook card of ``kernel_display_name``, wait for the kernel."""
    if not page.locator(".jp-Launcher:visible").count():
        page.locator(".lm-TabBar-addButton:not(.lm-mod-hidden)").first.click()
    card = page.locator(
        f'.jp-Launcher:visible .jp-LauncherCard[data-category="Notebook"]'
        f'[title="{kernel_display_name}"]'
    )
    expect(card).to_be_visible(timeout=30_000)
    card.click()
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    expect(panel).to_have_count(1, timeout=30_000)
    notebook = Notebook(page, panel)
    notebook.wait_idle(kernel_display_name)
    return notebook


def status_item(page: Page) -> Locator:
    return page.locator(".rexec-StatusItem")


def record_status(page: Page) -> None:
    """Start recording every text the status item shows (transient states included)."""
    page.evaluate(
        """() => {
          const item = document.querySelector('.rexec-StatusItem');
          window.rexecSeen = [item.textContent];
          window.rexecObserver?.disconnect();
          window.rexecObserver = new MutationObserver(() => {
            const text = item.textContent;
            if (window.rexecSeen[window.rexecSeen.length - 1] !== text) {
              window.rexecSeen.push(text);
            }
          });
          window.rexecObserver.observe(item, {childList: true, characterData: true, subtree: true});
        }"""
    )


def recorded_status(page: Page) -> list[str]:
    """The status item's texts since :func:`record_status`, in order."""
    seen: Any = page.evaluate("() => window.rexecSeen")
    return [str(text) for text in seen]


def text_of(locator: Locator) -> str:
    value: Any = locator.inner_text()
    return str(value)
