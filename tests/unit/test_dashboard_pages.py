"""AppTest unit tests of every dashboard page.

These isolate rendering: runstream_dashboard.queries' loaders are swapped for canned DataFrames
(`FakeQueries`, a fake because a unit test has no server), so the tests check what the pages
draw and which arguments they send to the server. The real query path, against a real server
with real logged runs, is covered by tests/e2e/test_dashboard_browser.py. Over 400 lines on purpose: one fake data layer
serves every page's tests, and the pages share their URL and selection state."""

from __future__ import annotations

import ast
import itertools
import json
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from runstream.errors import ServerError, ServerUnavailableError
from runstream_dashboard import APP_PATH
from runstream_dashboard import queries as q

PROJECT = "demo"
N_RUNS = 6


def _runs() -> pd.DataFrame:
    rows = []
    for i, (lr, opt) in enumerate(itertools.product([1e-3, 1e-2, 1e-1], ["adam", "sgd"])):
        rows.append(
            {
                "run_id": f"run{i}",
                "name": f"{opt}-lr{lr:g}",
                "state": "running" if i == 0 else ("failed" if i == 5 else "finished"),
                "group": "sweep-1",
                "job_type": "train",
                "user": "ada",
                "host": "gpu-1",
                "start": pd.Timestamp("2025-01-01 10:00") - pd.Timedelta(minutes=i),  # run0 newest
                "end": None if i == 0 else pd.Timestamp("2025-01-01 11:00"),
                "duration_s": 3600.0,
                "tags": "dataset=v2.1",
                "datasets": f"cifar10@v{1 + i % 2}",
                "params.lr": lr,
                "params.optimizer": opt,
                "params.model.depth": 4 + i % 2,
                "metrics.loss": 1.0 / (i + 1),
                "metrics.val_acc": 0.5 + 0.07 * i,
            }
        )
    return pd.DataFrame(rows)


