"""Media logged per step next to metrics: `run.log({"samples": runstream.Image(arr, caption="x"),
"loss": 0.3}, step=10)`. Each class checks and encodes its input when it is made (on the caller's
thread, so a bad input raises here with what to fix): images to PNG, audio to 16-bit PCM WAV,
tables to Parquet; histograms keep bins and counts, text its string. A list of them under one key
logs several items at that step (index 0, 1, ...).

numpy is imported only when an image, audio clip or histogram is made from an array; PIL only for
PIL images; pandas and pyarrow only for tables. torch tensors are read through `.numpy()` when
torch is importable (never imported by this module).

Limits (the server checks them too; docs/media.md): encoded bytes at most MAX_MEDIA_BYTES (16
MiB), images at most MAX_IMAGE_SIDE pixels a side, histograms at most MAX_HISTOGRAM_BINS bins,
tables at most MAX_TABLE_ROWS rows and MAX_TABLE_COLUMNS columns, text at most MAX_TEXT_CHARS
characters, captions at most MAX_CAPTION_CHARS, MAX_ITEMS_PER_KEY items per key and step.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import wave
import zlib
from typing import Any

from runstream.errors import InvalidValueError

MAX_MEDIA_BYTES = 16 * 1024 * 1024
MAX_IMAGE_SIDE = 16_384
MAX_HISTOGRAM_BINS = 10_000
MAX_TABLE_ROWS = 100_000
MAX_TABLE_COLUMNS = 1_000
MAX_TEXT_CHARS = 64 * 1024
MAX_CAPTION_CHARS = 4_096
MAX_ITEMS_PER_KEY = 1_000
KINDS = ("image", "audio", "histogram", "table", "text")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)


class Media:
    """Base of the media classes: `kind`, `caption`, encoded `data` (or None), `format` and the
    kind's facts in `meta` (width, height, sample_rate, bin_edges, ...)."""

    kind = ""
    format = ""

    def __init__(self, caption: str | None):
        caption = "" if caption is None else str(caption)
        if len(caption) > MAX_CAPTION_CHARS:
            raise InvalidValueError(
                f"{type(self).__name__} caption is {len(caption)} characters; the limit is {MAX_CAPTION_CHARS}"
            )
        self.caption = caption
        self.data: bytes | None = None
        self.meta: dict[str, Any] = {}

    def _set_data(self, data: bytes) -> None:
        if len(data) > MAX_MEDIA_BYTES:
            raise InvalidValueError(
                f"{type(self).__name__} encodes to {len(data):,} bytes; the limit is {MAX_MEDIA_BYTES:,} "
                "(16 MiB): make it smaller, or log it as an artifact (run.log_artifact)"
            )
        self.data = data

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else ""

    def __repr__(self) -> str:
        facts = ", ".join(f"{k}={v}" for k, v in self.meta.items() if not isinstance(v, list))
        return f"<runstream.{type(self).__name__} {facts}{' caption=' + repr(self.caption) if self.caption else ''}>"


# ---------------------------------------------------------------- images


class Image(Media):
    """An image: a numpy array H x W (grey) or H x W x C (C = 1, 3, 4), a PIL image, or a torch
    tensor C x H x W / H x W. uint8 is taken as is; floats in [0, 1] are scaled to 0..255, floats
    in [0, 255] rounded, any other float range min-max normalized; bool is black/white. Stored as
    PNG. `Image(arr, caption="cat, p=0.93")`."""

    kind = "image"
    format = "png"

    def __init__(self, data: Any, caption: str | None = None):
        super().__init__(caption)
        pixels = _pixels(data)
        height, width, channels = pixels.shape
        self.meta = {"width": width, "height": height, "channels": channels}
        self._set_data(encode_png(pixels))


