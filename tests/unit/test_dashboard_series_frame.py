"""queries.metric_series builds its long-form frame from concatenated columns: the same frame
(values, dtypes, order) as one frame per series joined by pd.concat, which it replaced."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from runstream.query_client import SeriesArrays
from runstream_dashboard import queries


class _FakeApi:
    def __init__(self, series):
        self.series = series

    def series_arrays(self, *args, **kwargs):
        return self.series


def _concat_frame(series) -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "run_id": s.run_id,
                    "key": s.key,
                    "rank": s.rank,
                    "x": s.x,
                    "y": s.y,
                    "total_points": s.total_points,
                }
            )  # fmt: skip
            for s in series
        ],
        ignore_index=True,
    )


@pytest.mark.parametrize("sizes", [[3], [5, 0, 2], [0, 0], [1000] * 50])
def test_metric_series_frame_equals_the_concatenated_frames(monkeypatch, sizes):
    rng = np.random.default_rng(1)
    series = [
        SeriesArrays(
            f"run-{i}", "loss" if i % 2 else "acc", i % 3, np.arange(n, dtype=float), rng.random(n), 7 * n
        )
        for i, n in enumerate(sizes)
    ]
    monkeypatch.setattr(queries, "api", lambda: _FakeApi(series))
    queries.metric_series.clear()
    got = queries.metric_series("p", ("a",), ("loss",))
    pd.testing.assert_frame_equal(got, _concat_frame(series), check_exact=True)
    assert list(got.columns) == queries.SERIES_COLUMNS


def test_metric_series_without_series_is_an_empty_frame(monkeypatch):
    monkeypatch.setattr(queries, "api", lambda: _FakeApi([]))
    queries.metric_series.clear()
    got = queries.metric_series("p", ("a",), ("loss",))
    assert got.empty and list(got.columns) == queries.SERIES_COLUMNS
