"""The model registry, addressable as /models?project=<p> (every model, and the registry's audit
log) and /models?project=<p>&model=<name> (one model: its versions, its aliases and who moved
them, its metadata history and audit log). A version opens /model_version; a version's run opens
/run. Registry text (names, descriptions, tags, reasons) reaches Markdown through safe_text."""

from __future__ import annotations

from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import model_queries as mq
from runstream_dashboard import state
from runstream_dashboard.safe_text import md, md_code

project = state.require_project()
name = st.query_params.get("model") or ""


def _events_table(events: pd.DataFrame, key: str) -> None:
    if events.empty:
        st.caption("No registry actions yet.")
        return
    st.dataframe(
        events,
        hide_index=True,
        width="stretch",
        key=key,
        column_config={"time": st.column_config.DatetimeColumn("time", format="YYYY-MM-DD HH:mm:ss")},
    )


def _link(page: str, **params) -> str:
    return f"./{page}?{urlencode({'project': project, **params})}"


if not name:
    st.title("Models")
    try:
        models = mq.models(project)
    except ServerError as exc:
        st.error(md(exc.details))
        st.stop()
    tab_models, tab_audit = st.tabs(["Models", "Audit log"])
    with tab_models:
        if models.empty:
            st.info(
                "No registered models in this project yet. Register one from a run with "
                "`run.register_model(artifact, name)` or `runstream.Api().create_model_version(...)`."
            )
        else:
            models.insert(0, "open", [_link("models", model=m) for m in models["name"]])
            st.caption(f"{len(models):,} models")
            st.dataframe(
                models,
                hide_index=True,
                width="stretch",
                key="models_table",
                column_config={
                    "open": st.column_config.LinkColumn("", display_text="open", width="small"),
                    "latest_version": st.column_config.NumberColumn("latest", format="v%d"),
                    "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
                },
            )
    with tab_audit:
        try:
            _events_table(mq.events(project), "registry_audit")
        except ServerError as exc:
            st.error(md(exc.details))
    st.stop()

try:
    model = mq.model(project, name)
    versions = mq.versions(project, name)
except ServerError as exc:
    st.title("Models")
    st.error(md(exc.details))
    st.stop()

st.title(f"Model {md(name)}")
st.page_link(
    "views/models.py", label="All models", icon=":material/arrow_back:", query_params={"project": project}
)
aliases = " ".join(f":violet-badge[{md(a)} → v{v}]" for a, v in model["aliases"].items())
protected = ", ".join(md_code(a) for a in model["protected_aliases"]) or "none"
st.markdown(
    f"latest **v{model['latest_version']}** · {aliases or 'no aliases'}  \n"
    f"protected aliases (admin key to move): {protected} · created by {md_code(model['creator'])}"
    f" {pd.Timestamp(model['created_ms'], unit='ms'):%Y-%m-%d %H:%M}"
)
if model["description"]:
    st.text(model["description"])  # anyone's text: shown as it is
if model["tags"]:
    st.markdown(" ".join(f":blue-badge[{md(k)}={md(v)}]" for k, v in model["tags"].items()))

tab_versions, tab_aliases, tab_history, tab_audit = st.tabs(
    ["Versions", "Aliases", "Metadata history", "Audit log"]
)
with tab_versions:
    if versions.empty:
        st.caption("No versions yet.")
    else:
        shown = versions.copy()
        shown.insert(0, "open", [_link("model_version", model=name, version=v) for v in shown["version"]])
        shown.insert(5, "run", [_link("run", run=r) for r in shown["run_id"]])
        st.dataframe(
            shown,
            hide_index=True,
            width="stretch",
            key="model_versions_table",
            column_order=["open", "version", "aliases", "description", "created", "creator", "run", "artifact",
                          "tags", "sha256"],
            column_config={
                "open": st.column_config.LinkColumn("", display_text="open", width="small"),
                "version": st.column_config.NumberColumn("version", format="v%d"),
                "run": st.column_config.LinkColumn("run", display_text=r"run=(.*)$"),
                "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
            },
        )  # fmt: skip
with tab_aliases:
    st.caption("Every alias move, newest first: who moved it, from which version to which, and why.")
    try:
        _events_table(mq.alias_moves(project, name), "alias_moves")
    except ServerError as exc:
        st.error(md(exc.details))
with tab_history:
    history = pd.DataFrame(
        [
            {"time": pd.Timestamp(h["time_ms"], unit="ms"), "actor": h["actor"], "description": h["description"],
             "tags": ", ".join(f"{k}={v}" for k, v in sorted(h["tags"].items()))}
            for h in model["history"]
        ],
        columns=["time", "actor", "description", "tags"],
    )  # fmt: skip
    st.caption(
        "The model's description and tags as created, then every edit (versions themselves never change)."
    )
    _events_table(history, "model_history")
with tab_audit:
    try:
        _events_table(mq.events(project, name), "model_audit")
    except ServerError as exc:
        st.error(md(exc.details))