def _pixels(data: Any):
    """uint8 H x W x C numpy pixels of an image input, or InvalidValueError saying why not."""
    np = _numpy("Image")
    if _is_pil(data):
        image = data
        if image.mode not in ("L", "LA", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        arr = np.asarray(image)
    else:
        chw = _is_torch(data)
        arr = _to_numpy(np, data, "Image")
        if chw and arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # torch images are C x H x W
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise InvalidValueError(
            f"Image takes H x W or H x W x C pixels; this array has shape {tuple(arr.shape)}"
        )
    if arr.shape[2] not in (1, 2, 3, 4):
        hint = " (it looks like C x H x W: pass arr.transpose(1, 2, 0))" if arr.shape[0] in (1, 3, 4) else ""
        raise InvalidValueError(
            f"Image takes 1 to 4 channels last (H x W x C); this array has shape {tuple(arr.shape)}{hint}"
        )
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise InvalidValueError(f"Image has no pixels (shape {tuple(arr.shape)})")
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE:
        raise InvalidValueError(
            f"Image is {width} x {height} pixels; at most {MAX_IMAGE_SIDE} a side: downscale it"
        )
    return _to_uint8(np, arr)


def _to_uint8(np, arr):
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise InvalidValueError(
                f"Image of integers from {lo} to {hi}: integer pixels must be 0..255 (or give floats)"
            )
        return arr.astype(np.uint8)
    if arr.dtype.kind != "f":
        raise InvalidValueError(f"Image pixels of dtype {arr.dtype} are not numbers: give uint8 or floats")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InvalidValueError("Image has NaN or infinite pixels: replace them (np.nan_to_num)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 1:
        arr = arr * 255
    elif lo < 0 or hi > 255:  # another range: stretched to 0..255
        arr = (arr - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def encode_png(pixels) -> bytes:
    """PNG bytes of uint8 H x W x C pixels (C = 1..4), written with zlib (no PIL needed)."""
    np = _numpy("Image")
    height, width, channels = pixels.shape
    rows = np.empty((height, 1 + width * channels), np.uint8)
    rows[:, 0] = 0  # filter type None on every row
    rows[:, 1:] = pixels.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR[channels], 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def decode_png(data: bytes):
    """uint8 H x W x C pixels of a PNG: through PIL when installed, else for the 8-bit
    unfiltered PNGs this module writes."""
    np = _numpy("Image")
    try:
        from PIL import Image as PILImage
    except ImportError:
        PILImage = None
    if PILImage is not None:
        arr = np.asarray(PILImage.open(io.BytesIO(data)))
        return arr[:, :, None] if arr.ndim == 2 else arr
    if not data.startswith(_PNG_SIGNATURE):
        raise InvalidValueError("not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, color = header[:4]
    channels = {v: k for k, v in _PNG_COLOR.items()}.get(color)
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, -1)
    if depth != 8 or channels is None or (rows[:, 0] != 0).any():
        raise InvalidValueError("this PNG needs PIL to decode: pip install pillow")
    return rows[:, 1:].reshape(height, width, channels).copy()


# ---------------------------------------------------------------- audio


class Audio(Media):
    """An audio clip: float samples in [-1, 1] (a clip whose peak is above 1 is scaled down by
    it) or int16 samples, shape (n,) or (n, channels), and its sample rate in Hz. Stored as a
    16-bit PCM WAV. `Audio(wave, sample_rate=16000, caption="epoch 3")`."""

    kind = "audio"
    format = "wav"

    def __init__(self, data: Any, sample_rate: int, caption: str | None = None):
        super().__init__(caption)
        np = _numpy("Audio")
        if type(sample_rate) is not int or not 1 <= sample_rate <= 1_000_000:
            raise InvalidValueError(f"Audio sample_rate={sample_rate!r}: give an int in Hz, 1..1,000,000")
        arr = _to_numpy(np, data, "Audio")
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] > 16:
            raise InvalidValueError(
                f"Audio takes samples shaped (n,) or (n, channels <= 16); this array has shape {tuple(arr.shape)}"
            )
        if arr.shape[0] == 0:
            raise InvalidValueError("Audio has no samples")
        if arr.dtype == np.int16:
            pcm = arr
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float64)
            if not np.isfinite(arr).all():
                raise InvalidValueError("Audio has NaN or infinite samples: replace them (np.nan_to_num)")
            peak = float(np.abs(arr).max())
            if peak > 1:
                arr = arr / peak
            pcm = np.rint(arr * 32767).astype("<i2")
        else:
            raise InvalidValueError(f"Audio samples of dtype {arr.dtype}: give floats in [-1, 1] or int16")
        n, channels = pcm.shape
        self.meta = {"sample_rate": sample_rate, "channels": channels, "duration_s": n / sample_rate}
        self._set_data(encode_wav(pcm, sample_rate))


def encode_wav(pcm, sample_rate: int) -> bytes:
    """WAV bytes of int16 samples shaped (n, channels), with the stdlib's wave module."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return out.getvalue()


def decode_wav(data: bytes):
    """(float32 samples in [-1, 1] shaped (n, channels), sample rate) of a 16-bit WAV."""
    np = _numpy("Audio")
    with wave.open(io.BytesIO(data), "rb") as w:
        channels, rate = w.getnchannels(), w.getframerate()
        frames = w.readframes(w.getnframes())
    return np.frombuffer(frames, "<i2").reshape(-1, channels).astype(np.float32) / 32767, rate


# ---------------------------------------------------------------- histograms


class Histogram(Media):
    """A distribution: `Histogram(values, bins=64)` bins an array here (numpy; NaN and inf are
    left out, an array with no finite value is refused), or `Histogram(bin_edges=e, counts=c)` /
    `Histogram(np_histogram=np.histogram(x))` takes bins computed elsewhere. Stored as bins and
    counts (no file); the run page draws a key's histograms over steps."""

    kind = "histogram"

    def __init__(
        self,
        values: Any = None,
        bins: int = 64,
        *,
        bin_edges: Any = None,
        counts: Any = None,
        np_histogram: Any = None,
        caption: str | None = None,
    ):
        super().__init__(caption)
        if np_histogram is not None:
            if values is not None or bin_edges is not None or counts is not None:
                raise InvalidValueError("Histogram: give np_histogram alone")
            counts, bin_edges = np_histogram
        if values is not None:
            if bin_edges is not None or counts is not None:
                raise InvalidValueError(
                    "Histogram: give values (binned here) or bin_edges + counts, not both"
                )
            edges, cnts = _bin(values, bins)
        elif bin_edges is not None and counts is not None:
            edges, cnts = _check_bins(bin_edges, counts)
        else:
            raise InvalidValueError("Histogram needs values, or bin_edges and counts, or np_histogram")
        self.meta = {"bin_edges": edges, "counts": cnts}


def _bin(values: Any, bins: int) -> tuple[list[float], list[float]]:
    np = _numpy("Histogram")
    if type(bins) is not int or not 1 <= bins <= MAX_HISTOGRAM_BINS:
        raise InvalidValueError(f"Histogram bins={bins!r}: give an int from 1 to {MAX_HISTOGRAM_BINS}")
    arr = _to_numpy(np, values, "Histogram")
    if arr.dtype.kind not in "biuf":
        raise InvalidValueError(f"Histogram values of dtype {arr.dtype} are not numbers")
    arr = arr.astype(np.float64).ravel()
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise InvalidValueError(
            f"Histogram of {arr.size} values has no finite value (all NaN/inf, or empty): nothing to bin"
        )
    counts, edges = np.histogram(finite, bins=bins)
    return edges.tolist(), counts.astype(np.float64).tolist()


def _check_bins(bin_edges: Any, counts: Any) -> tuple[list[float], list[float]]:
    edges = [float(e) for e in _as_list(bin_edges, "bin_edges")]
    cnts = [float(c) for c in _as_list(counts, "counts")]
    if not cnts or len(cnts) > MAX_HISTOGRAM_BINS:
        raise InvalidValueError(f"Histogram has {len(cnts)} bins; give 1 to {MAX_HISTOGRAM_BINS}")
    if len(edges) != len(cnts) + 1:
        raise InvalidValueError(
            f"Histogram: {len(edges)} bin edges for {len(cnts)} counts; give len(counts) + 1 edges"
        )
    if not all(math.isfinite(e) for e in edges) or any(
        b <= a for a, b in zip(edges, edges[1:], strict=False)
    ):
        raise InvalidValueError("Histogram bin edges must be finite and strictly ascending")
    if not all(math.isfinite(c) and c >= 0 for c in cnts):
        raise InvalidValueError("Histogram counts must be finite and >= 0")
    return edges, cnts


def _as_list(value: Any, what: str) -> list:
    tolist = getattr(value, "tolist", None)
    value = tolist() if tolist is not None else value
    try:
        return list(value)
    except TypeError:
        raise InvalidValueError(f"Histogram {what} must be a sequence of numbers") from None


# ---------------------------------------------------------------- tables


class Table(Media):
    """A table: a pandas DataFrame, or `Table(data=rows, columns=names)`. Stored as Parquet
    (pandas and pyarrow needed: pip install "runstream[dashboard]" or pandas pyarrow); read back
    with `item.load()` as a DataFrame. At most MAX_TABLE_ROWS rows, MAX_TABLE_COLUMNS columns."""

    kind = "table"
    format = "parquet"

    def __init__(
        self, dataframe: Any = None, *, data: Any = None, columns: Any = None, caption: str | None = None
    ):
        super().__init__(caption)
        try:
            import pandas as pd
        except ImportError:
            raise InvalidValueError(
                "runstream.Table needs pandas and pyarrow: pip install pandas pyarrow"
            ) from None
        if dataframe is None:
            if data is None:
                raise InvalidValueError("Table needs a DataFrame, or data= (rows) with columns=")
            dataframe = pd.DataFrame(data, columns=columns)
        elif not isinstance(dataframe, pd.DataFrame):
            raise InvalidValueError(f"Table takes a pandas DataFrame, not {type(dataframe).__name__}")
        rows, cols = dataframe.shape
        if rows > MAX_TABLE_ROWS or cols > MAX_TABLE_COLUMNS:
            raise InvalidValueError(
                f"Table has {rows:,} rows x {cols:,} columns; the limits are {MAX_TABLE_ROWS:,} rows and "
                f"{MAX_TABLE_COLUMNS:,} columns: log a sample, or the whole as an artifact"
            )
        frame = dataframe.copy(deep=False)
        frame.columns = [str(c) for c in frame.columns]
        if len(set(frame.columns)) != cols:
            raise InvalidValueError("Table column names must be unique (as strings)")
        out = io.BytesIO()
        try:
            frame.to_parquet(out, index=False)
        except ImportError:
            raise InvalidValueError("runstream.Table needs pyarrow: pip install pyarrow") from None
        except (ValueError, TypeError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise InvalidValueError(f"Table cannot be stored as Parquet: {exc}") from None
        self.meta = {"rows": rows, "columns": list(frame.columns)}
        self._set_data(out.getvalue())


# ---------------------------------------------------------------- text


class Text(Media):
    """A text sample (a generated sentence, a prediction): at most MAX_TEXT_CHARS characters."""

    kind = "text"

    def __init__(self, text: str, caption: str | None = None):
        super().__init__(caption)
        if not isinstance(text, str):
            raise InvalidValueError(f"Text takes a str, not {type(text).__name__}")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidValueError(
                f"Text is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}: log longer text as an artifact"
            )
        self.meta = {"text": text}


# ---------------------------------------------------------------- input helpers


def _numpy(what: str):
    try:
        import numpy
    except ImportError:
        raise InvalidValueError(f"runstream.{what} from arrays needs numpy: pip install numpy") from None
    return numpy


def _is_pil(data: Any) -> bool:
    return type(data).__module__.startswith("PIL.") and hasattr(data, "getbands")


def _is_torch(data: Any) -> bool:
    return type(data).__module__.startswith("torch") and hasattr(data, "detach")


def _to_numpy(np, data: Any, what: str):
    if _is_torch(data):
        data = data.detach().cpu().numpy()
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise InvalidValueError(f"{what} cannot read {type(data).__name__} as an array: {exc}") from None
    if arr.dtype == object:
        raise InvalidValueError(f"{what} takes a numeric array; this one holds Python objects (ragged?)")
    return arr
