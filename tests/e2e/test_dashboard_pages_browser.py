"""The Compare and Sweep pages, the curve controls (smoothing, log y, x axis, live refresh) and the
artifact download, in a real headless Chromium (Debian's, through Playwright) against a real
embedded server holding three runs logged through the public SDK with known values. Every
assertion reads what the browser drew (Plotly's figure data, the data grid's accessible table, the
downloaded file) and compares it with what was logged.

Each test fails when its behaviour breaks: RUNSTREAM_E2E_FAULT=<name> (tests/e2e/dashboard_faults.py)
starts the dashboard with one behaviour broken; the fault each test catches is named in its docstring."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

import runstream
from tests.e2e.dashboard_process import (
    CHROMIUM,
    DashboardProcess,
    grid_row_checkbox,
    wait_idle,
)
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (never a downloaded browser)",
)

PROJECT = "pages"
T0 = 1_700_000_000  # start of the first run, unix seconds
STEPS = 20
# name -> (config, start offset in s); runs differ in lr and optimizer, share batch_size and epochs
RUNS = {
    "alpha": ({"lr": 0.001, "optimizer": "adam", "batch_size": 64, "epochs": 3}, 0),
    "beta": ({"lr": 0.01, "optimizer": "sgd", "batch_size": 64, "epochs": 3}, 3600),
    "gamma": ({"lr": 0.1, "optimizer": "adam", "batch_size": 64, "epochs": 3}, 7200),  # stays running
}
ARTIFACT_BYTES = bytes(range(256)) * 12 + b"runstream"  # not an image, so no preview is drawn


def _loss(step: int) -> float:
    """A zigzag, so smoothing visibly changes it."""
    return 1.0 / (step + 1) + (0.2 if step % 2 else 0.0)


def _val_acc(run: int, step: int) -> float:
    return 0.5 + 0.01 * step + 0.1 * run


def _point_time_s(start_s: int, step: int) -> int:
    return start_s + 30 * (step + 1)  # half a minute per step, so minutes and steps differ


def _ema(values: list[float], weight: float) -> list[float]:
    """Debiased EMA (TensorBoard's smoothing), written here again so the dashboard's own is checked."""
    out, last = [], 0.0
    for n, v in enumerate(values, start=1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


# ---------------------------------------------------------------- fixtures: one server, one dashboard


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """The server and the runs: {"alpha": Run, ...}; alpha and beta finished, gamma kept running."""
    tmp = tmp_path_factory.mktemp("pages-server")
    srv = ServerProcess(tmp / "data").start()
    runs = {}
    try:
        for i, (name, (config, offset)) in enumerate(RUNS.items()):
            run = runstream.init(
                project=PROJECT,
                name=name,
                config=config,
                group="sweep",
                start_time=T0 + offset,
                **quick_sdk_options(srv.endpoint, tmp / name),
            )
            for step in range(STEPS):
                values = {"loss": _loss(step), "val_acc": _val_acc(i, step)}
                run.log(values, step=step, timestamp=_point_time_s(T0 + offset, step))
            if name == "alpha":
                artifact = tmp / "model.bin"
                artifact.write_bytes(ARTIFACT_BYTES)
                run.log_artifact(artifact, name="weights")
            if name == "gamma":
                assert run.flush(30)
            else:
                run.finish()
            runs[name] = run
        yield srv, runs
    finally:
        for run in runs.values():
            run.finish()
        srv.stop()


@pytest.fixture(scope="module")
def dashboard(seeded, tmp_path_factory):
    srv, _ = seeded
    dash = DashboardProcess(srv.endpoint, tmp_path_factory.mktemp("pages-dash") / "streamlit.log").start()
    yield dash
    dash.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def _run_id(seeded, name: str) -> str:
    return seeded[1][name].id


# ---------------------------------------------------------------- reading what the browser drew

FIGURES = """() => [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
    title: String((p.layout.title && p.layout.title.text) || p.layout.title || ''),
    ytype: p._fullLayout.yaxis ? p._fullLayout.yaxis.type : null,
    traces: (p._fullData || []).map(t => ({
        type: t.type, name: t.name,
        x: t.x ? Array.from(t.x) : null, y: t.y ? Array.from(t.y) : null,
        dims: t.dimensions ? t.dimensions.map(d => ({label: d.label, values: Array.from(d.values)})) : null,
    })),
}))"""
PLOT_DRAWN = (
    "() => [...document.querySelectorAll('.js-plotly-plot')].some(p => (p._fullData || []).length > 0)"
)


def _figures(page) -> list[dict]:
    return page.evaluate(FIGURES)


def _curve(page, key: str) -> dict:
    """The first trace of the learning-curve chart titled `key` (Streamlit bolds titles)."""
    for fig in _figures(page):
        if re.sub(r"</?b>", "", fig["title"]) == key:
            return {**fig["traces"][0], "ytype": fig["ytype"]}
    raise AssertionError(f"no chart titled {key!r}: {[f['title'] for f in _figures(page)]}")


def _wait_for_curve(page, key: str, predicate, what: str, timeout_s: float = 60) -> dict:
    """Polls the drawn chart until `predicate(trace)` holds; the assertion names what was expected."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = _curve(page, key)
        except AssertionError:
            last = None
        if last is not None and predicate(last):
            return last
        page.wait_for_timeout(250)
    raise AssertionError(f"{what}: the {key!r} chart never showed it; last drawn: {last}")


