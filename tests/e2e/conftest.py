"""Fixtures shared by the browser tests."""

from __future__ import annotations

import pytest

from tests.e2e.dashboard_process import launch_chromium


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright, one per test module (each module starts its own
    server and dashboard; the browser's lifetime follows them)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)
        yield chromium
        chromium.close()
