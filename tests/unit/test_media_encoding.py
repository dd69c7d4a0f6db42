"""runstream.media encoding on the caller's side: image normalization (uint8, floats in [0, 1] and
[0, 255], other ranges, bool, grey, alpha, PIL, CHW tensors), PNG bytes PIL can read, WAV bytes
the stdlib reads back, histogram binning (NaN/inf left out, NaN-only refused, precomputed bins
checked), tables to Parquet, text; every bad input a typed InvalidValueError with what to fix;
and the server's checks of the same events (ingest/media_validation.py)."""

from __future__ import annotations

import io
import sys
import wave

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage

import runstream
from runstream import media
from runstream._internal.buffer import entry_bytes
from runstream._internal.media_events import media_entries, split_media
from runstream.errors import InvalidValueError
from runstream.v1 import ingest_pb2
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument
from runstream_services.ingest.media_validation import check_media


def pil_pixels(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)))


def test_uint8_images_are_stored_exactly_and_pil_reads_the_png(monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = runstream.Image(rgb, caption="c")
    assert img.meta == {"width": 7, "height": 5, "channels": 3} and img.caption == "c"
    assert np.array_equal(pil_pixels(img.data), rgb)
    assert np.array_equal(media.decode_png(img.data), rgb)
    rgba = np.dstack([rgb, np.full((5, 7), 128, np.uint8)])
    assert np.array_equal(pil_pixels(runstream.Image(rgba).data), rgba)
    grey = rgb[:, :, 0]
    assert np.array_equal(pil_pixels(runstream.Image(grey).data), grey)
    monkeypatch.setitem(sys.modules, "PIL", None)  # the module's own decoder (no PIL) reads what it writes
    assert np.array_equal(media.decode_png(img.data), rgb)
    assert np.array_equal(media.decode_png(runstream.Image(grey).data)[:, :, 0], grey)


def test_float_and_bool_images_are_normalized():
    unit = np.array([[0.0, 0.5, 1.0]])
    assert pil_pixels(runstream.Image(unit).data).tolist() == [[0, 128, 255]]
    byte_range = np.array([[0.0, 100.4, 255.0]])
    assert pil_pixels(runstream.Image(byte_range).data).tolist() == [[0, 100, 255]]
    other = np.array([[-1.0, 0.0, 1.0, 3.0]])  # stretched min..max to 0..255
    assert pil_pixels(runstream.Image(other).data).tolist() == [[0, 64, 128, 255]]
    flat = np.full((2, 2), -5.0)
    assert pil_pixels(runstream.Image(flat).data).tolist() == [[0, 0], [0, 0]]
    assert pil_pixels(runstream.Image(np.array([[True, False]])).data).tolist() == [[255, 0]]
    assert pil_pixels(runstream.Image(np.array([[3, 200]], dtype=np.int64)).data).tolist() == [[3, 200]]


def test_pil_images_and_chw_tensors():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    assert np.array_equal(pil_pixels(runstream.Image(PILImage.fromarray(rgb)).data), rgb)
    palette = PILImage.fromarray(rgb).convert("P")
    assert runstream.Image(palette).meta["channels"] == 3  # converted to RGB

    class FakeTensor:  # stand-in for a torch tensor (torch is not installed here): C x H x W
        __module__ = "torch"

        def __init__(self, arr):
            self.arr = arr

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.arr

    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32) / 255
    img = runstream.Image(FakeTensor(chw))
    assert (img.meta["width"], img.meta["height"]) == (6, 4)
    assert np.array_equal(pil_pixels(img.data), rgb)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((3, 32, 32)), "C x H x W: pass arr.transpose(1, 2, 0)"),
        (np.zeros((2, 2, 2, 2)), "H x W or H x W x C"),
        (np.zeros((0, 4)), "no pixels"),
        (np.array([[np.nan, 1.0]]), "NaN or infinite"),
        (np.array([[300, 2]]), "integer pixels must be 0..255"),
        (np.array([["a", "b"]]), "not numbers"),
        (np.zeros((1, media.MAX_IMAGE_SIDE + 1), np.uint8), "downscale"),
        ([[1, 2], [3]], "cannot read list as an array"),
    ],
)
def test_bad_images_are_refused_with_what_to_fix(data, message):
    with pytest.raises(InvalidValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        runstream.Image(data)


def test_too_large_items_and_captions_are_refused():
    noise = np.random.default_rng(2).integers(0, 256, (2600, 2600, 3), dtype=np.uint8)  # ~20 MB PNG
    with pytest.raises(InvalidValueError, match="limit is 16,777,216"):
        runstream.Image(noise)
    with pytest.raises(InvalidValueError, match="caption is 5000 characters"):
        runstream.Text("x", caption="c" * 5000)
    with pytest.raises(InvalidValueError, match="limit is 65,536"):
        runstream.Text("x" * 70_000)
    with pytest.raises(InvalidValueError, match="takes a str"):
        runstream.Text(3)
    with pytest.raises(InvalidValueError, match="100,001 rows"):
        runstream.Table(pd.DataFrame({"a": np.zeros(media.MAX_TABLE_ROWS + 1)}))


def test_audio_is_16_bit_wav_the_stdlib_reads_back():
    t = np.linspace(0, 1, 4000, endpoint=False)
    clip = runstream.Audio(0.25 * np.sin(2 * np.pi * 440 * t), sample_rate=4000, caption="a")
    assert clip.meta == {"sample_rate": 4000, "channels": 1, "duration_s": 1.0}
    with wave.open(io.BytesIO(clip.data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 4000, 4000)
    samples, rate = media.decode_wav(clip.data)
    assert rate == 4000 and abs(float(samples.max()) - 0.25) < 1e-3
    loud = runstream.Audio(np.array([[2.0, -4.0], [1.0, 0.0]]), sample_rate=8)  # peak 4: scaled down
    samples, _ = media.decode_wav(loud.data)
    assert samples.shape == (2, 2) and samples.tolist()[0] == pytest.approx([0.5, -1.0], abs=1e-4)
    pcm = np.array([1, -2, 32767], dtype=np.int16)
    with wave.open(io.BytesIO(runstream.Audio(pcm, 10).data)) as w:
        assert np.frombuffer(w.readframes(3), "<i2").tolist() == [1, -2, 32767]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": np.zeros(10), "sample_rate": 0}, "sample_rate=0"),
        ({"data": np.zeros(10), "sample_rate": 44100.0}, "give an int in Hz"),
        ({"data": np.zeros((10, 20)), "sample_rate": 10}, "channels <= 16"),
        ({"data": np.array([np.nan]), "sample_rate": 10}, "NaN or infinite"),
        ({"data": np.array([], dtype=float), "sample_rate": 10}, "no samples"),
        ({"data": np.array([1, 2], dtype=np.int32), "sample_rate": 10}, "floats in \\[-1, 1\\] or int16"),
    ],
)
def test_bad_audio_is_refused(kwargs, message):
    with pytest.raises(InvalidValueError, match=message):
        runstream.Audio(**kwargs)