def _grid_rows(page, index: int) -> dict[str, list[str]]:
    """Rows of the n-th st.dataframe from its accessible table (glide-data-grid renders cells on a
    canvas and mirrors the visible ones into a role=grid table): first cell -> the other cells."""
    table = page.locator('[data-testid="stDataFrame"]').nth(index).locator('table[role="grid"]')
    table.locator("td").first.wait_for(state="attached")
    rows = table.evaluate(
        "t => [...t.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('td')].map(c => c.innerText))"
    )
    headers = table.evaluate("t => [...t.querySelectorAll('thead th')].map(c => c.innerText)")
    return {"": headers, **{r[0]: r[1:] for r in rows}}


def _select_single_run(page, dashboard, name: str) -> None:
    """Runs page, filtered to one run, its row selected: its learning curves are drawn."""
    page.goto(f"{dashboard.url}/?project={PROJECT}")
    wait_idle(page)
    box = page.get_by_label("Filter", exact=True).and_(page.locator("input"))
    box.fill(f'name = "{name}"')
    box.press("Enter")
    page.get_by_text("1 runs match").wait_for()
    wait_idle(page)
    table = page.locator('[data-testid="stDataFrame"]').first
    opener = page.get_by_role("button", name="Open run page")  # enabled once exactly one row is selected
    for _ in range(3):
        page.mouse.click(*grid_row_checkbox(page, table, 0))
        try:
            expect(opener).to_be_enabled(timeout=15_000)
            break
        except AssertionError:
            # the grid swallowed the click (drawn but not yet taking input); once the page is idle
            # with the row still unselected, a second click selects it rather than toggling it off
            wait_idle(page)
            if opener.is_enabled():
                break
    expect(opener).to_be_enabled(timeout=1_000)
    try:
        page.wait_for_selector(".js-plotly-plot")
    except PlaywrightTimeoutError:
        errors = page.locator('[data-testid="stException"]').all_inner_texts()
        log = dashboard.log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(
            f"{name!r} is selected but no chart was drawn; page errors {errors}; log:\n{log}"
        ) from None
    wait_idle(page)


# ---------------------------------------------------------------- tests


def test_compare_url_shows_differing_config_and_both_runs_metrics(seeded, dashboard, page):
    """Fault compare_configs_equal: no differing key is shown."""
    alpha, beta = _run_id(seeded, "alpha"), _run_id(seeded, "beta")
    page.goto(f"{dashboard.url}/compare?project={PROJECT}&runs={alpha},{beta}")
    wait_idle(page)
    page.get_by_role("heading", name=f"Compare · {PROJECT}").wait_for()
    caption = page.get_by_text(re.compile(r"\d+ differing keys"))
    caption.wait_for()
    assert caption.inner_text().startswith("2 differing keys"), caption.inner_text()  # lr, optimizer

    config = _grid_rows(page, 0)
    assert config[""] == ["key", "alpha", "beta"]
    # only the keys that differ (batch_size and epochs are the same in both)
    assert {k: v for k, v in config.items() if k} == {"lr": ["0.001", "0.01"], "optimizer": ["adam", "sgd"]}

    metrics = _grid_rows(page, 1)
    assert metrics[""] == ["metric", "alpha", "beta"]
    last = STEPS - 1
    assert [float(v) for v in metrics["loss"]] == pytest.approx([_loss(last)] * 2, rel=1e-4)
    assert [float(v) for v in metrics["val_acc"]] == pytest.approx(
        [_val_acc(0, last), _val_acc(1, last)], rel=1e-4
    )
    assert re.search(rf"runs={alpha}(,|%2C){beta}", page.url), page.url  # the URL still names both


