"""Entry point: `streamlit run app.py` (or `runstream dashboard`). Pages only render; every
call to the server goes through runstream_dashboard.queries, and from there through one
runstream.Api."""

from __future__ import annotations

import streamlit as st

from runstream_dashboard import login, state

st.set_page_config(page_title="Runstream", page_icon=":material/monitoring:", layout="wide")

PAGES = [
    st.Page("views/projects.py", title="Projects", url_path="projects", icon=":material/folder:"),
    st.Page("views/runs.py", title="Runs", url_path="runs", icon=":material/table_rows:", default=True),
    st.Page("views/sweep.py", title="Sweep", url_path="sweep", icon=":material/tune:"),
    st.Page("views/compare.py", title="Compare", url_path="compare", icon=":material/compare_arrows:"),
    st.Page("views/run.py", title="Run", url_path="run", icon=":material/description:"),
    st.Page("views/models.py", title="Models", url_path="models", icon=":material/model_training:"),
    st.Page("views/alerts.py", title="Alerts", url_path="alerts", icon=":material/notifications:"),
    st.Page(
        "views/model_version.py",
        title="Model version",
        url_path="model_version",
        icon=":material/deployed_code:",
    ),
]

login.gate()  # a sign-in form until this viewer has signed in, when the server needs a key
page = st.navigation(PAGES)
state.sidebar()
page.run()
