"""The dashboard's sign-in gate (login.py) in Streamlit's AppTest, without a server: with
RUNSTREAM_DASHBOARD_AUTH=keys nothing but the sign-in form is drawn and no loader runs before a
key is accepted; a wrong setting is explained on the page; per_viewer keeps one cache per key.
The browser test with a real server is tests/e2e/test_dashboard_login_browser.py."""

from __future__ import annotations

import ast

import pandas as pd
from streamlit.testing.v1 import AppTest

from runstream_dashboard import APP_PATH, login
from runstream_dashboard import queries as q


def test_keys_mode_draws_only_the_form_and_calls_no_loader(monkeypatch):
    monkeypatch.setenv("RUNSTREAM_DASHBOARD_AUTH", "keys")
    monkeypatch.setenv("RUNSTREAM_API_KEY", "a-process-wide-key-that-must-not-be-used")
    calls = []

    def refuse(key: str) -> str | None:  # stand-in for the server's answer (no server in unit/)
        calls.append(key)
        return None if key == "good-key" else "This API key is not valid on this server."

    monkeypatch.setattr(q, "key_problem", refuse)
    monkeypatch.setattr(
        q, "list_projects", lambda: calls.append("list_projects") or pd.DataFrame({"project": []})
    )
    at = AppTest.from_file(str(APP_PATH), default_timeout=60).run()
    assert [t.value for t in at.title] == ["Sign in to Runstream"]
    assert calls == [] and not at.exception
    at.text_input(key="login_key").input("bad-key")
    at.button[0].click().run()
    assert calls == ["bad-key"] and "not valid" in at.error[0].value
    assert [t.value for t in at.title] == ["Sign in to Runstream"]
    at.text_input(key="login_key").input("good-key")
    at.button[0].click().run()
    assert calls[:2] == ["bad-key", "good-key"] and "list_projects" in calls  # data only after sign-in
    assert at.session_state[login._KEY] == "good-key" and "Sign in to Runstream" not in [
        t.value for t in at.title
    ]


def test_a_wrong_auth_setting_is_explained_on_the_page(monkeypatch):
    monkeypatch.setenv("RUNSTREAM_DASHBOARD_AUTH", "ldap")
    at = AppTest.from_file(str(APP_PATH), default_timeout=60).run()
    shown = at.error[0].value.replace("\\", "")  # md() escapes punctuation for Markdown
    assert "RUNSTREAM_DASHBOARD_AUTH='ldap': use one of auto, none, keys, oidc" in shown


def test_per_viewer_caches_answers_per_key(monkeypatch):
    made = []

    @login.per_viewer(ttl=60, show_spinner=False)
    def answer(x: int) -> tuple[str, int]:
        made.append(login.viewer_key())
        return login.viewer_key(), x

    viewer = {"key": "alice-key"}
    monkeypatch.setattr(login, "viewer_key", lambda: viewer["key"])
    answer.clear()
    assert answer(1) == ("alice-key", 1) and answer(1) == ("alice-key", 1)
    viewer["key"] = "bob-key"
    assert answer(1) == ("bob-key", 1)  # not alice's cached answer
    assert made == ["alice-key", "bob-key"]
    answer.clear()


def test_every_data_loader_of_the_dashboard_is_cached_per_viewer():
    """A loader cached with plain st.cache_data would hand one viewer's answer (made with their
    key) to another viewer asking the same question within its TTL. Only answers that do not
    depend on the viewer may use it: whether the server wants a key, and the OIDC key map."""
    allowed = {("queries.py", "server_wants_a_key"), ("login.py", "_user_keys")}
    shared = []
    for path in APP_PATH.parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                "cache_data" in ast.unparse(d) for d in node.decorator_list
            ):
                shared.append((path.name, node.name))
    assert set(shared) <= allowed, f"use @login.per_viewer(...) for {sorted(set(shared) - allowed)}"
