"""Screenshots of the saved views, grouped curves and straggler views (docs/saved_views.png,
docs/grouped_curves.png, docs/straggler.png): a fresh embedded server seeded as the browser tests
seed it (tests/e2e/test_views_browser.py), the dashboard, and headless Debian chromium.

    .venv/bin/python -m tests.e2e.views_screenshots --out docs
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import runstream
from tests.e2e.dashboard_process import DashboardProcess, launch_chromium, wait_idle
from tests.e2e.screenshots import WIDTH, _save
from tests.e2e.test_views_browser import PROJECT, RANK_PROJECT, seed
from tests.server_process import ServerProcess


def shoot(base_url: str, endpoint: str, rank_run: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with runstream.Api(endpoint=endpoint) as api:
        every = [r.run_id for r in api.search_runs(PROJECT, order_by="-start").runs]
        api.save_view(
            PROJECT,
            "adam vs sgd · loss",
            {"curves": ["loss", "val_acc"], "runs": every, "group": "params.optimizer.name"},
        )
        api.save_view(
            PROJECT, "best adam runs", {"filter": 'params.optimizer.name = "adam"', "sort": "metrics.val_acc"}
        )
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.set_default_timeout(60_000)

        query = {
            "project": PROJECT,
            "curves": ["loss", "val_acc"],
            "runs": every,
            "group": "params.optimizer.name",
        }
        page.goto(f"{base_url}/?" + urlencode(query, doseq=True))
        wait_idle(page)
        page.get_by_text("Saved views").first.click()
        wait_idle(page)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length === 2")
        _save(page, out / "saved_views.png", 620)
        _save(page, out / "grouped_curves.png", 680, from_heading="Learning curves")

        page.goto(f"{base_url}/run?project={RANK_PROJECT}&run={rank_run}")
        wait_idle(page)
        page.get_by_role("tab", name="Ranks").click()
        page.get_by_text("held the others back most").first.wait_for()
        _save(page, out / "straggler.png", 900, from_heading="Stragglers")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "server").start()
        try:
            rank_run = seed(server.endpoint, server)
            dash = DashboardProcess(server.endpoint, Path(tmp) / "streamlit.log").start()
            try:
                shoot(dash.url, server.endpoint, rank_run, args.out)
            finally:
                dash.stop()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
