"""Dashboard click timings (issue 17): time from a click in the browser to the data drawn, on the
Runs page of the real dashboard (Streamlit, as `runstream dashboard` starts it) in headless Debian
Chromium through Playwright, against a real embedded `runstream server` holding 10,000 runs.
A measurement, not a test: it prints medians and asserts only that the clicks drew what they should.

    .venv/bin/python bench/dashboard_clicks.py                        # build 10,000 runs in a temp folder
    .venv/bin/python bench/dashboard_clicks.py --data-dir /tmp/dc     # keeps the data; reused next time
    .venv/bin/python bench/dashboard_clicks.py --runs 500 --clicks 3  # quick check
    .venv/bin/python bench/dashboard_clicks.py --data-dir /tmp/dc --tree /tmp/old-main
        # the same clicks, with server and dashboard run from another checkout (e.g. a
        # `git worktree` of an older commit), then from this one: before/after in one run

Data (bench/query_bench.build, written straight into the server's chDB folder before it starts):
10,000 runs x 20 params x 20 metrics of 5 steps, and a 1,000-step "loss" curve in the oldest 200.

Rows (each a median over --clicks clicks, every click asking for data not asked before, so
Streamlit's st.cache_data does not answer it; the "(again)" rows repeat a click moments later,
answered by that cache while within the loaders' TTL (2-3 s since this change, 5-10 s before)):
  table next   Runs page, 10,000 runs, 100 rows, 8 param + 6 metric columns: click "Next ->" until
               the grid shows the next page's first run
  table filter the same table: type a 4-term filter + Enter until the caption counts its matches
  overlay 50   filter `metrics.loss.count > 0`, 50 rows: click the grid's select-all box until both
               learning-curve charts hold 50 traces (loss: 50 x 1,000 points, m0: 50 x 5)
Timing: Python's clock around the click and Playwright's wait for the drawn state, polled every
animation frame in the page, so each figure includes ~1 frame (16 ms) of polling granularity.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROJECT = "bench"  # bench/query_bench.PROJECT
LONG_RUNS = 200
LONG_STEPS = 1_000
FILTER_4 = 'params.p0 > {x} and metrics.m0 < 0.9 and tags.dataset = "v2" and state = "finished"'

_BUILD = """
import sys
sys.path.insert(0, {root!r})
from bench.query_bench import DB, build
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
client = connect("chdb://" + {chdb!r})
migrate(client, DB)
build(client, n_runs={runs}, n_params=20, n_metrics=20, points_per_metric=5, long_runs={long_runs},
      long_steps={long_steps})
"""


def build_data(server_dir: Path, runs: int) -> None:
    """The runs, written by a child process (chDB: one data folder per process)."""
    chdb = server_dir / "chdb"
    chdb.parent.mkdir(parents=True, exist_ok=True)
    code = _BUILD.format(
        root=str(ROOT), chdb=str(chdb), runs=runs, long_runs=min(LONG_RUNS, runs), long_steps=LONG_STEPS
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _env_for(tree: Path | None) -> dict | None:
    """PYTHONPATH putting another checkout's packages first (None: this checkout's)."""
    if tree is None:
        return None
    paths = [tree / "services", tree / "client", tree / "dashboards", os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(str(p) for p in paths if str(p))}


# ---------------------------------------------------------------- browser helpers

# JS run in the page: the first grid row's text, whether a caption holds a text, plot trace counts
_JS = """
const firstRow = () => {
    const t = document.querySelector('[data-testid="stDataFrame"] table[role="grid"]');
    const row = t && t.querySelector('tbody tr');
    return row ? row.innerText : null;
};
const captionHas = (text) => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
    .some(c => c.innerText.includes(text));
