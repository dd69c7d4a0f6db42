"""Who is looking: each viewer's own API key, so each sees only the projects that key allows.

The dashboard holds no process-wide key (it never reads RUNSTREAM_API_KEY). How a viewer gets a
key depends on RUNSTREAM_DASHBOARD_AUTH:

  auto (default)  oidc when Streamlit's secrets have an [auth] section; else keys when the server
                  refuses calls without a key; else none
  none            no sign-in; calls carry no key (a server with auth off: `runstream up`)
  keys            a sign-in form asks for the viewer's API key (`runstream keys create`); the server
                  checks it, and the session then uses it for every call
  oidc            Streamlit's st.login with the identity provider in .streamlit/secrets.toml
                  ([auth]: redirect_uri, cookie_secret, client_id, client_secret,
                  server_metadata_url); the signed-in e-mail picks the viewer's key from the JSON file
                  RUNSTREAM_DASHBOARD_USER_KEYS ({"alice@example.com": "rsk_..."}), a secret of the
                  dashboard's deployment

Answers are cached per viewer (`per_viewer`): a cached answer made with one key is never shown
to a session signed in with another.

A key sign-in lasts across reloads and tabs of the same browser for
RUNSTREAM_DASHBOARD_SESSION_HOURS (default 12): the browser gets a cookie holding a random token,
and only this process's memory maps the token to the key (the key never goes to the browser). A
restarted dashboard, or another replica without sticky sessions, asks again. Signing out forgets
the token.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from runstream_dashboard.safe_text import md, md_code

MODES = ("auto", "none", "keys", "oidc")
_KEY = "_runstream_viewer_key"  # session_state: the signed-in viewer's API key ("" for none)
_ERROR = "_runstream_login_error"
_COOKIE = "runstream_session"
_SET_COOKIE = "_runstream_set_cookie"  # session_state: a cookie value to send to the browser once
_TOKEN = "_runstream_session_token"  # session_state: this session's token in _Sessions


def mode() -> str:
    """The sign-in mode in force (auto resolved)."""
    chosen = os.environ.get("RUNSTREAM_DASHBOARD_AUTH", "auto").strip().lower() or "auto"
    if chosen not in MODES:
        raise ValueError(f"RUNSTREAM_DASHBOARD_AUTH={chosen!r}: use one of {', '.join(MODES)}")
    if chosen != "auto":
        return chosen
    if _oidc_configured():
        return "oidc"
    return "keys" if _server_wants_a_key() else "none"


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets.toml at all (FileNotFoundError, StreamlitSecretNotFoundError)
        return False


def _server_wants_a_key() -> bool:
    from runstream_dashboard import queries  # imported here: queries imports this module

    return queries.server_wants_a_key()


def fingerprint(key: str) -> str:
    """A hash of `key`, what caches and connections are keyed by ("anonymous" for no key)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else "anonymous"


def viewer_key() -> str:
    """This session's key ("" when signed in without one, i.e. mode none)."""
    return st.session_state.get(_KEY, "")


def viewer_id() -> str:
    """What cached answers are keyed by: a hash of this session's key."""
    return fingerprint(viewer_key())


