"""The dashboard shows what any writer of a project logged to everyone who reads it: run names,
groups, hosts, tags, notes, keys, artifact paths, context, error details. None of it may become a
link, an image or HTML on a reader's page (issue 10, item 21).

Every page is rendered with AppTest from runs whose user-controlled strings are Markdown links,
images, raw HTML and backtick breakouts, then every string the page hands to a Markdown renderer
(bodies of markdown/title/caption/alerts, widget, tab and expander labels, image captions, metric
labels) and every text of its Plotly figures is checked: outside code spans and with backslash
escapes removed, no link, image, autolink or tag syntax may be left. Elements that render text
literally (st.text, st.code, dataframes, select options) are allowed as they are; an element type
this test does not know fails it, so a new element is classified on purpose. The data comes from a
stand-in data layer (test_dashboard_pages.FakeQueries with hostile strings): a unit test has no
server."""

from __future__ import annotations

import dataclasses
import json
import re

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from runstream.errors import ServerError
from runstream_dashboard import APP_PATH
from runstream_dashboard import queries as q
from runstream_dashboard.safe_text import md, md_code, md_code_block, plotly_text
from tests.unit.test_dashboard_pages import PROJECT, TINY_PNG, FakeQueries

LINK = "[click](http://evil.example)"
IMAGE = "![x](http://evil.example/x.png)"
HTML = "<img src=x>"
BREAKOUT = "x` " + LINK + " `y"  # closes an inline code span it is put in, then links
ANCHOR = '<a href="http://evil.example">x</a>'  # Plotly renders <a href> in titles and legends
PAYLOADS = (LINK, IMAGE, HTML, BREAKOUT, ANCHOR)
EVIL_METRIC = "acc " + LINK
EVIL_PARAM = "opt " + IMAGE
# what must not survive outside code spans once backslash escapes are removed
ACTIVE_MARKDOWN = ("](", "<img", "<a ", "http://", "www.")
ACTIVE_PLOTLY = ("<img", "<a ")

# element types whose strings are Markdown: type -> how to get them
MARKDOWN_STRINGS = {
    "markdown": lambda e: [e.value],
    "title": lambda e: [e.value],
    "header": lambda e: [e.value],
    "subheader": lambda e: [e.value],
    "caption": lambda e: [e.value],
    "error": lambda e: [e.value],
    "warning": lambda e: [e.value],
    "info": lambda e: [e.value],
    "success": lambda e: [e.value],
    "metric": lambda e: [e.label],
    "image": lambda e: e.captions,
    "button": lambda e: [e.label],
    "download_button": lambda e: [e.proto.label],
    "selectbox": lambda e: [e.label],
    "multiselect": lambda e: [e.label],
    "text_input": lambda e: [e.label],
    "toggle": lambda e: [e.label],
    "slider": lambda e: [e.label],
    "button_group": lambda e: [e.proto.label],
    "tab": lambda e: [e.label],
    "expander": lambda e: [e.label],
}
LITERAL = {"text", "code", "dataframe", "arrow_data_frame", "plotly_chart", "empty", "divider"}
LAYOUT = {"main", "sidebar", "event", "bottom", "container", "vertical", "horizontal", "column"}
LAYOUT |= {"flex_container", "tab_container", "horizontal_block", "vertical_block", "root"}