const traces = () => [...document.querySelectorAll('.js-plotly-plot')].map(p => (p._fullData || []).length);
"""
FIRST_ROW = "() => {" + _JS + "return firstRow(); }"
# a new page drawn: the caption names it and the grid shows other rows than before
PAGE_DRAWN = (
    "(a) => {" + _JS + "const r = firstRow(); return captionHas(a.want) && r !== null && r !== a.first; }"
)
CAPTION_DRAWN = "(text) => {" + _JS + "return captionHas(text); }"
# both learning-curve charts drawn with a trace per run (at least)
OVERLAY_DRAWN = "(n) => {" + _JS + "const c = traces(); return c.length >= 2 && c.every(k => k >= n); }"
SELECT_ALL = -1  # grid_row_checkbox's row -1: the header row, whose marker selects every row


SHOTS = Path(tempfile.gettempdir())


def _timed_until(page, click, condition: str, arg=None, timeout_ms: int = 120_000) -> float:
    """ms from the click to `condition` (a JS function of `arg`) holding, polled every frame."""
    t = time.perf_counter()
    click()
    page.wait_for_function(condition, arg=arg, polling="raf", timeout=timeout_ms)
    return (time.perf_counter() - t) * 1000


def measure(url: str, runs: int, clicks: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    from tests.e2e.dashboard_process import launch_chromium

    out: dict[str, list[float]] = {
        "table next": [], "table prev/next (again)": [], "table 4-term filter": [],
        "overlay 50": [], "overlay 50 (again)": [],
    }  # fmt: skip
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_context(viewport={"width": 1600, "height": 1400}).new_page()
        page.set_default_timeout(180_000)
        try:
            _clicks(page, url, runs, clicks, out)
        except Exception:
            shot = SHOTS / f"dashboard_clicks-{int(time.time())}.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"a click never drew what was awaited; the page: {shot}", file=sys.stderr)
            raise
        finally:
            browser.close()
    return out


def _clicks(page, url: str, runs: int, clicks: int, out: dict[str, list[float]]) -> None:
    from tests.e2e.dashboard_process import grid_row_checkbox, wait_idle

    page.goto(f"{url}/?project={PROJECT}")
    page.get_by_text(f"{runs:,} runs match").first.wait_for()
    wait_idle(page, 180_000)

    def click_button(name: str):
        return lambda: page.get_by_role("button", name=name).click()

    # -- the runs table: Next -> through pages not read before, then Prev / Next (cached)
    for i in range(clicks):
        want = f"showing {(i + 1) * 100 + 1:,}–"
        arg = {"want": want, "first": page.evaluate(FIRST_ROW)}
        out["table next"].append(_timed_until(page, click_button("Next →"), PAGE_DRAWN, arg))
        wait_idle(page)
    for _ in range(clicks):
        for button, shown in (("← Prev", clicks - 1), ("Next →", clicks)):
            arg = {"want": f"showing {shown * 100 + 1:,}–", "first": page.evaluate(FIRST_ROW)}
            out["table prev/next (again)"].append(_timed_until(page, click_button(button), PAGE_DRAWN, arg))
            wait_idle(page)

    # -- a 4-term filter typed, then Enter: each one new
    box = page.get_by_label("Filter", exact=True).and_(page.locator("input"))
    for i in range(clicks):
        box.fill(FILTER_4.format(x=f"0.{i + 1}"))
        ms = _timed_until(page, lambda: box.press("Enter"), CAPTION_DRAWN, f"p0 > 0.{i + 1}")
        out["table 4-term filter"].append(ms)
        wait_idle(page)

    # -- a 50-run overlay: the long-curve runs, 50 rows a page, select all on each page
    long_runs = min(LONG_RUNS, runs)
    box.fill("metrics.loss.count > 0")
    box.press("Enter")
    page.get_by_text(f"{long_runs:,} runs match").first.wait_for()
    wait_idle(page)
    page.get_by_role("combobox", name="Rows").first.click()
    page.get_by_role("option", name="50", exact=True).click()
    page.get_by_text("showing 1–50").first.wait_for()
    wait_idle(page)
    for i in range(min(clicks, long_runs // 50)):
        if i:
            page.get_by_role("button", name="Next →").click()
            page.get_by_text(f"showing {i * 50 + 1:,}–").first.wait_for()
            wait_idle(page)
        table = page.locator('[data-testid="stDataFrame"]').first
        table.wait_for(state="visible")
        page.wait_for_timeout(500)  # the grid settles (a rerun may replace it)
        header = grid_row_checkbox(page, table, SELECT_ALL)

        def select_all(xy=header):
            return page.mouse.click(*xy)

        out["overlay 50"].append(_timed_until(page, select_all, OVERLAY_DRAWN, 50))
        wait_idle(page)
        select_all()  # cleared, then the same 50 again within the loaders' TTL
        page.get_by_text("Select runs in the table").wait_for()
        wait_idle(page)
        out["overlay 50 (again)"].append(_timed_until(page, select_all, OVERLAY_DRAWN, 50))
        wait_idle(page)


def loader_costs(endpoint: str, calls: int) -> dict[str, list[float]]:
    """ms per call of the Runs page's loaders, bypassing Streamlit's cache (what a click that
    misses it pays before rendering), and the overlay's figures; run in a child process with the
    measured tree's packages (`--loaders`)."""
    os.environ["RUNSTREAM_ENDPOINT"] = endpoint
    from runstream_dashboard import charts
    from runstream_dashboard import queries as q

    api = q.api()
    long_ids = tuple(
        api.runs(PROJECT, filter="metrics.loss.count > 0", order_by="run_id", limit=50)["run_id"]
    )
    param_keys = tuple(f"p{k}" for k in range(8))
    metric_keys = ("loss", *(f"m{k}" for k in range(5)))
    out: dict[str, list[float]] = {"loader: runs page (100 rows)": [], "loader: 50-run series": []}
    out["charts: 2 overlay figures"] = []
    for i in range(calls + 2):  # 2 warm-up calls
        t = time.perf_counter()
        page = q.search_runs.__wrapped__(PROJECT, "", ("-start",), 100, "", param_keys, metric_keys)
        t1 = time.perf_counter()
        series = q.metric_series.__wrapped__(PROJECT, long_ids, ("loss", "m0"), "step", 1000)
        t2 = time.perf_counter()
        labels = {r: r for r in long_ids}
        for key in ("loss", "m0"):
            charts.learning_curves(series, key, labels, x_axis="step", smoothing=0.6)
        t3 = time.perf_counter()
        assert len(page.runs) == 100 and series["run_id"].nunique() == 50, (len(page.runs), len(series))
        if i >= 2:
            out["loader: runs page (100 rows)"].append((t1 - t) * 1000)
            out["loader: 50-run series"].append((t2 - t1) * 1000)
            out["charts: 2 overlay figures"].append((t3 - t2) * 1000)
    print(json.dumps(out))
    return out


