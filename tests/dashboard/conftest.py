"""A real headless Chromium (Debian's, at /usr/bin/chromium) driven by Playwright's async API.

No browser is downloaded: Playwright's wheel brings its driver, and the browser is the system's, launched with
a new empty profile in the test's temp dir. Every page the test opens records the URLs it requested (HTTP and
WebSocket) and the errors its console showed (a Content-Security-Policy violation is one), and screenshots go
to ``<tmp_path>/screenshots/``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


@dataclass
class Browser:
    context: BrowserContext
    screenshots: Path
    urls: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    """(path, status) of every answer >= 400 the pages got."""

    async def new_page(self) -> Page:
        page = await self.context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("websocket", lambda ws: self.urls.append(ws.url))
        page.on("console", self._console)
        page.on("response", lambda r: self.failed.append((urlsplit(r.url).path, r.status)) if r.status >= 400 else None)
        page.on("pageerror", lambda error: self.console_errors.append(f"page error: {error}"))
        return page

    def _console(self, message: ConsoleMessage) -> None:
        # Chromium logs every error answer as "Failed to load resource"; those are checked by ``failed``.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.console_errors.append(message.text)

    async def screenshot(self, page: Page, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browser_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A new, empty Chromium profile and the screenshot folder (skips, or fails in CI, without Chromium)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    profile, screenshots = tmp_path / "chromium-profile", tmp_path / "screenshots"
    profile.mkdir()
    screenshots.mkdir()
    return profile, screenshots


@pytest.fixture
async def browser(browser_dirs: tuple[Path, Path]) -> AsyncIterator[Browser]:
    profile, screenshots = browser_dirs
    playwright = await async_playwright().start()
    try:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 860},
        )
        try:
            found = Browser(context, screenshots)
            context.on("request", lambda request: found.urls.append(request.url))
            for page in context.pages:  # the persistent context's first, blank tab
                await page.close()
            yield found
        finally:
            await context.close()
    finally:
        await playwright.stop()
