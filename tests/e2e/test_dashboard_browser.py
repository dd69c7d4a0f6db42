"""The dashboard in a real headless Chromium (Debian's, through Playwright) against a real
embedded server holding runs logged through the real SDK: open the runs table, filter (and see
the server's error for a malformed filter), select runs, see their curves overlaid, open a run
page with its artifacts."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import pytest

import runstream
from runstream.v1 import types_pb2
from tests.e2e.dashboard_process import (
    CHROMIUM,
    DashboardProcess,
    grid_row_checkbox,
    plotly_trace_counts,
    wait_idle,
)
from tests.server_process import ServerProcess

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (never a downloaded browser)",
)

PROJECT = "e2e"
# Trials of the demo grid: five adam runs (one of them diverges and fails) and one killed sgd run.
TRIALS = (0, 1, 8, 9, 16, 7)
ADAM_FILTER = 'params.optimizer.name = "adam"'
SYSTEM_CHART_SHOWN = """() => [...document.querySelectorAll('.js-plotly-plot')].some(p => {
    const title = p.layout && p.layout.title;
    return String((title && title.text) || title || '').includes('system/');  // Streamlit bolds titles
})"""


def _log_runs(endpoint: str) -> None:
    from runstream_services import demo

    specs = {s.index: s for s in demo.grid()}
    clock = demo.Clock(time.time() - 3 * 3600)
    with tempfile.TemporaryDirectory() as tmp:
        for i in TRIALS:
            clock.now += 600
            demo.log_trial(specs[i], endpoint, clock, Path(tmp), project=PROJECT)


def _search(endpoint: str, filter_text: str) -> list:
    with runstream.Api(endpoint=endpoint, timeout_s=30) as api:
        return list(api.search_runs(PROJECT, filter=filter_text, order_by="-start").runs)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("dash-server")).start()
    try:
        _log_runs(srv.endpoint)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def dashboard(server, tmp_path_factory):
    dash = DashboardProcess(server.endpoint, tmp_path_factory.mktemp("dash") / "streamlit.log").start()
    yield dash
    dash.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def _table(page):
    return page.locator('[data-testid="stDataFrame"]').first


def test_filter_select_runs_and_see_their_curves_then_open_a_run(server, dashboard, page):
    page.goto(f"{dashboard.url}/?project={PROJECT}")  # Runs is the default page: its URL is the root
    wait_idle(page)
    page.get_by_text(f"{len(TRIALS)} runs match").wait_for()

    # a malformed filter: the server's message shows next to the box, and no table
    box = page.get_by_label("Filter", exact=True).and_(page.locator("input"))
    box.fill("params.lr >>> 1")
    box.press("Enter")
    wait_idle(page)
    error = page.locator('[data-testid="stAlertContentError"]').first
    error.wait_for()
    assert "INVALID_ARGUMENT" in error.inner_text()

    box.fill(ADAM_FILTER)
    box.press("Enter")
    wait_idle(page)
    adam = _search(server.endpoint, ADAM_FILTER)
    assert len(adam) == 5
    page.get_by_text("5 runs match").wait_for()
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0

    # select the first two rows: their loss curves are overlaid, one trace per run
    table = _table(page)
    for row in (0, 1):
        page.mouse.click(*grid_row_checkbox(page, table, row))
        wait_idle(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].some(p => (p.data || []).length === 2)"
    )
    counts = plotly_trace_counts(page)
    assert counts and all(c == 2 for c in counts), counts
    names = page.evaluate("() => document.querySelector('.js-plotly-plot').data.map(t => t.name)")
    assert names == [adam[0].name, adam[1].name]

    # keep the second (a finished run; the newest one diverged) and open its page
    page.mouse.click(*grid_row_checkbox(page, table, 0))
    wait_idle(page)
    run = adam[1]
    assert run.state == types_pb2.RUN_STATE_FINISHED
    page.get_by_role("button", name="Open run page").click()
    page.wait_for_url(re.compile(rf"/run\?.*run={run.run_id}"))
    wait_idle(page)
    page.get_by_role("heading", name=run.name).wait_for()
    page.get_by_text(run.run_id).first.wait_for()

    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_role("button", name=f"Download {run.name}.ckpt").wait_for()
    preview = page.locator('[data-testid="stImage"] img').first
    preview.wait_for()
    assert preview.evaluate("img => img.naturalWidth") == 240  # the 10x10 confusion matrix PNG


def test_run_page_url_opens_directly_with_system_metrics(server, dashboard, page):
    failed = [r for r in _search(server.endpoint, 'state = "failed"')]
    assert len(failed) == 1
    page.goto(f"{dashboard.url}/run?project={PROJECT}&run={failed[0].run_id}")
    wait_idle(page)
    page.get_by_role("heading", name=failed[0].name).wait_for()
    # the notes as shown on the page (the Edit-run form below holds them in a textarea too)
    page.get_by_test_id("stText").get_by_text("Diverged: the loss became NaN").wait_for()
    page.get_by_role("tab", name="System").click()
    page.wait_for_function(SYSTEM_CHART_SHOWN)
