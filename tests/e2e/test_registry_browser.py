"""The Models page, the model version page with its drawn lineage graph, the registry's audit
view and the links between a version and its run, in a real headless Chromium (Debian's, through
Playwright) against a real embedded server. The registry is filled through the public SDK:
prep (dataset raw@v1) logs features; train consumes features, logs a model registered as clf v1
with alias staging, later moved to v2; evaluate consumes clf@staging (resolved to v1). Every
assertion reads what the browser drew (Plotly's figure data, the data grids' accessible tables,
link targets) and compares it with what was logged. RUNSTREAM_E2E_FAULT (tests/e2e/dashboard_faults.py)
proves the lineage test fails when the drawing or the direction control breaks."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

import runstream
from tests.e2e.dashboard_process import CHROMIUM, DashboardProcess, wait_idle
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (never a downloaded browser)",
)

PROJECT = "models-e2e"
GRAPH_NODES = """() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(p =>
    (p._fullData || []).filter(t => t.customdata).map(t => ({name: t.name, ids: Array.from(t.customdata)})))"""
GRID_ROWS = """() => [...document.querySelectorAll('[data-testid="stDataFrame"] table[role="grid"] tbody tr')]
    .map(r => [...r.querySelectorAll('td')].map(c => c.innerText.trim()))"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models-server")
    srv = ServerProcess(tmp / "data").start()
    ids = {}
    try:

        def run(name):
            return runstream.init(project=PROJECT, name=name, **quick_sdk_options(srv.endpoint, tmp / name))

        prep = run("prep")
        prep.use_dataset("raw", "v1")
        (tmp / "features.bin").write_bytes(b"features")
        prep.log_artifact(tmp / "features.bin", name="features")
        prep.finish()
        train = run("train")
        train.use_artifact("features", wait_s=10)
        train.log({"f1": 0.875}, step=0)
        (tmp / "model.bin").write_bytes(b"weights")
        train.log_artifact(tmp / "model.bin", name="model")
        train.register_model("model", "clf", aliases=["staging"], description="first classifier")
        train.finish()
        evaluate = run("evaluate")
        evaluate.use_artifact("clf@staging")
        evaluate.finish()
        with runstream.Api(endpoint=srv.endpoint) as api:
            v2 = api.create_model_version(PROJECT, "clf", train.id, "model")
            api.set_alias(PROJECT, "clf", "staging", v2.version, reason="newer weights")
        ids = {"prep": prep.id, "train": train.id, "evaluate": evaluate.id}
        yield srv, ids
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def dashboard(seeded, tmp_path_factory):
    srv, _ = seeded
    dash = DashboardProcess(srv.endpoint, tmp_path_factory.mktemp("models-dash") / "streamlit.log").start()
    yield dash
    dash.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def _grids(page) -> str:
    """The visible cells of every data grid (glide-data-grid mirrors them into an accessible table),
    one line per row, cells joined by " | "."""
    page.locator('[data-testid="stDataFrame"] table[role="grid"] td').first.wait_for(state="attached")
    return "\n".join(" | ".join(row) for row in page.evaluate(GRID_ROWS))


def _grids_with(page, *needles: str, timeout_s: float = 30) -> str:
    """`_grids` once it holds every needle, else what it held at the deadline (for the assertion
    to show). A page's grids arrive one after the other: the first cell attached may be another
    grid's, and a rerun redraws them."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = _grids(page)
        if all(n in text for n in needles) or time.monotonic() > deadline:
            return text
        page.wait_for_timeout(200)


def test_models_page_lists_models_versions_and_who_moved_the_aliases(seeded, dashboard, page):
    page.goto(f"{dashboard.url}/models?project={PROJECT}")
    wait_idle(page)
    page.get_by_role("heading", name="Models").wait_for()
    text = _grids_with(page, "clf", "staging→v2")
    assert "clf" in text and "staging→v2" in text, text
    page.get_by_role("tab", name="Audit log").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('table[role=\"grid\"]')].some(t => t.innerText.includes('alias.moved'))"
    )
    audit = _grids(page)
    for action in (
        "model.created",
        "model_version.created",
        "alias.created",
        "alias.moved",
        "input.recorded",
    ):
        assert action in audit, (action, audit)

    page.goto(f"{dashboard.url}/models?project={PROJECT}&model=clf")
    wait_idle(page)
    page.get_by_role("heading", name="Model clf").wait_for()
    versions = _grids_with(page, "version=2", "version=1")
    # raw cells: open link | version | aliases | created | creator | run link | ...
    assert re.search(r"version=2 \| 2 \| staging \|", versions), versions
    assert re.search(r"version=1 \| 1 \| {2}\|", versions), versions
    assert f"run={seeded[1]['train']}" in versions
    page.get_by_role("tab", name="Aliases").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('table[role=\"grid\"]')].some(t => t.innerText.includes('newer weights'))"
    )
    moves = _grids(page)
    # the move from v1 to v2, with its reason, after the creation of the alias on v1
    assert re.search(r"\| staging \| v1 \| v2 \| anonymous \| newer weights", moves), moves
    assert re.search(r"\| staging \| — \| v1 \| anonymous \|", moves), moves


def test_version_page_draws_the_lineage_and_links_to_its_run_and_back(seeded, dashboard, page):
    """Faults lineage_downstream_dropped (the consumer is not drawn) and lineage_direction_ignored
    (the upstream-only redraw still shows it)."""
    ids = seeded[1]
    page.goto(f"{dashboard.url}/model_version?project={PROJECT}&model=clf&version=1")
    wait_idle(page)
    page.get_by_role("heading", name="clf v1").wait_for()
    page.wait_for_function(f"() => ({GRAPH_NODES})().length > 0")
    traces = {t["name"]: set(t["ids"]) for t in page.evaluate(GRAPH_NODES)}
    drawn = set().union(*traces.values())
    expected = {
        "model_version/clf:1", "artifact/model:1", f"run/{ids['train']}", "artifact/features:1",
        f"run/{ids['prep']}", "dataset/raw@v1", f"run/{ids['evaluate']}",
    }  # fmt: skip
    assert expected <= drawn, drawn
    assert "missing" not in traces and "model_version/clf:2" not in drawn  # v2 is a sibling, not lineage
    assert traces["run"] == {f"run/{ids[k]}" for k in ("prep", "train", "evaluate")}
    assert traces["dataset"] == {"dataset/raw@v1"}

    page.get_by_text("upstream", exact=True).click()  # the Direction control
    page.wait_for_function(
        f"() => {{ const ids = ({GRAPH_NODES})().flatMap(t => t.ids);"
        f" return ids.length > 0 && !ids.includes('run/{ids['evaluate']}'); }}"
    )

    link = page.get_by_role("link", name=f"Run {ids['train']}")
    href = link.get_attribute("href")
    assert parse_qs(urlparse(href).query)["run"] == [ids["train"]], href
    link.click()
    wait_idle(page)
    page.get_by_role("heading", name="train").wait_for()
    back = page.get_by_role("link", name=re.compile(r"Registered as clf v1"))
    back.wait_for()
    # the section draws one link per version, one after the other: wait for the second, then count
    newer = page.get_by_role("link", name=re.compile(r"Registered as clf v2 \(staging\)"))
    newer.first.wait_for()
    assert newer.count() == 1
    inputs = _grids_with(page, "features", "artifact")
    assert "features" in inputs and "artifact" in inputs, inputs
    back.click()
    wait_idle(page)
    page.get_by_role("heading", name="clf v1").wait_for()