def _hostile_runs(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    for k, column in enumerate(("name", "group", "job_type", "user", "host", "tags")):
        runs[column] = [f"{PAYLOADS[(i + k) % len(PAYLOADS)]} {i}" for i in range(len(runs))]
    return runs


@dataclasses.dataclass
class HostileQueries(FakeQueries):
    """FakeQueries whose every user-controlled string is a payload."""

    def list_keys(self, project, run_ids=()):
        self._record("list_keys", project, run_ids)
        return q.Keys(
            metric_keys=("loss", EVIL_METRIC),
            param_keys=("lr", EVIL_PARAM),
            tag_keys=(LINK,),
            system_metric_keys=(IMAGE,),
        )

    def search_runs(
        self,
        project,
        filter_text="",
        order_by=(),
        page_size=100,
        page_token="",
        param_keys=(),
        metric_keys=(),
    ):
        page = super().search_runs(
            project, filter_text, order_by, page_size, page_token, param_keys, metric_keys
        )
        runs = _hostile_runs(page.runs)
        for key in param_keys:
            if f"params.{key}" not in runs:
                runs[f"params.{key}"] = [PAYLOADS[i % 2] for i in range(len(runs))]  # text: categories
        for key in metric_keys:
            if f"metrics.{key}" not in runs:
                runs[f"metrics.{key}"] = [0.1 * i for i in range(len(runs))]
        return q.RunsPage(runs, page.next_page_token, page.total)

    def get_run(self, project, run_id):
        if run_id in PAYLOADS:
            # the server's NOT_FOUND echoes the id it was given (here from a crafted link)
            raise ServerError(
                f"run {run_id!r} not found", "NOT_FOUND", f"run {run_id!r} not found in project {project!r}"
            )
        detail = super().get_run(project, run_id)
        info = dict(detail.info)
        for i, column in enumerate(("name", "group", "job_type", "user", "host")):
            info[column] = PAYLOADS[i % len(PAYLOADS)]
        context = dict(detail.context)
        for i, name in enumerate(
            (
                "git_commit",
                "git_branch",
                "git_remote",
                "host",
                "user",
                "python_version",
                "env_name",
                "os",
                "cpu",
            )
        ):
            context[name] = PAYLOADS[i % len(PAYLOADS)]
        context["gpus"] = list(PAYLOADS)
        context["seeds"] = {LINK: IMAGE, BREAKOUT: HTML}
        artifacts = detail.artifacts.copy()
        artifacts["name"] = [LINK, BREAKOUT]
        artifacts["path"] = [f"{IMAGE}.png", f"dir/{LINK} {HTML}.pt"]
        return dataclasses.replace(
            detail,
            info=info,
            tags={LINK: IMAGE, HTML: BREAKOUT, ANCHOR: ""},
            notes=f"{LINK}\n{IMAGE}\n{HTML}\n{BREAKOUT}",
            config={**detail.config, LINK: IMAGE},
            context=context,
            artifacts=artifacts,
        )

    def download_artifact(self, project, run_id, sha256):
        self._record("download_artifact", project, run_id, sha256)
        return TINY_PNG


@pytest.fixture
def hostile(monkeypatch) -> HostileQueries:
    return HostileQueries().install(monkeypatch)


# ---------------------------------------------------------------- the checker


def _without_code(text: str) -> str:
    """`text` without fenced code blocks and inline code spans (CommonMark: a span closes at the
    next backtick run of the same length), whose content is shown literally."""
    text = re.sub(r"(?ms)^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?^ {0,3}\1[`~]*[ \t]*$", "", text)
    return re.sub(r"(?s)(?<![`\\])(`+)(?!`)(.+?)(?<!`)\1(?!`)", "", text)


def _active(text: str) -> str:
    """What Markdown still interprets: code removed, then every backslash escape removed."""
    return re.sub(r"\\[!-/:-@\[-`{-~]", "", _without_code(text))


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def assert_nothing_active(at: AppTest) -> int:
    """Checks every rendered string of the page; returns how many were checked."""
    assert not at.exception, at.exception
    checked, active = 0, []
    for node in at._tree:
        kind = node.type
        if kind in MARKDOWN_STRINGS:
            for text in MARKDOWN_STRINGS[kind](node):
                found = [m for m in ACTIVE_MARKDOWN if m in _active(text)]
                active += [f"{kind} renders {found} from {text!r}"] if found else []
                checked += 1
        elif kind == "plotly_chart":
            for text in _strings(json.loads(node.proto.spec)):
                found = [m for m in ACTIVE_PLOTLY if m in text]
                active += [f"a Plotly text renders {found} from {text!r}"] if found else []
                checked += 1
        else:
            assert kind in LITERAL | LAYOUT, f"unclassified element {kind!r}: does it render Markdown?"
    assert not active, "\n".join(active)
    return checked


def open_page(page: str | None = None, **query_params) -> AppTest:
    at = AppTest.from_file(str(APP_PATH), default_timeout=60)
    at.query_params["project"] = PROJECT
    at.run()
    if page:
        at.query_params.update(query_params)
        at.switch_page(page).run()
    return at


# ---------------------------------------------------------------- the pages


def test_runs_page_and_its_curves_render_no_injected_markup(hostile):
    at = open_page()
    assert_nothing_active(at)
    at.session_state["runs_table:0:0"] = {"selection": {"rows": [0, 1, 2], "columns": [], "cells": []}}
    at.run()
    at.multiselect(key=f"curve_metrics:{PROJECT}").set_value(["loss", EVIL_METRIC]).run()
    assert len(at.get("plotly_chart")) == 2
    assert assert_nothing_active(at) > 20


def test_run_page_renders_no_injected_markup(hostile):
    at = open_page("views/run.py", run="run1")
    assert len(at.get("image")) == 1 and len(at.get("download_button")) == 2
    assert assert_nothing_active(at) > 20
    shown = " ".join(t.value for t in at.text)  # notes are text: shown exactly as logged
    assert LINK in shown and HTML in shown


def test_a_crafted_run_link_renders_no_injected_markup(hostile):
    for run_id in PAYLOADS:
        at = open_page("views/run.py", run=run_id)
        assert at.error
        assert_nothing_active(at)


def test_compare_and_sweep_pages_render_no_injected_markup(hostile):
    assert_nothing_active(open_page("views/compare.py", runs="run0,run3"))
    at = open_page("views/sweep.py")
    at.selectbox(key=f"sweep_metric:{PROJECT}").set_value(EVIL_METRIC).run()
    at.multiselect(key=f"sweep_dims:{PROJECT}:").set_value([f"params.{EVIL_PARAM}", "params.lr"]).run()
    assert at.get("plotly_chart")
    assert_nothing_active(at)


def test_project_names_render_no_injected_markup(monkeypatch):
    fake = HostileQueries().install(monkeypatch)

    def projects():
        fake._record("list_projects")
        return pd.DataFrame({"project": [LINK, HTML], "runs": [6, 1], "last_activity": [None, None]})

    monkeypatch.setattr(q, "list_projects", projects)
    for page in (None, "views/projects.py", "views/sweep.py", "views/compare.py"):
        assert_nothing_active(open_page(page) if page else open_page())


# ---------------------------------------------------------------- the helpers


@pytest.mark.parametrize("text", [*PAYLOADS, "a\\[b](c)", "<!-- x -->", "www.evil.example", "a\nb  \n# c"])
def test_md_leaves_nothing_active_and_keeps_the_text(text):
    out = md(text)
    assert not [m for m in ACTIVE_MARKDOWN if m in _active(out)]
    assert re.sub(r"\\(.)", r"\1", out) == text.replace("\n", " ")


@pytest.mark.parametrize("text", [*PAYLOADS, "``a```", "` x `", "", "plain"])
def test_md_code_is_one_span_whatever_backticks_the_text_holds(text):
    out = md_code(text)
    assert _without_code(out) == ""
    fence = re.match(r"`+", out).group()
    inner = out[len(fence) : -len(fence)]
    assert (inner[1:-1] if inner.startswith(" ") and inner.endswith(" ") and inner.strip() else inner) == (
        text or " "
    )


def test_md_code_block_keeps_lines_and_cannot_be_closed_early():
    text = "line 1\n```\n" + LINK + "\n  ^"
    out = md_code_block(text)
    assert _without_code(out).strip() == ""
    assert text in out


def test_plotly_text_escapes_tags():
    assert plotly_text(ANCHOR) == '&lt;a href="http://evil.example"&gt;x&lt;/a&gt;'
    assert plotly_text("a & b") == "a &amp; b"
