"""The run page's Console tab in a real headless Chromium (Debian's, through Playwright) against a
real embedded server: two ranks of a training job (child processes) printed on stdout and stderr;
the tab shows both ranks' lines, the search box narrows them on the server, the rank and stream
selectors filter; a run still printing shows its new lines without a reload (live refresh).

Set RUNSTREAM_DOCS_SHOTS=docs to also write the documentation screenshot docs/console.png."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import ROOT
from tests.e2e.dashboard_process import CHROMIUM, DashboardProcess, launch_chromium, wait_idle
from tests.server_process import ServerProcess

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (never a downloaded browser)",
)

PROJECT = "console-ui"
JOB = "vision-7"
TRAIN = textwrap.dedent(
    """
    import sys, time, runstream
    endpoint, spool, steps, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    run = runstream.init(project="console-ui", name="resnet-ddp", endpoint=endpoint, spool_dir=spool,
                         flush_interval_s=0.1, system_metrics_interval_s=0, capture_packages=False)
    r = run.rank
    print(f"rank {r}: 50,000 training images, 10,000 validation images, batch size 256")
    for step in range(steps):
        loss = 2.3 / (1 + 0.05 * step) + 0.01 * r
        print(f"rank {r} step {step:4d}  loss {loss:.4f}  lr 0.0100  throughput {1800 + 7 * r} img/s")
        if step % 25 == 10:
            print(f"rank {r}: warning: gradient norm 14.2 clipped to 5.0 at step {step}", file=sys.stderr)
        if r == 1 and step == 57:
            print("rank 1: loss scale overflow, skipping step 57 (NaN in gradients)", file=sys.stderr)
        run.log({"loss": loss}, step=step)
        time.sleep(pause)
    print(f"rank {r}: validation accuracy 0.9{12 + r}")
    run.finish()
    """
)


def start_training(
    endpoint: str, tmp: Path, job: str, ranks: int, steps: int, pause: float
) -> list[subprocess.Popen]:
    """`ranks` processes of one job; its run id is torch-<job> (RUNSTREAM_RUN_ID for one rank)."""
    env = {**os.environ, "WORLD_SIZE": str(ranks), "TORCHELASTIC_RUN_ID": job, "PYTHONPATH": str(ROOT)}
    if ranks == 1:
        env["RUNSTREAM_RUN_ID"] = f"torch-{job}"
    return [
        subprocess.Popen(
            [sys.executable, "-c", TRAIN, endpoint, str(tmp / f"spool-{job}-{r}"), str(steps), str(pause)],
            env={**env, "RANK": str(r)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for r in range(ranks)
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-server")
    srv = ServerProcess(tmp / "data").start()
    procs = start_training(srv.endpoint, tmp, JOB, ranks=2, steps=80, pause=0.05)  # ranks interleave
    assert [p.wait(240) for p in procs] == [0, 0]
    yield srv, tmp
    srv.stop()


@pytest.fixture(scope="module")
def dashboard(server, tmp_path_factory):
    dash = DashboardProcess(
        server[0].endpoint, tmp_path_factory.mktemp("console-dash") / "streamlit.log"
    ).start()
    yield dash
    dash.stop()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        context = browser.new_context(viewport={"width": 1440, "height": 1200})
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def console_text(page) -> str:
    """The text of the console's code block ('' when none is shown).

    One read in the page: counting the blocks and then reading the first raced a rerun that
    removed the block in between (inner_text then waited its full timeout for it)."""
    block = page.locator('.st-key-console_lines [data-testid="stCode"]')
    return block.evaluate_all("els => els.length ? els[0].innerText : ''")


def wait_console(page, condition, what: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        wait_idle(page)
        text = console_text(page)
        if condition(text):
            return text
        page.wait_for_timeout(300)
    raise AssertionError(f"{what}; the console shows:\n{text[-2000:]}")


def open_console(page, dashboard, run_id: str) -> None:
    page.goto(f"{dashboard.url}/run?project={PROJECT}&run={run_id}")
    wait_idle(page)
    page.get_by_role("tab", name="Console").click()
    wait_idle(page)


def pick(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def test_console_tab_shows_both_ranks_and_searches_on_the_server(dashboard, page):
    open_console(page, dashboard, f"torch-{JOB}")
    text = wait_console(page, lambda t: "validation accuracy" in t, "both ranks' lines never showed")
    assert "[0]   rank 0 step   79" in text and "[1]   rank 1 step   79" in text, text[-1500:]
    assert "[1] ! rank 1: loss scale overflow" in text  # stderr lines are marked
    assert text.count("\n") + 1 == 85 + 86  # every line of both ranks (the tab shows up to 1,000)

    box = page.get_by_role("textbox", name="Search lines")
    box.fill("nan in GRADIENTS")
    box.press("Enter")
    text = wait_console(page, lambda t: t.count("\n") == 0 and "overflow" in t, "the search did not narrow")
    assert text.strip() == "! rank 1: loss scale overflow, skipping step 57 (NaN in gradients)"
    page.get_by_text("1 line containing 'nan in GRADIENTS'", exact=True).wait_for()

    box.fill("warning")
    box.press("Enter")
    pick(page, "Rank", "0")
    text = wait_console(page, lambda t: "rank 0: warning" in t and "rank 1" not in t, "rank filter")
    assert [line.strip() for line in text.splitlines()] == [
        f"! rank 0: warning: gradient norm 14.2 clipped to 5.0 at step {s}" for s in (10, 35, 60)
    ]
    pick(page, "Stream", "stdout")
    wait_console(page, lambda t: t == "", "stdout has no warnings")
    page.get_by_text("No console line contains 'warning'.", exact=True).wait_for()

    shots = os.environ.get("RUNSTREAM_DOCS_SHOTS")
    if shots:  # the documentation screenshot: the last 100 lines of both ranks, stderr marked
        from tests.e2e.screenshots import _save

        pick(page, "Stream", "stdout + stderr")
        pick(page, "Rank", "all")
        pick(page, "Last lines", "100")
        box.fill("")
        box.press("Enter")
        wait_console(page, lambda t: "[1] !" in t and "[0]" in t and t.count("\n") == 99, "screenshot view")
        _save(page, Path(shots) / "console.png", 900)


def test_a_running_runs_console_updates_without_a_reload(server, dashboard, page):
    srv, tmp = server
    (proc,) = start_training(srv.endpoint, tmp, "live-1", ranks=1, steps=400, pause=0.1)
    try:
        deadline = time.monotonic() + 60
        while True:  # the run exists once rank 0's run_start is stored
            page.goto(f"{dashboard.url}/run?project={PROJECT}&run=torch-live-1")
            wait_idle(page)
            if page.get_by_role("tab", name="Console").count() or time.monotonic() > deadline:
                break
            page.wait_for_timeout(500)
        page.get_by_role("tab", name="Console").click()
        first = wait_console(page, lambda t: "step" in t, "no line of the running run")
        first_step = max(int(s) for s in re.findall(r"step\s+(\d+)", first))
        later = wait_console(  # the fragment reloads every 5 s; no navigation here
            page,
            lambda t: max((int(s) for s in re.findall(r"step\s+(\d+)", t)), default=-1) >= first_step + 20,
            "the console did not refresh by itself",
            timeout_s=45,
        )
        assert "rank 0 step" in later
        assert proc.poll() is None, "the run was still printing while the page refreshed"
    finally:
        proc.kill()
        proc.wait()