@dataclass
class FakeQueries:
    """Records calls; answers from a small sweep of N_RUNS runs."""

    calls: dict[str, list] = field(default_factory=dict)
    bad_filter_message: str = "filter: unknown field 'bogus' at column 1 (expected params.*, metrics.*, ...)"

    def _record(self, name, *args):
        self.calls.setdefault(name, []).append(args)

    def list_projects(self):
        self._record("list_projects")
        return pd.DataFrame(
            {
                "project": [PROJECT, "other"],
                "runs": [N_RUNS, 2],
                "last_activity": [pd.Timestamp("2025-01-01 11:00"), pd.Timestamp("2024-12-01 09:00")],
            }
        )

    def list_keys(self, project, run_ids=()):
        self._record("list_keys", project, run_ids)
        return q.Keys(
            metric_keys=("loss", "val_acc"),
            param_keys=("lr", "model.depth", "optimizer"),
            tag_keys=("dataset",),
            system_metric_keys=("system.cpu_percent", "system.gpu.0.util"),
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
        self._record(
            "search_runs", project, filter_text, order_by, page_size, page_token, param_keys, metric_keys
        )
        if "bogus" in filter_text:
            raise ServerError(
                f"SearchRuns failed: {self.bad_filter_message}", "INVALID_ARGUMENT", self.bad_filter_message
            )
        runs = _runs()
        if "adam" in filter_text:
            runs = runs[runs["params.optimizer"] == "adam"]
        for order in order_by:  # the server sorts; so does the fake, for the columns it knows
            column = order.lstrip("-")
            if column in runs.columns:
                runs = runs.sort_values(column, ascending=not order.startswith("-"), kind="stable")
        keep = [
            *q.RUN_COLUMNS,
            "datasets",
            *[f"params.{k}" for k in param_keys],
            *[f"metrics.{k}" for k in metric_keys],
        ]
        runs = runs[[c for c in keep if c in runs.columns]].reset_index(drop=True)
        start = int(page_token or 0)
        page = runs.iloc[start : start + page_size].reset_index(drop=True)
        nxt = str(start + page_size) if start + page_size < len(runs) else ""
        return q.RunsPage(page, nxt, len(runs))

    def metric_series(self, project, run_ids, keys, x_axis="step", max_points=1000, system=False):
        self._record("metric_series", project, run_ids, keys, x_axis, max_points, system)
        frames = []
        steps = np.arange(0, 100, dtype=float)
        for i, run_id in enumerate(run_ids):
            for key in keys:
                frames.append(
                    pd.DataFrame(
                        {
                            "run_id": run_id,
                            "key": key,
                            "rank": 0,
                            "x": steps,
                            "y": np.exp(-steps / (10 + i)),
                            "total_points": 100,
                        }
                    )
                )
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=q.SERIES_COLUMNS)

    def get_run(self, project, run_id):
        self._record("get_run", project, run_id)
        runs = _runs().set_index("run_id")
        if run_id not in runs.index:
            raise ServerError(f"run {run_id!r} not found in project {project!r}", "NOT_FOUND")
        row = runs.loc[run_id]
        return q.RunDetail(
            info={
                **row[q.RUN_COLUMNS[1:]].to_dict(),
                "run_id": run_id,
                "git_commit": "abc123",
                "git_dirty": True,
            },
            config={
                "lr": row["params.lr"],
                "optimizer": row["params.optimizer"],
                "model.depth": row["params.model.depth"],
                "seed": 7,
            },
            summary={"best_val_acc": row["metrics.val_acc"]},
            tags={"dataset": "v2.1"},
            notes="Baseline with **cosine** schedule.",
            metrics=pd.DataFrame(
                {
                    "key": ["loss", "val_acc"],
                    "last": [row["metrics.loss"], row["metrics.val_acc"]],
                    "min": [0.1, 0.4],
                    "max": [2.0, 0.9],
                    "count": [100, 10],
                    "last_step": [99, 90],
                }
            ),
            context={
                "git_commit": "abc123",
                "git_branch": "main",
                "git_dirty": True,
                "git_remote": "https://example.com/r.git",
                "git_diff": "+ lr = 0.1",
                "python_version": "3.11.7",
                "packages": {"numpy": "2.0.0", "torch": "2.4.0"},
                "host": "gpu-1",
                "os": "Linux",
                "cpu": "x86_64",
                "gpus": ["H100"],
                "command": ["train.py", "--lr", "0.1"],
                "env_name": "venv",
                "seeds": {"python": 7},
                "user": "ada",
                "world_size": 1,
            },  # fmt: skip
            datasets=[{"name": "cifar10", "version": "v2.1", "uri": "s3://data/cifar10"}],
            artifacts=pd.DataFrame(
                [
                    {
                        "name": "samples",
                        "path": "samples.png",
                        "type": "image",
                        "version": 1,
                        "size": len(TINY_PNG),
                        "sha256": "a" * 64,
                        "uri": "file:///x",
                        "created": pd.Timestamp("2025-01-01 11:00"),
                    },
                    {
                        "name": "model",
                        "path": "model.pt",
                        "type": "model",
                        "version": 1,
                        "size": 10,
                        "sha256": "b" * 64,
                        "uri": "file:///y",
                        "created": pd.Timestamp("2025-01-01 11:00"),
                    },
                ]  # fmt: skip
            ),
        )

    def download_artifact(self, project, run_id, sha256):
        self._record("download_artifact", project, run_id, sha256)
        return TINY_PNG if sha256.startswith("a") else b"0123456789"

    def clear_caches(self):
        self._record("clear_caches")

    def install(self, monkeypatch) -> FakeQueries:
        for name in (
            "list_projects",
            "list_keys",
            "search_runs",
            "metric_series",
            "get_run",
            "download_artifact",
            "clear_caches",
        ):
            monkeypatch.setattr(q, name, getattr(self, name))
        return self


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


TINY_PNG = _tiny_png()


# ---------------------------------------------------------------- helpers


@pytest.fixture
def fake(monkeypatch) -> FakeQueries:
    return FakeQueries().install(monkeypatch)


