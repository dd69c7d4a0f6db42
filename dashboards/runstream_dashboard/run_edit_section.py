"""The run page's edit section: change the run's name, notes, tags, hypothesis and outcome (a key
with the write role; the server refuses others and says so) and see who changed what, when.
Kept apart from views/run.py, which only calls `show`."""

from __future__ import annotations

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import workflow_queries as wq
from runstream_dashboard.safe_text import md


def _tags_text(tags: dict[str, str]) -> str:
    return "\n".join(f"{k}={v}" if v else k for k, v in sorted(tags.items()))


def _parse_tags(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def show(project: str, run_id: str, name: str, notes: str, tags: dict[str, str]) -> None:
    try:
        history, hypothesis, outcome = wq.run_edits(project, run_id)
    except ServerError as exc:
        st.caption(f"Edits unavailable: {md(exc.details)}")
        return
    st.subheader("Hypothesis and outcome")
    if hypothesis or outcome:
        st.markdown(f"**Hypothesis:** {md(hypothesis or '—')}  \n**Outcome:** {md(outcome or '—')}")
    else:
        st.caption("None recorded yet: add them under Edit run.")
    with st.expander("Edit run", icon=":material/edit:"):
        with st.form("run_edit_form"):
            new_name = st.text_input("Name", value=name)
            new_notes = st.text_area("Notes", value=notes)
            new_tags = st.text_area("Tags (one per line: key=value)", value=_tags_text(tags))
            new_hypothesis = st.text_area("Hypothesis", value=hypothesis)
            new_outcome = st.text_area("Outcome", value=outcome)
            saved = st.form_submit_button("Save changes", icon=":material/save:")
        if saved:
            wanted = _parse_tags(new_tags)
            try:
                changed = wq.update_run(
                    project, run_id, name=new_name, notes=new_notes, hypothesis=new_hypothesis, outcome=new_outcome,
                    tags_add={k: v for k, v in wanted.items() if tags.get(k) != v},
                    tags_remove=[k for k in tags if k not in wanted],
                )  # fmt: skip
            except ServerError as exc:
                st.error(md(exc.details))
            else:
                st.toast(f"Saved: {changed} field(s) changed" if changed else "Nothing changed")
                st.rerun()
    st.subheader("Edit history")
    if history.empty:
        st.caption("Not edited since it was logged.")
    else:
        st.dataframe(history, hide_index=True, width="stretch", key="run_edit_history")
