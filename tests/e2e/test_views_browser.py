"""Saved views, URL state, grouped curves and the straggler view in a real headless Chromium
against a real embedded server (issue 16, item 4): runs of the demo sweep logged through the SDK
and a 4-rank run sent through the raw ingest client.

- a URL with a view in it opens with the widgets showing it (filter, drawn runs, grouping), and
  changing a widget changes the URL;
- a view saved from the page is listed and reopened from a fresh page;
- grouped curves draw a mean line and a min/max band per group;
- the run page's Ranks tab names the straggler rank;
- the Compare page's overlay groups as well;
- a run too long to read whole (3 ranks x 200,000 steps) shows a window of its newest steps."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest

import runstream
from tests.e2e.dashboard_process import CHROMIUM, DashboardProcess, wait_idle
from tests.rank_data import LONG_SLOW_EVERY, SLOW_RANK, log_long_run, log_multi_rank_run
from tests.server_process import ServerProcess

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (never a downloaded browser)",
)

PROJECT = "views"
RANK_PROJECT = "ranks"
TRIALS = (0, 1, 8, 9, 16, 7)  # five adam runs, one sgd run
ADAM_FILTER = 'params.optimizer.name = "adam"'


def seed(endpoint: str, server) -> str:
    """Logs the demo trials into PROJECT and a 4-rank run into RANK_PROJECT; returns that run's id."""
    from runstream_services import demo

    specs = {s.index: s for s in demo.grid()}
    clock = demo.Clock(time.time() - 3 * 3600)
    with tempfile.TemporaryDirectory() as tmp:
        for i in TRIALS:
            clock.now += 600
            demo.log_trial(specs[i], endpoint, clock, Path(tmp), project=PROJECT)
    return log_multi_rank_run(server, RANK_PROJECT)


@pytest.fixture(scope="module")
def long_run(server) -> str:
    return log_long_run(server, RANK_PROJECT)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("views-server")).start()
    try:
        srv.rank_run = seed(srv.endpoint, srv)
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
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def runs(endpoint: str, filter_text: str = "") -> list:
    with runstream.Api(endpoint=endpoint, timeout_s=30) as api:
        return list(api.search_runs(PROJECT, filter=filter_text, order_by="-start").runs)


def view_url(dashboard, **params) -> str:
    return f"{dashboard.url}/?" + urlencode({"project": PROJECT, **params}, doseq=True)


def url_params(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query, keep_blank_values=True)


def filter_box(page):
    return page.get_by_label("Filter", exact=True).and_(page.locator("input"))


def chips(page, key: str) -> list[str]:
    """The values a multiselect shows (its tags)."""
    return page.locator(f".st-key-{key} [data-tag] span[title]").all_inner_texts()


def figures(page) -> list[dict]:
    return page.evaluate(
        r"""() => [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
            title: String((p.layout.title && p.layout.title.text) || '').replace(/<\/?b>/g, ''),  // Streamlit bolds titles
            traces: (p.data || []).map(t => ({name: t.name || '', fill: t.fill || ''})),
        }))"""
    )


def test_a_url_with_a_view_opens_it_and_widgets_write_back(server, dashboard, page):
    adam = runs(server.endpoint, ADAM_FILTER)
    drawn = [adam[0].run_id, adam[2].run_id]
    page.goto(view_url(dashboard, filter=ADAM_FILTER, sort="name", desc="0", curves="val_acc", runs=drawn))
    wait_idle(page)
    page.get_by_text("5 runs match").wait_for()
    assert filter_box(page).input_value() == ADAM_FILTER
    assert page.locator(".st-key-runs_sort input").input_value() == "name"
    assert len(chips(page, "curve_runs")) == 2
    assert chips(page, "curve_metrics-views") == ["val_acc"]
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length === 1")
    (fig,) = figures(page)
    assert fig["title"] == "val_acc" and sorted(t["name"] for t in fig["traces"]) == sorted(
        [adam[0].name, adam[2].name]
    )

    # a widget changed: the URL follows (and keeps the rest of the view)
    page.get_by_text("Log y", exact=True).click()
    page.wait_for_function("() => new URLSearchParams(location.search).get('log') === '1'")
    params = url_params(page)
    assert params["filter"] == [ADAM_FILTER] and params["runs"] == drawn and params["curves"] == ["val_acc"]


def test_grouped_curves_draw_a_mean_and_a_band_per_group(server, dashboard, page):
    every = [r.run_id for r in runs(server.endpoint)]
    page.goto(view_url(dashboard, curves="loss", runs=every, group="params.optimizer.name", smooth="0"))
    wait_idle(page)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length === 1")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].some(p => (p.data || []).length === 6)"
    )
    (fig,) = figures(page)
    means = [t["name"] for t in fig["traces"] if t["name"]]
    assert means == ["adam (5 runs)", "sgd (1 run)"], fig["traces"]
    assert [t["fill"] for t in fig["traces"]].count("tonexty") == 2  # one min..max band per group
    assert "Group by" in page.locator(".st-key-curve_group").inner_text()


