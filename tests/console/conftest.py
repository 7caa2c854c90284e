"""Fixtures of the console's browser tests: Debian's Chromium driven by Playwright (never a
downloaded browser: ``make browser`` installs it), and the folder the screenshots go to
(``$COACHFORGE_SCREENSHOTS``, else ``screenshots`` under the test run's base temporary folder),
named at the end of the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
_SHOTS: list[Path] = []


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("COACHFORGE_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    _SHOTS.append(folder)
    return folder


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API runs its event loop on the main thread while it is open,
    so later tests that call ``asyncio.run`` must not find it still open."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for folder in _SHOTS:
        if folder.exists() and any(folder.iterdir()):
            terminalreporter.write_line(f"console screenshots: {folder}")
