"""The run page's registry section: what the run consumed (run.use_artifact: artifact and model
versions, each linked to the run that made it or to its version page) and the model versions
registered from it (linked to their pages). Kept apart from views/run.py, which only calls `show`."""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import model_queries as mq
from runstream_dashboard.safe_text import md


def show(project: str, run_id: str) -> None:
    try:
        reg = mq.run_registry(project, run_id)
    except ServerError as exc:
        st.caption(f"Registry unavailable: {md(exc.details)}")
        return
    st.subheader("Inputs and models")
    if reg.inputs.empty and reg.versions.empty:
        st.caption(
            "This run recorded no inputs (run.use_artifact) and no model version was registered from it."
        )
        return
    if not reg.inputs.empty:
        inputs = reg.inputs.copy()
        inputs.insert(
            0,
            "open",
            [
                f"./model_version?{urlencode({'project': project, 'model': r['name'], 'version': r['version']})}"
                if r["kind"] == "model_version"
                else f"./run?{urlencode({'project': project, 'run': r['source_run_id']})}"
                for _, r in inputs.iterrows()
            ],
        )
        st.caption(
            "Consumed by this run (resolved when it asked: an alias is stored as the version it named)"
        )
        st.dataframe(
            inputs,
            hide_index=True,
            width="stretch",
            key="run_inputs",
            column_config={"open": st.column_config.LinkColumn("", display_text="open", width="small")},
        )
    for _, v in reg.versions.iterrows():
        aliases = f" ({v['aliases']})" if v["aliases"] else ""
        st.page_link(
            "views/model_version.py",
            label=f"Registered as {md(v['model'])} v{v['version']}{md(aliases)}",
            icon=":material/deployed_code:",
            query_params={"project": project, "model": v["model"], "version": str(v["version"])},
        )
