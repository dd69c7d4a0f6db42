"""What a user sees of re-logged and non-finite points, through the SDK and the read API of a real
embedded server (issue 10, items 6 and 7): the value logged last is the one history and summaries
show, counted once; a key with only NaN/inf values has no min/max (NaN), not 0."""

from __future__ import annotations

import math

import runstream
from tests.sdk_options import quick_sdk_options


def test_relogged_steps_show_the_last_value_once_and_nan_only_keys_have_no_min_max(embedded_server, tmp_path):
    run = runstream.init("semantics", **quick_sdk_options(embedded_server.endpoint, tmp_path))
    for i in range(8):  # the same step eight times: one batch, in send order
        run.log({"loss": float(i)}, step=0)
    run.log({"loss": 0.5}, step=1)
    assert run.flush(timeout_s=30)
    for i in range(8, 12):  # ...and again in later requests
        run.log({"loss": float(i)}, step=0)
        assert run.flush(timeout_s=30)
    for step, value in enumerate([math.nan, math.inf, -math.inf]):
        run.log({"weird": value}, step=step)
    assert run.finish(timeout_s=30)

    with runstream.Api(endpoint=embedded_server.endpoint) as api:
        history = api.history(run.id, keys=["loss"], project="semantics")
        assert list(zip(history.step, history.value, strict=True)) == [(0, 11.0), (1, 0.5)]
        metrics = api.run("semantics", run.id)["metrics"]
    assert metrics["loss"]["count"] == 2 and metrics["loss"]["last"] == 0.5
    assert (metrics["loss"]["min"], metrics["loss"]["max"]) == (
        0.5,
        11.0,
    )  # replaced values are gone
    weird = metrics["weird"]
    assert weird["count"] == 3 and math.isnan(weird["min"]) and math.isnan(weird["max"])