def open_page(page: str | None = None, **query_params) -> AppTest:
    at = AppTest.from_file(str(APP_PATH), default_timeout=60)
    at.query_params["project"] = PROJECT
    at.run()
    if page:
        at.query_params.update(query_params)
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def shown(markdown: str) -> str:
    """What a reader sees of Markdown that safe_text escaped: the text without its backslashes."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def plotly_figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def select_rows(at: AppTest, rows: list[int], generation: int = 0, page: int = 0) -> AppTest:
    at.session_state[f"runs_table:{generation}:{page}"] = {
        "selection": {"rows": rows, "columns": [], "cells": []}
    }
    return at.run()


# ---------------------------------------------------------------- sidebar / projects


def test_sidebar_lists_projects_and_keeps_the_project_in_the_url(fake):
    at = open_page()
    picker = at.sidebar.selectbox(key="project")
    assert picker.options == [PROJECT, "other"]
    assert picker.value == PROJECT
    picker.set_value("other").run()
    assert at.query_params["project"] == "other"
    assert fake.calls["list_keys"][-1][0] == "other"


def test_server_unreachable_is_explained_in_the_sidebar(monkeypatch):
    def down():
        raise ServerUnavailableError(
            "query service at 127.0.0.1:1 unavailable (UNAVAILABLE): connection refused",
            "UNAVAILABLE",
            "cannot reach the Runstream server at 127.0.0.1:1 (connection refused)",
        )

    FakeQueries().install(monkeypatch)
    monkeypatch.setattr(q, "list_projects", down)
    at = AppTest.from_file(str(APP_PATH), default_timeout=60).run()
    assert any("cannot reach the Runstream server" in e.value for e in at.sidebar.error)
    assert any("Pick a project" in i.value for i in at.info)


def test_projects_page_shows_counts_and_opens_the_chosen_project(fake):
    at = open_page("views/projects.py")
    assert at.title[0].value == "Projects"
    table = at.main.dataframe[0].value
    assert table["project"].tolist() == [PROJECT, "other"]
    assert {m.label: m.value for m in at.metric} == {
        "Projects": "2",
        "Runs": "8",
        "Last activity": "2025-01-01 11:00",
    }
    at.session_state["projects_table"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    assert at.title[0].value == "Runs · other"


# ---------------------------------------------------------------- runs table


def test_runs_table_asks_the_server_for_one_sorted_page_with_the_chosen_columns(fake):
    at = open_page()
    assert at.title[0].value == "Runs · demo"
    project, filter_text, order_by, page_size, token, params, metrics = fake.calls["search_runs"][-1]
    assert (project, filter_text, order_by, page_size, token) == (PROJECT, "", ("-start",), 100, "")
    assert params == ("lr", "model.depth", "optimizer") and metrics == ("loss", "val_acc")
    table = at.dataframe[0].value
    assert len(table) == N_RUNS
    assert {"params.lr", "params.optimizer", "metrics.val_acc", "datasets"} <= set(table.columns)
    assert table["open"][0] == "./run?project=demo&run=run0"
    assert any("6 runs match" in c.value for c in at.caption)

    at.selectbox(key="runs_sort").set_value("metrics.val_acc").run()
    at.toggle(key="runs_desc").set_value(False).run()
    assert fake.calls["search_runs"][-1][2] == ("metrics.val_acc",)


def test_filter_goes_to_the_server_and_its_error_is_shown_next_to_the_box(fake):
    at = open_page()
    at.text_input(key="runs_filter").input('params.optimizer = "adam"').run()
    assert fake.calls["search_runs"][-1][1] == 'params.optimizer = "adam"'
    assert len(at.dataframe[0].value) == 3

    at.text_input(key="runs_filter").input("bogus > 1").run()
    errors = [shown(e.value) for e in at.error]
    assert any("INVALID_ARGUMENT" in e and "unknown field 'bogus'" in e for e in errors), errors
    assert not at.dataframe  # nothing stale is shown under a refused filter


def test_pages_follow_the_servers_next_page_token(fake, monkeypatch):
    def four_per_page(project, filter_text="", order_by=(), page_size=100, page_token="", *args):
        return FakeQueries.search_runs(fake, project, filter_text, order_by, 4, page_token, *args)

    monkeypatch.setattr(q, "search_runs", four_per_page)
    at = open_page()
    assert at.dataframe[0].value["run_id"].tolist() == ["run0", "run1", "run2", "run3"]
    assert at.button(key="runs_prev").proto.disabled
    at.button(key="runs_next").click().run()
    assert fake.calls["search_runs"][-1][4] == "4"
    assert at.dataframe[0].value["run_id"].tolist() == ["run4", "run5"]
    assert at.button(key="runs_next").proto.disabled
    at.button(key="runs_prev").click().run()
    assert fake.calls["search_runs"][-1][4] == ""


def test_selected_runs_are_overlaid_in_one_chart_per_metric(fake):
    at = open_page()
    assert any("Select runs" in i.value for i in at.info)
    select_rows(at, [0, 2, 3])
    assert fake.calls["metric_series"][-1][1] == ("run0", "run2", "run3")
    figures = plotly_figures(at)
    assert [f["layout"]["title"]["text"] for f in figures] == ["loss", "val_acc"]
    assert all(len(f["data"]) == 3 for f in figures)
    assert [t["name"] for t in figures[0]["data"]] == ["adam-lr0.001", "adam-lr0.01", "sgd-lr0.01"]
    raw = figures[0]["data"][0]["y"]

    at.slider(key="curve_smoothing").set_value(0.9).run()
    smoothed = plotly_figures(at)[0]["data"][0]["y"]
    assert smoothed != raw
    at.toggle(key="curve_log").set_value(True).run()
    assert plotly_figures(at)[0]["layout"]["yaxis"]["type"] == "log"
    at.button_group(key="curve_x").set_value("relative").run()
    assert fake.calls["metric_series"][-1][3] == "relative"
    assert plotly_figures(at)[0]["layout"]["xaxis"]["title"]["text"] == "minutes since the run's first point"


def test_live_refresh_defaults_on_when_a_selected_run_is_running(fake):
    at = open_page()
    select_rows(at, [0])  # run0 is running
    assert at.toggle(key="curve_live").value is True
    at = open_page()
    select_rows(at, [1])
    assert at.toggle(key="curve_live").value is False


def test_compare_and_open_buttons_follow_the_selection(fake):
    at = open_page()
    select_rows(at, [1])
    assert not at.button(key="runs_open").proto.disabled
    assert at.button(key="runs_compare").proto.disabled
    at.button(key="runs_open").click().run()
    assert shown(at.title[0].value) == "sgd-lr0.001"
    assert at.query_params["run"] == "run1"

    at = open_page()
    select_rows(at, [1, 2])
    at.button(key="runs_compare").click().run()
    assert at.title[0].value == "Compare · demo"
    assert at.query_params["runs"] == "run1,run2"


# ---------------------------------------------------------------- sweep


def test_sweep_draws_parallel_coordinates_of_varying_params_against_the_metric(fake):
    at = open_page("views/sweep.py")
    assert at.title[0].value == "Sweep · demo"
    assert fake.calls["search_runs"][-1][2] == ("-metrics.val_acc",)
    (fig,) = plotly_figures(at)
    parcoords = fig["data"][0]
    assert parcoords["type"] == "parcoords"
    labels = [d["label"] for d in parcoords["dimensions"]]
    assert labels == ["lr (log)", "model.depth", "optimizer", "val_acc"]  # lr spans 2 decades
    optimizer = parcoords["dimensions"][2]
    assert optimizer["ticktext"] == ["adam", "sgd"]
    best = at.dataframe[0].value
    assert best["metrics.val_acc"].is_monotonic_decreasing

    at.button_group(key="sweep_goal").set_value("min").run()
    assert fake.calls["search_runs"][-1][2] == ("metrics.val_acc",)


# ---------------------------------------------------------------- run page


def test_run_page_shows_config_summary_tags_notes_context_and_charts(fake):
    at = open_page("views/run.py", run="run1")
    assert shown(at.title[0].value) == "sgd-lr0.001"
    config, summary, metric_summaries = (d.value for d in at.main.tabs[0].dataframe[:3])
    assert dict(zip(config["key"], config["value"], strict=True))["optimizer"] == "sgd"
    assert summary["key"].tolist() == ["best_val_acc"]
    assert metric_summaries["key"].tolist() == ["loss", "val_acc"]
    markdown = " ".join(shown(m.value) for m in at.markdown)
    assert "dataset=v2.1" in markdown
    assert [t.value for t in at.text] == ["Baseline with **cosine** schedule."]  # notes: as logged
    assert "abc123" in markdown and "(uncommitted changes)" in markdown and "H100" in markdown
    assert any("train.py --lr 0.1" in c.value for c in at.code)
    figures = plotly_figures(at)
    titles = [f["layout"]["title"]["text"] for f in figures]
    assert titles == ["loss", "val_acc", "system.cpu_percent", "system.gpu.0.util"]
    assert fake.calls["metric_series"][-1][-1] is True  # system metrics asked as such


def test_run_page_offers_artifact_downloads_and_previews_images(fake):
    at = open_page("views/run.py", run="run1")
    downloads = [shown(b.label) for b in at.get("download_button")]
    assert downloads == ["Download samples.png", "Download model.pt"]
    assert len(at.get("image")) == 1  # the PNG preview; model.pt is not fetched for a preview
    assert [c[2] for c in fake.calls["download_artifact"]] == ["a" * 64]


def test_run_page_without_a_run_offers_a_picker_and_unknown_runs_get_the_servers_error(fake):
    at = open_page("views/run.py")
    picker = at.main.selectbox[0]
    assert picker.label == "Run"
    picker.set_value("run3").run()
    assert at.query_params["run"] == "run3"
    assert shown(at.title[0].value) == "sgd-lr0.01"

    at = open_page("views/run.py", run="nope")
    assert any("'nope' not found" in shown(e.value) for e in at.error)


# ---------------------------------------------------------------- compare


def test_compare_shows_only_differing_config_keys_highlighted(fake):
    at = open_page("views/compare.py", runs="run0,run3")
    config = at.main.dataframe[0].value
    assert sorted(config.index) == ["lr", "model.depth", "optimizer"]  # seed is equal: hidden
    assert list(config.columns) == ["adam-lr0.001", "sgd-lr0.01"]
    assert any("3 differing keys" in c.value for c in at.caption)
    at.toggle(key="compare_only_diff").set_value(False).run()
    assert "seed" in at.main.dataframe[0].value.index
    metrics = at.main.dataframe[1].value
    assert metrics.loc["val_acc"].tolist() == pytest.approx([0.5, 0.71])
    (fig,) = plotly_figures(at)
    assert len(fig["data"]) == 2


def test_compare_needs_two_runs(fake):
    at = open_page("views/compare.py", runs="run0")
    assert any("two or more runs" in i.value for i in at.info)


# ---------------------------------------------------------------- the data layer


def test_the_dashboard_reads_only_through_runstream_api():
    """One read client: no module of the dashboard opens a channel, holds a stub or defines an
    error type of its own; queries.py is the only one that talks to runstream.Api."""
    package = APP_PATH.parent
    for path in package.rglob("*.py"):
        source = path.read_text()
        assert "import grpc" not in source and "_pb2_grpc" not in source, path
        classes = [node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)]
        assert not [name for name in classes if name.endswith("Error")], path
        if path.name != "queries.py":
            assert "runstream.api" not in source and "query_client" not in source, path
    assert "from runstream.api import Api" in (package / "queries.py").read_text()


def test_run_rows_name_states_as_the_sdk_does_and_cells_show_values_as_logged():
    from runstream.v1 import types_pb2

    unspecified = q.run_row(types_pb2.Run(run_id="r1", state=types_pb2.RUN_STATE_UNSPECIFIED))
    assert unspecified["state"] == "unspecified" and unspecified["name"] == "r1"
    assert q.run_row(types_pb2.Run(run_id="r1", state=types_pb2.RUN_STATE_CRASHED))["state"] == "crashed"
    value = types_pb2.Value
    whole = q.cell_value(value(number=32.0))
    assert whole == 32 and isinstance(whole, int)
    assert q.cell_value(value(number=0.5)) == 0.5 and q.cell_value(value(number=2.0**60)) == 2.0**60
    assert q.cell_value(value(json='{"b": 1, "a": [1, 2]}')) == '{"b": 1, "a": [1, 2]}'
    assert q.cell_value(value(json="null")) == "null"
    assert q.cell_value(value(flag=True)) is True and q.cell_value(value(text="adam")) == "adam"
    assert q.cell_value(value()) is None


def test_runs_page_rows_carry_each_runs_datasets(monkeypatch):
    """queries.search_runs turns the server's Run.datasets into the table's datasets column
    (name@version; a dataset used in two versions shows both), from a real SearchRunsResponse."""
    from runstream.v1 import query_pb2, types_pb2

    reply = query_pb2.SearchRunsResponse(
        runs=[
            types_pb2.Run(
                run_id="a", project=PROJECT,
                datasets=[types_pb2.DatasetRef(name="imagenet", version="v2.1"),
                          types_pb2.DatasetRef(name="imagenet", version="v2.2"),
                          types_pb2.DatasetRef(name="labels", version="sha:ab12")],
            ),
            types_pb2.Run(run_id="b", project=PROJECT),
        ],
        total=2,
    )  # fmt: skip

    class OneReply:
        def search_runs(self, project, **kwargs):
            return reply

    monkeypatch.setattr(q, "api", lambda: OneReply())
    page = (
        q.search_runs.__wrapped__(PROJECT)
        if hasattr(q.search_runs, "__wrapped__")
        else q.search_runs(PROJECT)
    )
    by_run = dict(zip(page.runs["run_id"], page.runs["datasets"], strict=True))
    assert by_run["a"] == "imagenet@v2.1/v2.2, labels@sha:ab12"
    assert pd.isna(by_run["b"])