def test_histograms_bin_finite_values_or_take_precomputed_bins():
    values = np.concatenate([np.arange(100, dtype=float), [np.nan, np.inf, -np.inf]])
    h = runstream.Histogram(values, bins=4)
    assert h.meta["counts"] == [25.0, 25.0, 25.0, 25.0]
    assert h.meta["bin_edges"] == pytest.approx([0, 24.75, 49.5, 74.25, 99])
    assert h.data is None and h.kind == "histogram"
    same = runstream.Histogram(np.full(10, 3.0), bins=2)  # one value: numpy widens the range
    assert sum(same.meta["counts"]) == 10
    pre = runstream.Histogram(bin_edges=[0, 1, 3], counts=[5, 7])
    assert pre.meta == {"bin_edges": [0.0, 1.0, 3.0], "counts": [5.0, 7.0]}
    np_hist = runstream.Histogram(np_histogram=np.histogram([1, 2, 2, 3], bins=3))
    assert np_hist.meta["counts"] == [1.0, 2.0, 1.0]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((np.array([np.nan, np.nan]),), {}, "no finite value"),
        ((np.array([]),), {}, "no finite value"),
        ((np.arange(3),), {"bins": 0}, "bins=0"),
        ((np.arange(3),), {"bins": media.MAX_HISTOGRAM_BINS + 1}, "bins=10001"),
        ((), {"bin_edges": [0, 1], "counts": [1, 2]}, "2 bin edges for 2 counts"),
        ((), {"bin_edges": [0, 2, 1], "counts": [1, 2]}, "strictly ascending"),
        ((), {"bin_edges": [0, 1], "counts": [-1]}, "counts must be finite"),
        ((), {}, "needs values"),
        ((np.arange(3),), {"bin_edges": [0, 1], "counts": [1]}, "not both"),
        ((np.array(["a"]),), {}, "not numbers"),
    ],
)
def test_bad_histograms_are_refused(args, kwargs, message):
    with pytest.raises(InvalidValueError, match=message):
        runstream.Histogram(*args, **kwargs)


def test_tables_are_parquet_with_string_column_names():
    frame = pd.DataFrame({"id": [1, 2], 3: ["x", "y"], "p": [0.5, np.nan]})
    table = runstream.Table(frame, caption="preds")
    assert table.meta == {"rows": 2, "columns": ["id", "3", "p"]}
    back = pd.read_parquet(io.BytesIO(table.data))
    assert back.columns.tolist() == ["id", "3", "p"] and back["3"].tolist() == ["x", "y"]
    rows = runstream.Table(data=[[1, "a"], [2, "b"]], columns=["n", "s"])
    assert pd.read_parquet(io.BytesIO(rows.data))["s"].tolist() == ["a", "b"]
    with pytest.raises(InvalidValueError, match="takes a pandas DataFrame"):
        runstream.Table([[1, 2]])
    with pytest.raises(InvalidValueError, match="unique"):
        runstream.Table(pd.DataFrame([[1, 2]], columns=["a", "a"]))
    with pytest.raises(InvalidValueError, match="cannot be stored as Parquet"):
        runstream.Table(pd.DataFrame({"mixed": [1, "a"]}))


