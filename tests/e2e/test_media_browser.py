"""The run page's Media tab and the compare page's media section in a real headless Chromium
(Debian's, through Playwright) against a real embedded server holding two runs whose media was
logged through the public SDK: images with captions at three steps, a histogram, a table, text and
an audio clip. Every assertion reads what the browser drew (image sizes and captions, Plotly's
heatmap data, the table's accessible grid, the audio element) and compares it with what was logged.

With RUNSTREAM_MEDIA_SCREENSHOT=<path.png> the run page test also saves the Media tab there
(docs/media.png is made this way)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import runstream
from tests.e2e.dashboard_process import CHROMIUM, DashboardProcess, wait_idle
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (never a downloaded browser)",
)

PROJECT = "media-ui"
STEPS = (0, 10, 20)
SIZES = {"alpha": (48, 32), "beta": (40, 24)}  # (width, height) of each run's images


def picture(step: int, width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.dstack([(x * 255 // width), (y * 255 // height), np.full_like(x, step * 10)]).astype(np.uint8)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("media-server")
    srv = ServerProcess(tmp / "data").start()
    runs = {}
    try:
        for name, (width, height) in SIZES.items():
            with runstream.init(
                project=PROJECT, name=name, **quick_sdk_options(srv.endpoint, tmp / name)
            ) as run:
                for step in STEPS:
                    frame = pd.DataFrame(
                        {"id": [1, 2, 3], "label": ["cat", "dog", "bird"], "score": [0.9, 0.4, step / 100]}
                    )
                    run.log(
                        {
                            "loss": 1 / (step + 1),
                            "samples": runstream.Image(
                                picture(step, width, height), caption=f"{name} step {step}"
                            ),
                            "weights": runstream.Histogram(
                                np.random.default_rng(step).normal(step / 10, 1, 2000), bins=30
                            ),
                            "preds": runstream.Table(frame, caption=f"preds at {step}"),
                            "generated": runstream.Text(f"{name} says hello at {step}"),
                        },
                        step=step,
                    )
                t = np.linspace(0, 0.25, 2000, endpoint=False)
                run.log(
                    {"tone": runstream.Audio(0.3 * np.sin(2 * np.pi * 440 * t), 8000, caption="a")}, step=20
                )
            runs[name] = run
        yield srv, runs
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def dashboard(seeded, tmp_path_factory):
    srv, _ = seeded
    dash = DashboardProcess(srv.endpoint, tmp_path_factory.mktemp("media-dash") / "streamlit.log").start()
    yield dash
    dash.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


IMAGES = """() => [...document.querySelectorAll('[data-testid="stImage"]')].map(f => {
    const img = f.querySelector('img');
    const cap = f.querySelector('[data-testid="stImageCaption"]') || f.parentElement.querySelector('[data-testid="stImageCaption"]');
    return {w: img.naturalWidth, h: img.naturalHeight, caption: cap ? cap.innerText : f.innerText};
})"""
HEATMAPS = """() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(p => (p._fullData || [])
    .filter(t => t.type === 'heatmap').map(t => ({x: Array.from(t.x), z: t.z.map(r => Array.from(r))})))"""


def _images(page) -> list[dict]:
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    return page.evaluate(IMAGES)


def _wait_caption(page, text: str) -> list[dict]:
    page.get_by_text(text, exact=True).first.wait_for()
    return _images(page)


def test_run_page_media_tab_slides_through_steps(page, dashboard, seeded):
    srv, runs = seeded
    run_id = runs["alpha"].id
    page.goto(f"{dashboard.url}/run?project={PROJECT}&run={run_id}")
    wait_idle(page)
    page.get_by_role("tab", name="Media").click()
    # the newest step first: its image, as logged (size) with its caption
    images = _wait_caption(page, "alpha step 20")
    assert {"w": 48, "h": 32, "caption": "alpha step 20"} in images

    # the slider of the "samples" key (listed first: images, histograms, tables, audio, text)
    slider = page.get_by_role("slider").first
    slider.focus()
    slider.press("Home")
    wait_idle(page)
    images = _wait_caption(page, "alpha step 0")
    assert [i["caption"] for i in images] == ["alpha step 0"]
    slider.press("ArrowRight")
    wait_idle(page)
    assert [i["caption"] for i in _wait_caption(page, "alpha step 10")] == ["alpha step 10"]

    # the histogram: one heatmap column per logged step, each column holding that step's 2000 values
    heat = page.evaluate(HEATMAPS)
    assert len(heat) == 1 and heat[0]["x"] == list(STEPS)
    columns = np.asarray(heat[0]["z"]).sum(axis=0)
    assert columns.tolist() == [2000.0, 2000.0, 2000.0]

    # the table: three rows; filtering for "dog" leaves one
    page.get_by_text("3 of 3 rows · click a column header to sort").wait_for()
    page.get_by_label("Filter rows").fill("dog")
    page.get_by_label("Filter rows").press("Enter")
    page.get_by_text("1 of 3 rows · click a column header to sort").wait_for()
    tab = page.get_by_role("tabpanel", name="Media")
    grid = tab.locator('[data-testid="stDataFrame"]').first.locator('table[role="grid"]')
    rows_js = "t => [...t.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('td')].map(c => c.innerText))"
    for _ in range(40):  # the grid's accessible copy follows the drawn canvas a moment later
        rows = grid.evaluate(rows_js)
        if len(rows) == 1:
            break
        page.wait_for_timeout(250)
    assert [r[:2] for r in rows] == [["2", "dog"]]

    # text and audio
    page.get_by_text("alpha says hello at 20").wait_for()
    assert page.locator("audio").count() == 1

    shot = os.environ.get("RUNSTREAM_MEDIA_SCREENSHOT")
    if shot:
        _screenshot(page, Path(shot))


def test_compare_page_shows_one_key_of_both_runs_at_a_step(page, dashboard, seeded):
    _, runs = seeded
    ids = ",".join(runs[n].id for n in SIZES)
    page.goto(f"{dashboard.url}/compare?project={PROJECT}&runs={ids}")
    wait_idle(page)
    page.get_by_role("heading", name="Media", exact=True).scroll_into_view_if_needed()
    page.get_by_label("Media key").click()
    page.get_by_role("option", name="samples (image)").click()
    wait_idle(page)
    images = _wait_caption(page, "beta step 20")
    assert {"w": 48, "h": 32, "caption": "alpha step 20"} in images
    assert {"w": 40, "h": 24, "caption": "beta step 20"} in images
    slider = page.get_by_role("slider").last
    slider.focus()
    slider.press("Home")
    wait_idle(page)
    images = _wait_caption(page, "beta step 0")
    assert sorted(i["caption"] for i in images) == ["alpha step 0", "beta step 0"]


def _screenshot(page, path: Path) -> None:
    from tests.e2e.screenshots import _save

    page.get_by_role("slider").first.press("End")
    wait_idle(page)
    page.get_by_label("Filter rows").fill("")
    page.get_by_label("Filter rows").press("Enter")
    wait_idle(page)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(page, path, 1300, from_heading=None)