def test_sweep_draws_one_parallel_coordinates_line_per_run(seeded, dashboard, page):
    """Fault sweep_first_run_only: the chart holds one line instead of three."""
    page.goto(f"{dashboard.url}/sweep?project={PROJECT}")
    wait_idle(page)
    page.get_by_text(f"{len(RUNS)} runs").first.wait_for()
    page.wait_for_function(PLOT_DRAWN)
    figures = _figures(page)
    assert len(figures) == 1 and figures[0]["traces"][0]["type"] == "parcoords", figures
    dims = {d["label"]: d["values"] for d in figures[0]["traces"][0]["dims"]}
    assert all(len(values) == len(RUNS) for values in dims.values()), dims  # one line per run
    assert set(dims) == {"lr (log)", "optimizer", "val_acc"}  # the swept params, then the metric
    # lines are ordered best val_acc first: gamma, beta, alpha
    assert dims["val_acc"] == pytest.approx([_val_acc(i, STEPS - 1) for i in (2, 1, 0)])
    assert dims["lr (log)"] == pytest.approx([-1, -2, -3])
    assert dims["optimizer"] == [0, 1, 0]  # categories sorted: adam, sgd


def test_curve_controls_smoothing_log_y_and_x_axis_redraw_the_traces(seeded, dashboard, page):
    """Faults ema_ignored, log_y_ignored, x_axis_ignored: each leaves its trace unchanged."""
    raw = [_loss(s) for s in range(STEPS)]
    _select_single_run(page, dashboard, "alpha")

    # default smoothing 0.6: the drawn loss is the EMA of what was logged, not the raw values
    drawn = _wait_for_curve(page, "loss", lambda t: len(t["y"]) == STEPS, "20 points")
    assert drawn["x"] == list(range(STEPS))
    assert drawn["y"] == pytest.approx(_ema(raw, 0.6))
    assert drawn["y"] != pytest.approx(raw)

    slider = page.get_by_role("slider", name="Smoothing (EMA)")
    slider.focus()
    slider.press("Home")  # smoothing 0: the raw values
    _wait_for_curve(page, "loss", lambda t: t["y"] == pytest.approx(raw), "raw values at smoothing 0")
    slider.press("End")  # 0.99
    _wait_for_curve(page, "loss", lambda t: t["y"] == pytest.approx(_ema(raw, 0.99)), "EMA at 0.99")

    assert _curve(page, "loss")["ytype"] == "linear"
    page.get_by_text("Log y", exact=True).click()
    _wait_for_curve(page, "loss", lambda t: t["ytype"] == "log", "a log y axis")

    alpha_start = T0 + RUNS["alpha"][1]
    page.get_by_role("radio", name="time").click()
    times = [
        datetime.fromtimestamp(_point_time_s(alpha_start, s), UTC).replace(tzinfo=None) for s in range(STEPS)
    ]
    drawn = _wait_for_curve(page, "loss", lambda t: isinstance(t["x"][0], str), "dates on the x axis (time)")
    assert [datetime.fromisoformat(x) for x in drawn["x"]] == times

    page.get_by_role("radio", name="relative").click()
    drawn = _wait_for_curve(
        page, "loss", lambda t: not isinstance(t["x"][0], str), "minutes on the x axis (relative)"
    )
    assert drawn["x"] == pytest.approx([s / 2 for s in range(STEPS)])  # minutes since the first point

    page.get_by_role("radio", name="step").click()
    _wait_for_curve(page, "loss", lambda t: t["x"] == list(range(STEPS)), "steps on the x axis")


def test_live_curves_grow_without_a_reload_when_a_running_run_logs(seeded, dashboard, page):
    """Fault series_frozen: the chart never shows the new point."""
    gamma = seeded[1]["gamma"]
    _select_single_run(page, dashboard, "gamma")
    assert page.get_by_role("switch", name="Live").is_checked()  # on by default for a running run
    before = _wait_for_curve(page, "loss", lambda t: len(t["y"]) >= STEPS, "the logged points")
    page.evaluate("() => { window.__rsSamePage = true }")  # a reload would drop it

    step = len(before["y"])
    gamma.log({"loss": 0.05}, step=step, timestamp=_point_time_s(T0 + RUNS["gamma"][1], step))
    assert gamma.flush(30)

    drawn = _wait_for_curve(
        page, "loss", lambda t: len(t["y"]) == step + 1, "the point logged while the page was open", 90
    )
    assert drawn["x"][-1] == step
    assert page.evaluate("() => window.__rsSamePage === true")


def test_run_page_download_button_serves_the_logged_bytes(seeded, dashboard, page):
    """Fault download_corrupt: the downloaded file differs from the logged one."""
    alpha = _run_id(seeded, "alpha")
    page.goto(f"{dashboard.url}/run?project={PROJECT}&run={alpha}")
    wait_idle(page)
    page.get_by_role("heading", name="alpha").wait_for()
    page.get_by_role("tab", name="Artifacts").click()
    button = page.get_by_role("button", name="Download model.bin")
    with page.expect_download() as download:
        button.click()
    assert download.value.suggested_filename == "model.bin"
    assert Path(download.value.path()).read_bytes() == ARTIFACT_BYTES
