"""The project's alert rules (add, remove) and their recent firings with webhook delivery status."""

from __future__ import annotations

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import state
from runstream_dashboard import workflow_queries as wq
from runstream_dashboard.safe_text import md

project = state.require_project()
st.title("Alerts")
try:
    rules = wq.alert_rules(project)
    firings = wq.alert_firings(project)
except ServerError as exc:
    st.error(md(exc.details))
    st.stop()

st.subheader("Rules")
if rules.empty:
    st.caption("No alert rules in this project yet. Add one below, or with `runstream alerts add`.")
else:
    st.dataframe(rules, hide_index=True, width="stretch", key="alert_rules")

st.subheader("Recent firings")
if firings.empty:
    st.caption("No rule has fired yet.")
else:
    st.dataframe(firings, hide_index=True, width="stretch", key="alert_firings")

with st.expander("Add a rule", icon=":material/add_alert:"):
    with st.form("alert_add_form"):
        name = st.text_input("Name", placeholder="loss diverged")
        kind = st.selectbox("Kind", ["threshold", "nonfinite", "no_points", "crashed"])
        webhook = st.text_input("Webhook URL", placeholder="https://hooks.example.com/runstream")
        key = st.text_input("Metric key (threshold; nonfinite: empty = any)")
        left, mid, right = st.columns(3)
        op = left.selectbox("Op", [">", ">=", "<", "<=", "==", "!="])
        value = mid.number_input("Value", value=0.0, format="%g")
        last_n = right.number_input("Mean of the last N points", min_value=1, value=1, step=1)
        minutes = st.number_input("No points for (minutes)", min_value=0.0, value=15.0)
        added = st.form_submit_button("Add rule")
    if added:
        try:
            secret = wq.add_alert_rule(
                project, name, kind, webhook_url=webhook, key=key, op=op if kind == "threshold" else "",
                value=value, last_n=int(last_n), minutes=minutes if kind == "no_points" else 0.0,
            )  # fmt: skip
        except ServerError as exc:
            st.error(md(exc.details))
        else:
            st.success("Rule added. Its webhook signing secret (shown once):")
            st.code(secret, language=None)

if not rules.empty:
    with st.expander("Remove a rule", icon=":material/delete:"):
        labels = dict(zip(rules["rule_id"], rules["name"] + "  ·  " + rules["rule_id"], strict=True))
        picked = st.selectbox("Rule", list(labels), format_func=labels.get, index=None)
        if picked and st.button("Remove", type="primary"):
            try:
                wq.delete_alert_rule(project, picked)
            except ServerError as exc:
                st.error(md(exc.details))
            else:
                st.rerun()
