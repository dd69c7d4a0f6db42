"""Editable runs and the Alerts page in a real headless Chromium (Debian's, through Playwright)
against a real embedded server: a finished run is renamed and given an outcome through the run
page's edit form (the server then holds the edit, the run stays finished, the page shows the edit
history), and the Alerts page lists a rule and the firing it delivered to a local webhook."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import runstream
from tests.e2e.dashboard_process import CHROMIUM, DashboardProcess, launch_chromium, wait_idle
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (never a downloaded browser)",
)

PROJECT = "workflow"
GRID_ROWS = """() => [...document.querySelectorAll('[data-testid="stDataFrame"] table[role="grid"] tbody tr')]
    .map(r => [...r.querySelectorAll('td')].map(c => c.innerText.trim()))"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workflow-server")
    receiver = WebhookReceiver()
    srv = ServerProcess(tmp / "data", env={"RUNSTREAM_ALERTS_CHECK_INTERVAL_S": "0.2"}).start()
    try:
        with runstream.Api(endpoint=srv.endpoint) as api:
            api.add_alert_rule(PROJECT, "loss exploded", "threshold", key="loss", op=">", value=100,
                               webhook_url=receiver.url)  # fmt: skip
        run = runstream.init(
            project=PROJECT, name="before-edit", **quick_sdk_options(srv.endpoint, tmp / "r")
        )
        for step in range(5):
            run.log({"loss": 1000.0 if step == 3 else 1.0}, step=step)
        run.finish()
        receiver.wait_for(lambda ps: len(ps) == 1)
        yield srv, run.id
    finally:
        srv.stop()
        receiver.close()


@pytest.fixture(scope="module")
def dashboard(seeded, tmp_path_factory):
    dash = DashboardProcess(
        seeded[0].endpoint, tmp_path_factory.mktemp("workflow-dash") / "streamlit.log"
    ).start()
    yield dash
    dash.stop()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        context = browser.new_context(viewport={"width": 1400, "height": 1400})
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _grid_text(page) -> str:
    return "\n".join(" | ".join(row) for row in page.evaluate(GRID_ROWS))


def test_run_page_edits_a_finished_run_and_shows_the_history(seeded, dashboard, page):
    srv, run_id = seeded
    page.goto(f"{dashboard.url}/run?project={PROJECT}&run={run_id}")
    wait_idle(page)
    page.get_by_role("heading", name="before-edit").wait_for()
    page.get_by_text("Edit run", exact=True).click()
    page.get_by_label("Name", exact=True).fill("after-edit")
    page.get_by_label("Outcome", exact=True).fill("the loss spike was a bad batch")
    page.get_by_role("button", name="Save changes").click()
    page.get_by_role("heading", name="after-edit").wait_for()
    wait_idle(page)
    page.get_by_text("the loss spike was a bad batch").first.wait_for()
    deadline = time.monotonic() + 30
    while "after-edit" not in _grid_text(page) and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    history = _grid_text(page)
    assert "name | before-edit | after-edit | anonymous" in history, history
    with runstream.Api(endpoint=srv.endpoint) as api:
        got = api.run(PROJECT, run_id)
        assert got["name"] == "after-edit" and got["state"] == "finished"
        assert api.run_edits(PROJECT, run_id).outcome == "the loss spike was a bad batch"


def test_alerts_page_lists_rules_and_firings(seeded, dashboard, page):
    _, run_id = seeded
    page.goto(f"{dashboard.url}/alerts?project={PROJECT}")
    wait_idle(page)
    page.get_by_role("heading", name="Alerts").wait_for()
    deadline = time.monotonic() + 30
    while "delivered" not in _grid_text(page) and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    text = _grid_text(page)
    assert "loss exploded" in text and "loss > 100" in text, text
    assert run_id in text and "delivered" in text and "loss = 1000 > 100 at step 3" in text, text