def per_viewer(**cache_kwargs: Any) -> Callable:
    """st.cache_data(**cache_kwargs), keyed also by the viewer: two sessions with different keys
    never share an answer. The wrapped loader keeps its signature and its `.clear()`."""

    def wrap(fn: Callable) -> Callable:
        def cached(viewer: str, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        # Streamlit names a cache by module + qualname (+ source): give each loader its own
        cached.__module__, cached.__qualname__ = fn.__module__, f"{fn.__qualname__}.per_viewer"
        cached = st.cache_data(**cache_kwargs)(cached)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            return cached(viewer_id(), *args, **kwargs)

        call.clear = cached.clear  # type: ignore[attr-defined]
        return call

    return wrap


# ---------------------------------------------------------------- the gate


def gate() -> None:
    """Lets the script go on once this session may see data; otherwise draws the sign-in and
    stops the run. Call before st.navigation."""
    try:
        current = mode()
    except ValueError as exc:
        st.title("Dashboard settings")
        st.error(md(str(exc)))
        st.stop()
    if current == "none":
        st.session_state[_KEY] = ""
        return
    if current == "oidc":
        _oidc_gate()
    elif not st.session_state.get(_KEY) and not _resume():
        _send_cookie()
        _key_form()
        st.stop()
    _send_cookie()
    _signed_in_sidebar(current)


class _Sessions:
    """Browser sessions of this process: random token -> (key, expiry). In memory only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_token: dict[str, tuple[str, float]] = {}

    def open(self, key: str) -> str:
        hours = float(os.environ.get("RUNSTREAM_DASHBOARD_SESSION_HOURS", "12") or 12)
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._by_token = {t: v for t, v in self._by_token.items() if v[1] > now}
            self._by_token[token] = (key, now + hours * 3600)
        return token

    def key(self, token: str) -> str | None:
        with self._lock:
            found = self._by_token.get(token)
        return found[0] if found and found[1] > time.time() else None

    def close(self, token: str) -> None:
        with self._lock:
            self._by_token.pop(token, None)


@st.cache_resource(show_spinner=False)
def _sessions() -> _Sessions:
    return _Sessions()


def _cookie_token() -> str:
    try:
        return str(st.context.cookies.get(_COOKIE) or "")
    except Exception:  # noqa: BLE001 - no browser request (AppTest, bare mode)
        return ""


def _resume() -> bool:
    """Signs this new session in with the browser's session cookie, when it names a live token
    whose key the server still accepts."""
    token = _cookie_token()
    key = _sessions().key(token) if token else None
    if not key:
        return False
    from runstream_dashboard import queries

    if queries.key_problem(key) is not None:  # revoked since: sign in again
        _sessions().close(token)
        return False
    st.session_state[_KEY] = key
    st.session_state[_TOKEN] = token
    return True


def _send_cookie() -> None:
    """Sends a pending cookie (set, or cleared with "") to the browser, once."""
    value = st.session_state.pop(_SET_COOKIE, None)
    if value is None:
        return
    age = int(float(os.environ.get("RUNSTREAM_DASHBOARD_SESSION_HOURS", "12") or 12) * 3600) if value else 0
    with st.sidebar:
        st.html(
            f"<script>document.cookie = '{_COOKIE}={value}; path=/; max-age={age}; SameSite=Strict';</script>",
            unsafe_allow_javascript=True,
        )


def _sign_in() -> None:
    key = st.session_state.get("login_key", "").strip()
    from runstream_dashboard import queries

    problem = "Enter your API key." if not key else queries.key_problem(key)
    st.session_state[_ERROR] = problem
    if problem is None:
        st.session_state[_KEY] = key
        st.session_state["login_key"] = ""  # the key is not kept in the widget
        token = st.session_state[_TOKEN] = _sessions().open(key)
        st.session_state[_SET_COOKIE] = token  # URL-safe base64: nothing to quote


def _key_form() -> None:
    st.title("Sign in to Runstream")
    st.write("This server needs an API key. Use your own: it decides which projects you see.")
    with st.form("login", enter_to_submit=True):
        st.text_input("API key", type="password", key="login_key", placeholder="rsk_…")
        st.form_submit_button("Sign in", on_click=_sign_in, type="primary")
    if st.session_state.get(_ERROR):
        st.error(md(st.session_state[_ERROR]))
    st.caption("An admin makes keys with `runstream keys create --project NAME --role read`.")


def _oidc_gate() -> None:
    if not st.user.is_logged_in:
        st.title("Sign in to Runstream")
        st.button("Sign in", on_click=st.login, type="primary")
        st.stop()
    email = str(st.user.get("email") or "")
    key = _user_keys().get(email.lower())
    if not key:
        st.title("No access yet")
        st.error(md(f"No Runstream key is assigned to {email or 'this account'}. Ask an admin to add one."))
        st.button("Sign out", on_click=st.logout)
        st.stop()
    st.session_state[_KEY] = key


@st.cache_data(ttl=30, show_spinner=False)
def _user_keys() -> dict[str, str]:
    """RUNSTREAM_DASHBOARD_USER_KEYS: e-mail -> API key, for the OIDC mode."""
    path = os.environ.get("RUNSTREAM_DASHBOARD_USER_KEYS", "")
    if not path:
        return {}
    data = json.loads(Path(path).expanduser().read_text())
    return {str(k).lower(): str(v) for k, v in data.items()}


def _sign_out() -> None:
    st.session_state[_KEY] = ""
    st.session_state[_ERROR] = None
    for token in {st.session_state.pop(_TOKEN, ""), _cookie_token()} - {""}:
        _sessions().close(token)
    st.session_state[_SET_COOKIE] = ""  # clears the browser's cookie
    if mode() == "oidc":
        st.logout()


def _signed_in_sidebar(current: str) -> None:
    key = viewer_key()
    who = str(st.user.get("email") or "") if current == "oidc" else ""
    label = who or ("key " + ("_".join(key.split("_")[:2]) if key.startswith("rsk_") else "…" + key[-4:]))
    with st.sidebar:
        st.caption(f"signed in: {md_code(label)}")
        st.button("Sign out", on_click=_sign_out, icon=":material/logout:", key="sign_out")
