"""Dashboard sign-in in a real headless Chromium against a real embedded server with auth required
and hashed keys: a viewer sees the sign-in form (never data) until they enter a key the server
accepts; a wrong key is refused; a project-A key sees project A only, while a second viewer signed
in at the same time with a project-B key sees B only (answers are cached per viewer); a reload in
the same browser stays signed in (session cookie) while another browser is asked for a key; signing
out returns to the form and ends the session; a signed-in viewer downloads an artifact with their own
key (the download runs outside the page's script run). The dashboard is started with an admin key in RUNSTREAM_API_KEY to prove it
does not use a process-wide key. Last, a dashboard given RUNSTREAM_TLS_CA reads a TLS-only server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import runstream
from runstream.tls import Tls
from runstream_services.auth import keyfile
from tests.e2e.dashboard_process import CHROMIUM, DashboardProcess, wait_idle
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess
from tests.tls_certs import TlsServerProcess, make_tls_files

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (never a downloaded browser)",
)

A, B = "alpha-team", "beta-team"
ARTIFACT = b"weights of the alpha run\n" * 40


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Server (auth required) with one run in each project (A's with an artifact); the dashboard,
    keys {A: ..., B: ..., "admin": ...} and the run ids {A: ..., B: ...}."""
    tmp = tmp_path_factory.mktemp("login")
    keys_file = tmp / "keys.json"
    made, run_ids = {}, {}
    with keyfile.editing(keys_file) as entries:
        for who, project, role in ((A, A, "read"), (B, B, "read"), ("admin", "*", "admin")):
            entry, made[who] = keyfile.make_entry(project, role, name=who)
            entries.append(entry)
    srv = ServerProcess(
        tmp / "data", env={"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys_file)}
    ).start()
    try:
        for project in (A, B):
            run = runstream.init(
                project=project, name=f"{project}-run", api_key=made["admin"],
                **quick_sdk_options(srv.endpoint, tmp / project),
            )  # fmt: skip
            run.log({"loss": 0.5}, step=0)
            if project == A:
                (tmp / "model.bin").write_bytes(ARTIFACT)
                run.log_artifact(tmp / "model.bin", name="weights")
            run_ids[project] = run.id
            assert run.finish(timeout_s=30)
        old = os.environ.get("RUNSTREAM_API_KEY")
        os.environ["RUNSTREAM_API_KEY"] = made["admin"]  # the dashboard must not use it
        try:
            dash = DashboardProcess(srv.endpoint, tmp / "streamlit.log").start()
        finally:
            if old is None:
                os.environ.pop("RUNSTREAM_API_KEY")
            else:
                os.environ["RUNSTREAM_API_KEY"] = old
        yield dash, made, run_ids
        dash.stop()
    finally:
        srv.stop()


def _new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    return context, page


def _sign_in(page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_function(  # signed in (the form is gone) or refused (an error under the form)
        """() => !document.body.innerText.includes('Sign in to Runstream')
                 || document.querySelector('[data-testid="stAlert"]') !== null"""
    )
    wait_idle(page)


def _projects_listed(page) -> list[str]:
    """The project column of the Projects page's table, as the browser drew it. The page is opened
    from the navigation, inside the signed-in session (a reload starts a new Streamlit session,
    which asks for the key again)."""
    page.get_by_role("link", name="Projects").click()
    page.get_by_role("heading", name="Projects").wait_for()
    wait_idle(page)
    table = page.locator('[data-testid="stDataFrame"] table[role="grid"]')
    table.locator("td").first.wait_for(state="attached")
    return table.evaluate(
        "t => [...t.querySelectorAll('tbody tr')].map(r => r.querySelector('td').innerText)"
    )


def test_wrong_key_is_refused_and_nothing_is_shown_before_sign_in(deployment, browser):
    dashboard, _, _ = deployment
    context, page = _new_page(browser)
    try:
        page.goto(f"{dashboard.url}/projects")
        wait_idle(page)
        assert page.get_by_role("heading", name="Sign in to Runstream").is_visible()
        body = page.inner_text("body")
        assert A not in body and B not in body  # not even with the admin key in the environment
        _sign_in(page, "rsk_000000000000_" + "x" * 43)
        page.get_by_text("This API key is not valid on this server").wait_for()
        assert page.get_by_role("heading", name="Sign in to Runstream").is_visible()
        _sign_in(page, "")
        page.get_by_text("Enter your API key.").wait_for()
    finally:
        context.close()


def test_each_viewer_sees_only_the_projects_of_their_own_key(deployment, browser):
    dashboard, keys, _ = deployment
    ctx_a, page_a = _new_page(browser)
    ctx_b, page_b = _new_page(browser)
    try:
        page_a.goto(dashboard.url)
        wait_idle(page_a)
        _sign_in(page_a, keys[A])
        assert keyfile.key_id_of(keys[A]) in page_a.inner_text('[data-testid="stSidebar"]')

        # a second viewer at the same time, through a link to A's runs: after signing in with B's
        # key the pages show B's runs and never A's
        page_b.goto(f"{dashboard.url}/runs?project={A}")
        wait_idle(page_b)
        _sign_in(page_b, keys[B])
        page_b.get_by_text(f"{B}-run").first.wait_for(state="attached")  # a cell of the runs grid
        assert A not in page_b.inner_text("body")

        # the same loader with the same arguments, asked by both within its cache TTL (5 s): each
        # viewer gets the answer made with their own key (a cache shared by viewers fails here)
        for _ in range(2):
            assert _projects_listed(page_a) == [A]
            assert _projects_listed(page_b) == [B]
        page_a.reload()  # a new Streamlit session in the same browser: resumed by the session cookie
        page_a.get_by_role("link", name="Projects").wait_for()
        assert _projects_listed(page_a) == [A]
        ctx_c, page_c = _new_page(browser)  # another browser: no cookie, the key is asked for
        try:
            page_c.goto(f"{dashboard.url}/projects")
            wait_idle(page_c)
            assert page_c.get_by_role("heading", name="Sign in to Runstream").is_visible()
            assert A not in page_c.inner_text("body")
        finally:
            ctx_c.close()
        page_a.get_by_role("link", name="Projects").wait_for()
        page_a.get_by_role("button", name="Sign out").click()
        page_a.get_by_role("heading", name="Sign in to Runstream").wait_for()
        wait_idle(page_a)
        assert A not in page_a.inner_text("body")
        page_a.reload()  # signed out: the cookie's token is forgotten, a reload asks again
        page_a.get_by_role("heading", name="Sign in to Runstream").wait_for()
    finally:
        ctx_a.close()
        ctx_b.close()


def test_a_signed_in_viewer_downloads_an_artifact_with_their_own_key(deployment, browser):
    """Streamlit runs a download button's data callable in a worker thread, outside the page's
    script run, where the session (and so the viewer's key) cannot be read: a callable that looks
    the key up there asks without one and the server refuses it (no download)."""
    dashboard, keys, run_ids = deployment
    context, page = _new_page(browser)
    try:
        page.goto(dashboard.url)
        wait_idle(page)
        _sign_in(page, keys[A])
        page.goto(f"{dashboard.url}/run?project={A}&run={run_ids[A]}")  # resumed by the cookie
        page.get_by_role("heading", name=f"{A}-run").wait_for()
        wait_idle(page)
        page.get_by_role("tab", name="Artifacts").click()
        with page.expect_download(timeout=30_000) as download:
            page.get_by_role("button", name="Download model.bin").click()
        assert Path(download.value.path()).read_bytes() == ARTIFACT
    finally:
        context.close()


def test_the_dashboard_reads_a_tls_server_with_the_ca_from_its_settings(browser, tmp_path):
    """`runstream dashboard` with RUNSTREAM_TLS_CA in its environment against a TLS-only server
    (auth off: no sign-in): the Projects page lists what the SDK logged over TLS."""
    certs = make_tls_files(tmp_path / "certs")
    srv = TlsServerProcess(
        tmp_path / "data", Tls(True, str(certs.ca)),
        ["--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key)],
    ).start()  # fmt: skip
    dash = None
    try:
        run = runstream.init(
            project="tls-project", tls_ca=str(certs.ca), **quick_sdk_options(srv.endpoint, tmp_path)
        )
        run.log({"loss": 0.5}, step=0)
        assert run.finish(timeout_s=30)
        old = os.environ.get("RUNSTREAM_TLS_CA")
        os.environ["RUNSTREAM_TLS_CA"] = str(certs.ca)
        try:
            dash = DashboardProcess(srv.endpoint, tmp_path / "streamlit.log").start()
        finally:
            if old is None:
                os.environ.pop("RUNSTREAM_TLS_CA")
            else:
                os.environ["RUNSTREAM_TLS_CA"] = old
        context, page = _new_page(browser)
        try:
            page.goto(dash.url)
            wait_idle(page)
            assert _projects_listed(page) == ["tls-project"]
        finally:
            context.close()
    finally:
        if dash is not None:
            dash.stop()
        srv.stop()