def test_run_log_splits_media_from_numbers_and_builds_events():
    img = runstream.Image(np.zeros((2, 2), np.uint8), caption="z")
    numbers, found = split_media(
        {"loss": 0.5, "img": img, "texts": [runstream.Text("a"), runstream.Text("b")]}
    )
    assert numbers == {"loss": 0.5} and list(found) == ["img", "texts"]
    entries = media_entries("p", "r", 2, 7, 1234, found)
    events = [e.body for e in entries]
    assert [(e.key, e.index, e.kind, e.step, e.rank, e.time_ms) for e in events] == [
        ("img", 0, "image", 7, 2, 1234), ("texts", 0, "text", 7, 2, 1234), ("texts", 1, "text", 7, 2, 1234)
    ]  # fmt: skip
    assert events[0].inline_data == img.data and events[0].sha256 == img.sha256 and events[0].caption == "z"
    assert events[2].text == "b" and not events[2].sha256
    noise = np.random.default_rng(0).random((100_000, 2))
    big = runstream.Table(
        pd.DataFrame({"a": noise[:, 0], "b": noise[:, 1]})
    )  # ~1.6 MB: over the inline limit
    (upload,) = media_entries("p", "r", 0, 1, 1, {"t": [big]})
    assert upload.field == "upload" and upload.body.field == "media" and upload.body.source == big.data
    assert not upload.body.event.inline_data and upload.body.event.size == len(big.data)
    assert entry_bytes(upload) > len(big.data)  # the bytes held count against max_memory_bytes
    with pytest.raises(InvalidValueError, match="at most 1000"):
        split_media({"many": [runstream.Text("x")] * 1001})


def test_importing_runstream_loads_no_numpy_pandas_or_pil():
    import subprocess

    code = "import sys, runstream; print(sorted(m for m in ('numpy', 'pandas', 'PIL', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def event(**fields) -> ingest_pb2.MediaEvent:
    return ingest_pb2.MediaEvent(project="p", run_id="r", key="k", step=1, **fields)


def test_the_server_checks_media_events():
    settings = ServerSettings()
    png = runstream.Image(np.zeros((2, 2), np.uint8)).data
    import hashlib

    good = event(
        kind="image", format="png", sha256=hashlib.sha256(png).hexdigest(), size=len(png), inline_data=png
    )
    check_media(good, settings)
    check_media(event(kind="text", text="hi"), settings)
    check_media(event(kind="histogram", bin_edges=[0, 1], counts=[2]), settings)
    bad = [
        (event(kind="video"), "kind 'video'"),
        (event(kind="image", format="jpg", sha256="0" * 64, size=1), "stored as png"),
        (event(kind="image", format="png", sha256="0" * 64, size=len(png), inline_data=png), "hash to"),
        (event(kind="text", text="x", sha256="0" * 64), "carries no bytes"),
        (event(kind="histogram", bin_edges=[0, 1], counts=[2, 3]), "2 bin edges for 2 counts"),
        (event(kind="histogram", bin_edges=[0, float("nan")], counts=[2]), "strictly ascending"),
        (event(kind="histogram"), "no bins"),
        (event(kind="text", text="x" * 70_000), "the limit is 65536"),
        (event(kind="text", caption="c" * 5000), "caption"),
        (event(kind="text", index=1000), "at most 1000"),
        (ingest_pb2.MediaEvent(project="p", run_id="r", key="", kind="text"), "empty key"),
        (
            event(kind="image", format="png", sha256="0" * 64, size=2 << 20, inline_data=b"x" * (2 << 20)),
            "upload them",
        ),
    ]
    for item, message in bad:
        with pytest.raises(InvalidArgument, match=message):
            check_media(item, settings)


def test_run_log_takes_media_next_to_numbers_and_still_names_bad_values(tmp_path):
    run = runstream.init(project="p", mode="disabled", spool_dir=str(tmp_path))
    run.log({"loss": np.float32(0.5), "img": runstream.Image(np.zeros((2, 2), np.uint8))}, step=3)
    run.log({"only": [runstream.Text("a")]})  # media alone
    with pytest.raises(InvalidValueError, match="'bad' = 'x' is a str"):
        run.log({"img": runstream.Image(np.zeros((2, 2), np.uint8)), "bad": "x"})
    with pytest.raises(InvalidValueError, match="is a list"):
        run.log({"mixed": [runstream.Text("a"), 1]})
    run.finish()
