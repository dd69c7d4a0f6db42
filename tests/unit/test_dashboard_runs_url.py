"""The Runs page and its URL (runs_url.py) in Streamlit's AppTest, on the stand-in data layer of
test_dashboard_pages.py (FakeQueries: no server): a URL's view reaches the widgets and the
server calls, and a changed widget reaches the URL."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.unit.test_dashboard_pages import APP_PATH, PROJECT, fake, select_rows  # noqa: F401  (fixture)


def open_url(**params) -> AppTest:
    at = AppTest.from_file(str(APP_PATH), default_timeout=60)
    at.query_params.update({"project": PROJECT, **params})
    at.run()
    assert not at.exception, at.exception
    return at


def url(at: AppTest) -> dict[str, list[str]]:
    """The page's query parameters, each as a list (AppTest keeps a lone value as a string)."""
    return {k: v if isinstance(v, list) else [v] for k, v in at.query_params.items()}


def test_a_urls_view_reaches_the_widgets_and_the_server(fake):  # noqa: F811
    at = open_url(filter='params.optimizer = "adam"', sort="name", desc="0", rows="50",
                  curves="val_acc", runs=["run2", "run0"], params=["lr"], smooth="0.3")  # fmt: skip
    assert at.text_input(key="runs_filter").value == 'params.optimizer = "adam"'
    _, filter_text, order_by, page_size, _, params, _ = fake.calls["search_runs"][-1]
    assert (filter_text, order_by, page_size, params) == ('params.optimizer = "adam"', ("name",), 50, ("lr",))
    assert at.toggle(key="runs_desc").value is False
    assert at.multiselect(key="curve_runs").value == ["run2", "run0"]
    assert at.multiselect(key=f"curve_metrics:{PROJECT}").value == ["val_acc"]
    assert at.slider(key="curve_smoothing").value == 0.3
    assert fake.calls["metric_series"][-1][1:3] == (("run2", "run0"), ("val_acc",))
    assert not at.warning, [w.value for w in at.warning]  # no "default value and session state" warning


def test_changed_widgets_reach_the_url_and_table_clicks_pick_the_runs(fake):  # noqa: F811
    at = open_url()
    assert "filter" not in url(at) and "runs" not in url(at)  # defaults stay out
    at.text_input(key="runs_filter").input('params.optimizer = "adam"').run()
    at.toggle(key="runs_desc").set_value(False).run()
    assert url(at)["filter"] == ['params.optimizer = "adam"'] and url(at)["desc"] == ["0"]
    select_rows(at, [0, 1], generation=2)  # the filter and the sort each started a new table
    assert url(at)["runs"] == at.dataframe[0].value["run_id"].tolist()[:2]  # the rows ticked, in table order
    assert at.multiselect(key="curve_runs").value == url(at)["runs"]
    at.selectbox(key="curve_group").set_value("params.optimizer").run()
    at.toggle(key="curve_log").set_value(True).run()
    assert url(at)["group"] == ["params.optimizer"] and url(at)["log"] == ["1"]
    assert url(at)["filter"] == ['params.optimizer = "adam"']  # the rest is kept
