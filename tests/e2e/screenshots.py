"""Regenerates the README screenshots (docs/*.png): a fresh embedded server, the demo sweep
logged through the SDK, the dashboard, and headless Debian chromium.

    .venv/bin/python -m tests.e2e.screenshots --out docs
    .venv/bin/python -m tests.e2e.screenshots --out /tmp/shots --base-url http://127.0.0.1:8501 \\
        --endpoint 127.0.0.1:7777      # against a dashboard that is already running
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import runstream
from tests.e2e.dashboard_process import DashboardProcess, grid_row_checkbox, launch_chromium, wait_idle

WIDTH = 1440
MAX_BYTES = 300 * 1024


def _runs(endpoint: str, project: str, filter_text: str = "", order: str = "-start"):
    with runstream.Api(endpoint=endpoint, timeout_s=30) as api:
        return api.search_runs(project, filter=filter_text, order_by=order, page_size=100).runs


def _save(page, path: Path, height: int, from_heading: str | None = None) -> None:
    """A screenshot `height` px tall (from the top, or from a heading on a tall page), quantized
    to a palette PNG so it stays well under 300 KB."""
    from PIL import Image

    top = 0
    if from_heading:
        page.set_viewport_size({"width": WIDTH, "height": 2400})
        page.wait_for_timeout(1500)
        top = int(page.get_by_role("heading", name=from_heading).bounding_box()["y"]) - 16
    else:
        page.set_viewport_size({"width": WIDTH, "height": height})
    page.wait_for_timeout(1500)
    raw = page.screenshot(type="png")
    image = Image.open(io.BytesIO(raw)).convert("RGB").crop((0, top, WIDTH, top + height))
    image = image.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    image.save(path, format="PNG", optimize=True)
    size = path.stat().st_size
    print(f"{path}: {size // 1024} KB")
    if size > MAX_BYTES:
        raise SystemExit(f"{path} is {size} bytes, over {MAX_BYTES}")


def shoot(base_url: str, endpoint: str, out: Path, project: str = "demo") -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    best = _runs(endpoint, project, 'state = "finished"', "-metrics.val_acc")
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.set_default_timeout(60_000)

        page.goto(f"{base_url}/projects")
        wait_idle(page)
        _save(page, out / "projects.png", 560)

        page.goto(f"{base_url}/?project={project}")
        wait_idle(page)
        _save(page, out / "runs.png", 900)

        box = page.get_by_label("Filter", exact=True).and_(page.locator("input"))
        box.fill('params.optimizer.name = "adam" and state = "finished"')
        box.press("Enter")
        wait_idle(page)
        page.get_by_role("combobox", name="Sort by").first.click()
        page.get_by_role("option", name="metrics.val_acc").click()
        wait_idle(page)
        table = page.locator('[data-testid="stDataFrame"]').first
        for row in range(4):
            page.mouse.click(*grid_row_checkbox(page, table, row))
            wait_idle(page)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2")
        _save(page, out / "curves.png", 820, from_heading="Learning curves")

        page.goto(f"{base_url}/sweep?project={project}")
        wait_idle(page)
        sweep_filter = page.get_by_label("Runs (filter)", exact=True).and_(page.locator("input"))
        sweep_filter.fill('group = "grid-1" and state = "finished"')
        sweep_filter.press("Enter")
        wait_idle(page)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1")
        _save(page, out / "sweep.png", 900)

        page.goto(f"{base_url}/run?project={project}&run={best[0].run_id}")
        wait_idle(page)
        _save(page, out / "run.png", 1000)
        page.get_by_role("tab", name="Artifacts").click()
        page.locator('[data-testid="stImage"] img').first.wait_for()
        _save(page, out / "run_artifacts.png", 900)

        ids = ",".join(r.run_id for r in best[:3])
        page.goto(f"{base_url}/compare?project={project}&runs={ids}")
        wait_idle(page)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1")
        _save(page, out / "compare.png", 1000)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="docs", type=Path)
    parser.add_argument("--base-url", help="a running dashboard (default: start server + demo + dashboard)")
    parser.add_argument("--endpoint", help="its server (with --base-url)")
    args = parser.parse_args()
    if args.base_url:
        shoot(args.base_url.rstrip("/"), args.endpoint, args.out)
        return
    from runstream_services.demo import log_demo_sweep
    from tests.server_process import ServerProcess

    with tempfile.TemporaryDirectory(prefix="runstream-shots-") as tmp:
        server = ServerProcess(Path(tmp) / "server").start()
        dashboard = None
        try:
            log_demo_sweep(server.endpoint)
            dashboard = DashboardProcess(server.endpoint, Path(tmp) / "streamlit.log").start()
            shoot(dashboard.url, server.endpoint, args.out)
        finally:
            if dashboard:
                dashboard.stop()
            server.stop()


if __name__ == "__main__":
    main()
