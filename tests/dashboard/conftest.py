"""A real `hearth serve` (container runtime) and headless Chromium driving its dashboard.

The browser is the machine's own (Debian's `chromium` package, which scripts/setup.sh
installs): Playwright drives it by its path and downloads nothing. Every step of a test
saves a screenshot under `test-artifacts/dashboard/` (or `$HEARTH_TEST_ARTIFACTS/
dashboard/`), which the run's summary names.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from api.conftest import ROOT, Hearth, served_containers, team_key
from playwright.sync_api import Browser, Page, expect, sync_playwright

# Waits for what the page shows: a guard against a hang (a pause or a build may take a
# while on a loaded machine), not a measure of anything.
WAIT_MS = 180_000


def artifacts_dir() -> Path:
    base = os.environ.get("HEARTH_TEST_ARTIFACTS")
    return (Path(base) if base else ROOT / "test-artifacts") / "dashboard"


@pytest.fixture(scope="module")
def hearth() -> Iterator[Hearth]:
    with served_containers("hearth-dashboard-") as info:
        yield info


@pytest.fixture(scope="module")
def other_key(hearth: Hearth) -> str:
    return new_team_key(hearth, "neighbours")


def new_team_key(hearth: Hearth, team: str) -> str:
    """The first key of a new team `team`. In a thread: Playwright's sync API keeps an
    event loop running in this one, where `team_key`'s `asyncio.run` cannot start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(team_key, hearth, team).result()


# A module's: while it is open Playwright's event loop runs in this thread, where the
# asyncio tests of other modules could not run theirs.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium: apt-get install chromium (scripts/setup.sh does)")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        # As root Chromium has no sandbox of its own; Playwright's default turns it off.
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            yield browser
        finally:
            browser.close()


class Steps:
    """Screenshots of one test, numbered in the order taken."""

    def __init__(self, page: Page, directory: Path, test: str) -> None:
        self.page = page
        self.directory = directory
        self.test = test
        self.taken = 0

    def shot(self, step: str) -> Path:
        self.taken += 1
        path = self.directory / f"{self.test}-{self.taken:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser tab (its own sessionStorage) for one test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture
def steps(page: Page, request: pytest.FixtureRequest) -> Steps:
    directory = artifacts_dir()
    directory.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")
    for old in directory.glob(f"{test}-*.png"):
        old.unlink()
    return Steps(page, directory, test)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    directory = artifacts_dir()
    if directory.is_dir() and any(directory.glob("*.png")):
        terminalreporter.write_line(f"dashboard screenshots: {directory}")
