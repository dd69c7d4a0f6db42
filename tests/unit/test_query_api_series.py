"""Api.series builds its long-form frame from concatenated columns: the same frame (values,
dtypes, order) as one frame per series joined by pd.concat, which it replaced; Api.history builds
its frame through DataFrame._from_arrays: the same frame as pd.DataFrame(dict). No server: the
series and pages come from stand-ins for series_arrays and history_pages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from runstream.api import Api
from runstream.query_client import SeriesArrays


@pytest.mark.parametrize("sizes", [[], [3], [5, 0, 2], [0, 0], [1000] * 20])
def test_series_frame_equals_the_concatenated_frames(monkeypatch, sizes):
    rng = np.random.default_rng(2)
    arrays = [
        SeriesArrays(f"r{i}", f"k{i % 2}", i % 3, np.arange(n, dtype=float), rng.random(n), n)
        for i, n in enumerate(sizes)
    ]
    api = Api(endpoint="127.0.0.1:9")  # never called: series_arrays is replaced
    monkeypatch.setattr(api, "series_arrays", lambda *a, **k: arrays)
    got = api.series("p", ["r0"], ["k0"])
    if arrays:
        expected = pd.concat(
            [
                pd.DataFrame({"run_id": s.run_id, "key": s.key, "rank": s.rank, "x": s.x, "y": s.y})
                for s in arrays
            ],
            ignore_index=True,
        )
    else:
        expected = pd.DataFrame({"run_id": [], "key": [], "rank": [], "x": [], "y": []})
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    api.close()


def test_history_times_are_what_pandas_to_datetime_gives():
    """Api.history builds its time column by viewing the int64 ms as datetime64 (_utc_index):
    the same values and dtype as pd.to_datetime(unit="ms", utc=True), negatives and extremes too,
    and the same refusal where the times do not fit pandas' unit."""
    from runstream.api import _utc_index

    rng = np.random.default_rng(7)
    samples = [
        np.array([], "<i8"),
        np.array([0, -1, 1_700_000_000_123, 253_402_300_799_999, -62_135_596_800_000], "<i8"),
        rng.integers(-(10**12), 10**13, 1_000).astype("<i8"),
    ]
    # past what int64 holds in pandas' unit (us on pandas 3, ns on 2): to_datetime refuses these,
    # and a plain multiplication would wrap around to a wrong date instead
    samples += [np.array([0, 9_300_000_000_000_000], "<i8"), np.array([-9_300_000_000_000_000], "<i8")]
    for time_ms in samples:
        try:
            expected = pd.to_datetime(time_ms, unit="ms", utc=True)
        except pd.errors.OutOfBoundsDatetime:
            with pytest.raises(pd.errors.OutOfBoundsDatetime):
                _utc_index(pd, time_ms)
            continue
        pd.testing.assert_index_equal(_utc_index(pd, time_ms), expected)


def _page(keys, key_index, steps, values, times_ms, ranks):
    from runstream.v1 import query_pb2

    return query_pb2.GetHistoryResponse(
        keys=keys,
        key_index=np.asarray(key_index, "<u2").tobytes(),
        steps=np.asarray(steps, "<i8").tobytes(),
        values=np.asarray(values, "<f8").tobytes(),
        times_ms=np.asarray(times_ms, "<i8").tobytes(),
        ranks=np.asarray(ranks, "<u2").tobytes(),
    )


@pytest.mark.parametrize("public", [False, True], ids=["from_arrays", "pandas-without-it"])
@pytest.mark.parametrize("pages", [0, 1, 3])
def test_history_frame_is_the_public_constructors(monkeypatch, pages, public):
    """Api.history builds its frame through DataFrame._from_arrays (_frame): the same frame as
    pd.DataFrame(dict) (values, dtypes, a key column inferred as pandas infers it), one or several
    pages or none, writable; and with a pandas that lacks the private call, the public one."""
    if public:
        monkeypatch.delattr(pd.DataFrame, "_from_arrays")
    parts = [
        _page(["loss", "lr"], [0, 0, 1], [p * 3, p * 3 + 1, 0], [0.5, np.nan, -1e300], [0, -1, 1_700_000_000_123],
              [0, 65_535, 2])
        for p in range(pages)
    ]  # fmt: skip
    api = Api(endpoint="127.0.0.1:9")  # never called: history_pages is replaced
    monkeypatch.setattr(api, "history_pages", lambda *a, **k: iter(parts))
    got = api.history("r", project="p")
    n = 3 * pages
    time_ms = np.array([0, -1, 1_700_000_000_123] * pages, "<i8")
    expected = pd.DataFrame(
        {
            "step": np.array([v for p in range(pages) for v in (p * 3, p * 3 + 1, 0)], "<i8"),
            "key": np.array(["loss", "loss", "lr"] * pages, dtype=object),
            "value": np.array([0.5, np.nan, -1e300] * pages),
            "rank": np.array([0, 65_535, 2] * pages, "<u2"),
            "time": pd.to_datetime(time_ms, unit="ms", utc=True),
        }
    )
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert list(got.columns) == ["step", "key", "value", "rank", "time"] and len(got) == n
    if n:
        got.loc[0, "value"] = 7.0  # a frame of its own, not a view of the read-only page bytes
        assert got["value"].iloc[0] == 7.0
    api.close()
