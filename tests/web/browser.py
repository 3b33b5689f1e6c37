"""Headless Chromium for the page's tests: Debian's browser driven by Playwright, a page
per test that fails on any script error, and helpers to run the page like a user.

Skips only where /usr/bin/chromium (or Playwright) is absent and CI is not set; under
CI=true a missing browser fails the test (install it with scripts/install-browser.sh).
Screenshots go to ``runs/screenshots`` (or ``$SSAM_SCREENSHOTS``), which CI keeps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("SSAM_SCREENSHOTS", ROOT / "runs" / "screenshots"))
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (run scripts/install-browser.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


def require(reason: str | None) -> None:
    """Skip for ``reason`` (something absent), or fail under CI=true, where nothing may be."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the test cannot run: {reason}")
    pytest.skip(reason)


def viewer_missing() -> str | None:
    """Why the page's volume viewer cannot be tested here, or None."""
    from ssam.web.app import volume_viewer

    return None if volume_viewer() else "the volume viewer is not built (scripts/build-web.sh)"


def launch_browser(tmp_path_factory) -> Iterator:
    """A persistent Chromium context with a fresh profile (--user-data-dir)."""
    require(_missing())
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=LAUNCH_ARGS,
            accept_downloads=True,
            viewport={"width": 1440, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


def open_page(browser_context, server):
    """A page on the shared server, failing the test on any script error."""
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.goto(server.url)
    tab.wait_for_selector('#trained-labels .chip[data-label="polyp"]')
    yield tab
    tab.close()
    assert not errors, errors


def choose_labels(page, labels: list[str]) -> None:
    """Keep only ``labels`` of the trained-label chips selected."""
    for chip in page.locator("#trained-labels .chip").all():
        wanted = chip.get_attribute("data-label") in labels
        if (chip.get_attribute("aria-pressed") == "true") != wanted:
            chip.click()


def segment_in_page(
    page, path: Path | list[Path], labels: list[str], custom: str | None = None
) -> None:
    """Choose the file(s), keep only ``labels`` selected (plus a typed ``custom``), run."""
    choose_labels(page, labels)
    if custom is not None:
        page.fill("#custom-label", custom)
        page.click("#custom-label-form button")
    files = [str(p) for p in path] if isinstance(path, list) else str(path)
    page.set_input_files("#file-input", files)
    page.click("#segment-button")
    page.wait_for_selector('#viewer[data-state="ready"]')


def download(page, selector: str, folder: Path) -> Path:
    with page.expect_download() as event:
        page.click(selector)
    target = folder / event.value.suggested_filename
    event.value.save_as(target)
    return target


def screenshot(page, name: str, selector: str | None = None) -> Path:
    """Save the page (or one element) as ``SCREENSHOTS/name.png``; returns the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    target = page.locator(selector) if selector else page
    target.screenshot(path=str(path))
    return path