def run_once(folder: Path, runs: int, clicks: int, tree: Path | None) -> dict[str, list[float]]:
    from tests.e2e.dashboard_process import DashboardProcess
    from tests.server_process import ServerProcess

    extra = _env_for(tree)
    data = folder / "server"
    if tree is not None:  # a copy: this tree's migrations may be newer than the other tree knows
        data = folder / "server-other-tree"
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(folder / "server" / "chdb", data / "chdb", symlinks=True)  # chDB links relatively
    server = ServerProcess(data, env=extra).start(timeout_s=180)
    dash = None
    saved = dict(os.environ)
    try:
        if extra:
            os.environ.update(extra)  # the dashboard child inherits it
        loaders = subprocess.run(
            [sys.executable, __file__, "--loaders", server.endpoint, "--clicks", str(max(clicks, 5))],
            check=True, capture_output=True, text=True, env={**os.environ},
        )  # fmt: skip
        dash = DashboardProcess(server.endpoint, folder / "streamlit.log").start()
        return {**measure(dash.url, runs, clicks), **json.loads(loaders.stdout.strip().splitlines()[-1])}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if dash is not None:
            dash.stop()
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--clicks", type=int, default=4, help="clicks per row (overlay: at most 4)")
    ap.add_argument("--data-dir", default="", help="kept, and reused when it holds data")
    ap.add_argument("--tree", default="", help="another checkout to measure first (before/after)")
    ap.add_argument("--tree-only", action="store_true", help="measure only --tree (not this checkout)")
    ap.add_argument("--loaders", default="", metavar="ENDPOINT", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.loaders:
        loader_costs(args.loaders, args.clicks)
        return 0
    folder = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="rs-dashclicks-"))
    global SHOTS
    SHOTS = folder
    try:
        if not (folder / "server" / "chdb").exists():
            t = time.perf_counter()
            build_data(folder / "server", args.runs)
            print(f"built {args.runs:,} runs in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        trees = ([("before", Path(args.tree))] if args.tree else []) + [("this tree", None)]
        if args.tree_only:
            trees = trees[:1]
        results = {label: run_once(folder, args.runs, args.clicks, tree) for label, tree in trees}
        print(
            f"\ndashboard clicks, {args.runs:,} runs; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus"
        )
        labels = [label for label, _ in trees]
        print("| click -> drawn (median ms) | " + " | ".join(labels) + " |")
        print("|---|" + "---:|" * len(labels))
        for row in results[labels[-1]]:
            cells = [
                f"{np.median(results[label][row]):.0f} (n={len(results[label][row])})"
                if results[label][row]
                else "-"
                for label in labels
            ]
            print(f"| {row} | " + " | ".join(cells) + " |")
    finally:
        if not args.data_dir:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
