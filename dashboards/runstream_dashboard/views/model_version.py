"""One model version, addressable as /model_version?project=<p>&model=<name>&version=<n>: what it is
made of (the run, with a link to its page; the artifact's files and digest; the commit; the
datasets; the metrics snapshot taken at registration), its aliases, its metadata history, and its
lineage drawn as a graph (what it came from and what was made from it), each run in the graph
linked to its page and each model version to its own."""

from __future__ import annotations

from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import model_queries as mq
from runstream_dashboard import state
from runstream_dashboard.lineage_chart import lineage_figure
from runstream_dashboard.safe_text import md, md_code

project = state.require_project()
name = st.query_params.get("model") or ""
number_text = st.query_params.get("version") or ""

if not name or not number_text.isdigit():
    st.title("Model version")
    st.info("Open a version from the Models page.")
    st.page_link(
        "views/models.py", label="Models", icon=":material/model_training:", query_params={"project": project}
    )
    st.stop()
number = int(number_text)

try:
    v = mq.version(project, name, number)
except ServerError as exc:
    st.title(f"{md(name)}:{number}")
    st.error(md(exc.details))
    st.stop()

st.title(f"{md(name)} v{number}")
st.page_link(
    "views/models.py", label=f"Model {md(name)}", icon=":material/arrow_back:",
    query_params={"project": project, "model": name},
)  # fmt: skip
badges = " ".join(f":violet-badge[{md(a)}]" for a in v["aliases"])
st.markdown(
    f"{badges + ' · ' if badges else ''}created {pd.Timestamp(v['created_ms'], unit='ms'):%Y-%m-%d %H:%M:%S} by "
    f"{md_code(v['creator'])} · artifact {md_code(v['artifact_name'] + ':' + str(v['artifact_version']))} · "
    f"sha256 {md_code(v['artifact_sha256'])}"
)
st.page_link(
    "views/run.py", label=f"Run {v['run_id']}", icon=":material/description:",
    query_params={"project": project, "run": v["run_id"]},
)  # fmt: skip
if v["description"]:
    st.text(v["description"])
if v["tags"]:
    st.markdown(" ".join(f":blue-badge[{md(k)}={md(val)}]" for k, val in v["tags"].items()))

tab_lineage, tab_facts, tab_history = st.tabs(["Lineage", "Run, data and metrics", "Metadata history"])

with tab_facts:
    left, right = st.columns(2)
    with left:
        st.subheader("Code")
        dirty = " (uncommitted changes)" if v["git_dirty"] else ""
        st.markdown(f"commit {md_code(v['git_commit'] or '—')}{dirty}")
        st.subheader("Datasets")
        if v["datasets"]:
            st.dataframe(
                pd.DataFrame(v["datasets"]), hide_index=True, width="stretch", key="version_datasets"
            )
        else:
            st.caption("The run recorded no datasets.")
        st.subheader("Files")
        st.dataframe(pd.DataFrame(v["files"]), hide_index=True, width="stretch", key="version_files")
    with right:
        st.subheader("Metrics at registration")
        metrics = pd.DataFrame(
            [{"key": k, **m} for k, m in v["metrics"].items()],
            columns=["key", "last", "min", "max", "count", "last_step"],
        )
        if metrics.empty:
            st.caption("No metrics were snapshotted.")
        else:
            st.dataframe(
                metrics,
                hide_index=True,
                width="stretch",
                key="version_metrics",
                column_config={
                    c: st.column_config.NumberColumn(c, format="%.5g") for c in ("last", "min", "max")
                },
            )

with tab_history:
    st.caption("Description and tags as created, then every edit; the version itself never changes.")
    st.dataframe(
        pd.DataFrame(
            [
                {"time": pd.Timestamp(h["time_ms"], unit="ms"), "actor": h["actor"],
                 "description": h["description"], "tags": ", ".join(f"{k}={x}" for k, x in sorted(h["tags"].items()))}
                for h in v["history"]
            ],
            columns=["time", "actor", "description", "tags"],
        ),
        hide_index=True,
        width="stretch",
        key="version_history",
    )  # fmt: skip

with tab_lineage:
    c1, c2 = st.columns([2, 1])
    direction = (
        c1.segmented_control(
            "Direction", ["both", "upstream", "downstream"], default="both", key="lineage_direction"
        )
        or "both"
    )
    depth = c2.number_input("Depth", min_value=1, max_value=50, value=10, key="lineage_depth")
    try:
        graph = mq.lineage(project, name, number, direction=direction, depth=int(depth))
    except ServerError as exc:
        st.error(md(exc.details))
        st.stop()
    st.plotly_chart(lineage_figure(graph), width="stretch", key="lineage_graph")
    notes = []
    if graph.truncated:
        notes.append("the depth or node bound left part of the graph out")
    if graph.missing:
        notes.append(f"{len(graph.missing)} referenced node(s) are not stored (deleted or never logged)")
    st.caption(
        f"{len(graph.nodes)} nodes, {len(graph.edges)} edges; arrows point the way data flowed"
        + ("; " + "; ".join(notes) if notes else "")
    )

    def _open(n) -> str | None:
        if n.missing:
            return None
        if n.kind == "run":
            return f"./run?{urlencode({'project': project, 'run': n.name})}"
        if n.kind == "model_version":
            return f"./model_version?{urlencode({'project': project, 'model': n.name, 'version': n.version})}"
        return None

    nodes = pd.DataFrame(
        [
            {"open": _open(n), "kind": n.kind.replace("_", " "), "label": n.label, "depth": n.depth,
             "missing": n.missing, "id": n.id}
            for n in sorted(graph.nodes, key=lambda n: (n.depth, n.kind, n.label))
        ],
        columns=["open", "kind", "label", "depth", "missing", "id"],
    )  # fmt: skip
    st.dataframe(
        nodes,
        hide_index=True,
        width="stretch",
        key="lineage_nodes",
        column_config={"open": st.column_config.LinkColumn("", display_text="open", width="small")},
    )