def test_save_a_view_then_reopen_it_from_a_fresh_page(server, dashboard, page):
    page.goto(view_url(dashboard, filter='params.optimizer.name = "sgd"', curves="loss", rows="50"))
    wait_idle(page)
    page.get_by_text("1 runs match").wait_for()
    page.get_by_text("Saved views").first.click()
    name_box = page.get_by_label("Save this view as")
    name_box.fill("sgd only")
    name_box.press("Enter")
    wait_idle(page)
    page.locator(".st-key-view_save button").click()
    wait_idle(page)
    page.get_by_text("Saved view “sgd only”.").wait_for()
    with runstream.Api(endpoint=server.endpoint) as api:
        (saved,) = [v for v in api.saved_views(PROJECT) if v.name == "sgd only"]
    assert saved.state == {"filter": 'params.optimizer.name = "sgd"', "curves": ["loss"], "rows": 50}

    page.goto(view_url(dashboard))  # a fresh session on the default view
    wait_idle(page)
    assert filter_box(page).input_value() == ""
    page.get_by_text("Saved views").first.click()
    page.wait_for_function("() => document.querySelector('.st-key-view_pick input')?.value === 'sgd only'")
    page.locator(".st-key-view_open button").click()
    wait_idle(page)
    page.wait_for_function("() => new URLSearchParams(location.search).get('rows') === '50'")
    page.wait_for_function(  # the widget is drawn a moment after the URL changes
        """() => [...document.querySelectorAll('input[aria-label="Filter"]')]
            .some(i => i.value === 'params.optimizer.name = "sgd"')"""
    )
    assert url_params(page)["filter"] == ['params.optimizer.name = "sgd"']

    page.locator(".st-key-view_delete button").click()
    wait_idle(page)
    page.get_by_text("Deleted view “sgd only”.").wait_for()
    with runstream.Api(endpoint=server.endpoint) as api:
        assert "sgd only" not in [v.name for v in api.saved_views(PROJECT)]


def test_ranks_tab_draws_every_rank_and_names_the_straggler(server, dashboard, page):
    page.goto(f"{dashboard.url}/run?project={RANK_PROJECT}&run={server.rank_run}")
    wait_idle(page)
    page.get_by_role("tab", name="Ranks").click()
    summary = page.get_by_text("held the others back most").first
    summary.wait_for()
    # rank 2 is 0.1 s slower on 10 steps; the last rank, 1 ms slower, is the slowest on the other 40
    assert summary.inner_text().startswith(
        f"Rank {SLOW_RANK} held the others back most: the slowest on 10 of 50"
    ), summary.inner_text()
    page.wait_for_function(
        """() => [...document.querySelectorAll('.js-plotly-plot')].some(
            p => String(p.layout.title.text || '').includes('slowest rank per step'))"""
    )
    by_title = {f["title"]: f for f in figures(page)}
    straggler = next(f for t, f in by_title.items() if "slowest rank per step" in t)
    assert sorted({t["name"] for t in straggler["traces"]}) == ["rank 2", "rank 3"]
    system = by_title["cpu_percent"]
    assert [t["name"] for t in system["traces"]] == [f"rank {r}" for r in range(4)]


def test_the_compare_overlay_groups_too(server, dashboard, page):
    every = runs(server.endpoint)
    chosen = ",".join(r.run_id for r in every[:3])  # the sgd run and two adam runs
    page.goto(f"{dashboard.url}/compare?project={PROJECT}&runs={chosen}")
    wait_idle(page)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1")
    box = page.locator(".st-key-compare_group input")
    box.click()
    box.fill("params.optimizer.name")
    box.press("Enter")
    wait_idle(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].some(p => (p.data || []).some(t => t.fill === 'tonexty'))"
    )
    overlay = next(f for f in figures(page) if any(t["fill"] == "tonexty" for t in f["traces"]))
    assert [t["name"] for t in overlay["traces"] if t["name"]] == ["adam (2 runs)", "sgd (1 run)"]


def test_a_long_run_shows_a_window_of_its_newest_steps(server, dashboard, page, long_run):
    page.goto(f"{dashboard.url}/run?project={RANK_PROJECT}&run={long_run}")
    wait_idle(page)
    page.get_by_role("tab", name="Ranks").click()
    summary = page.get_by_text("held the others back most").first
    summary.wait_for(timeout=120_000)
    # 3 ranks x 200,000 steps is more than 500,000 points: the newest 100,000 steps (the most per series)
    window = 100_000
    slow = window // LONG_SLOW_EVERY
    assert summary.inner_text().startswith(
        f"Rank 1 held the others back most: the slowest on {slow} of {window:,}"
    ), summary.inner_text()
    assert page.locator(".st-key-straggler_steps").count() == 1  # the Steps slider
    assert (
        "furthest behind" in page.get_by_text("The chart draws the step furthest behind").first.inner_text()
    )
    points = page.evaluate(
        """() => [...document.querySelectorAll('.js-plotly-plot')]
            .filter(p => String(p.layout.title.text || '').includes('slowest rank per step'))
            .map(p => p.data.reduce((n, t) => n + (t.x && t.x.length !== undefined ? t.x.length : 0), 0))"""
    )
    assert points and points[0] <= 2 * 2_000 + 10, points  # markers + bars of about 2,000 steps
