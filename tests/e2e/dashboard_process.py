"""The dashboard as a child process for browser tests, plus the headless Chromium they drive.
Streamlit is started exactly as `runstream dashboard` starts it (runstream_services.up), on a free
port, pointed at a real server through RUNSTREAM_ENDPOINT. With RUNSTREAM_E2E_FAULT set, Streamlit
starts behind tests/e2e/dashboard_faults.apply() instead (to prove a test fails when a behaviour
breaks); unset, the command is exactly `runstream dashboard`'s."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.e2e import dashboard_faults

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def free_port() -> int:
    from tests.server_process import free_port as _free

    return _free()


class DashboardProcess:
    def __init__(self, endpoint: str, log_path: Path):
        self.endpoint = endpoint
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90) -> DashboardProcess:
        from runstream_dashboard import APP_PATH
        from runstream_services.up import dashboard_command

        env = {**os.environ, "RUNSTREAM_ENDPOINT": self.endpoint, "PYTHONUNBUFFERED": "1"}
        env.pop("STREAMLIT_SERVER_ADDRESS", None)
        command = dashboard_command(self.port, "127.0.0.1")
        if env.get(dashboard_faults.ENV):
            command = _with_fault(command)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=APP_PATH.parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r,
            ):
                if r.status == 200:
                    return self
            time.sleep(0.3)
        raise TimeoutError(f"streamlit not healthy after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _with_fault(command: list[str]) -> list[str]:
    """`python -m streamlit run ...` -> the same run, after dashboard_faults.apply()."""
    assert command[1:3] == ["-m", "streamlit"], command
    bootstrap = (
        "import runpy, sys; from tests.e2e import dashboard_faults; dashboard_faults.apply(); "
        "sys.argv[0] = 'streamlit'; runpy.run_module('streamlit', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", bootstrap, *command[3:]]


def launch_chromium(playwright):
    """Debian's chromium, headless, never a downloaded browser."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


# ---------------------------------------------------------------- page helpers


def wait_idle(page, timeout_ms: int = 60_000) -> None:
    """Waits until Streamlit has finished the current script run and drawn it: a page title, no
    running indicator, no loading skeletons, three polls in a row."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_function(
        """() => {
            const status = document.querySelector('[data-testid="stStatusWidget"]');
            const busy = (status && status.innerText.includes('Running'))
                || document.querySelector('[data-testid="stSkeleton"]') !== null
                || document.querySelector('[data-testid="stMain"] h1') === null;  // every page has a title
            window.__rsIdle = busy ? 0 : (window.__rsIdle || 0) + 1;
            return window.__rsIdle >= 3;
        }""",
        timeout=timeout_ms,
        polling=200,
    )


def grid_row_checkbox(page, table, row: int) -> tuple[float, float]:
    """Where to click to select `row` in an st.dataframe (a glide-data-grid canvas: the first
    column holds the row-selection markers). Scrolls the table into view first; a Streamlit rerun
    can swap the element out between finding and measuring it, so a detached element is retried."""
    from playwright.sync_api import Error as PlaywrightError

    box = None
    for attempt in range(40):
        try:
            table.scroll_into_view_if_needed(timeout=10_000)
            box = table.bounding_box(timeout=10_000)
        except PlaywrightError as e:
            if "not attached" not in str(e) or attempt == 39:
                raise
        if box is not None:
            break
        page.wait_for_timeout(250)
    assert box is not None, "the table never stayed attached long enough to be measured"
    row_height = 35
    return box["x"] + 18, box["y"] + row_height * (row + 1) + row_height / 2


def plotly_trace_counts(page) -> list[int]:
    return page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].map(p => (p.data || []).length)"
    )
