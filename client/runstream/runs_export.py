"""Writing a runs table (the DataFrame `runstream.Api.runs` returns) to Parquet or CSV, for
`Api.export_runs` and `runstream runs export`. pandas is needed (runstream[sdk-extras]) and, for
Parquet, pyarrow (runstream[parquet]); both are imported only when a file is written."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from runstream.errors import RunstreamError

FORMATS = ("parquet", "csv")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def export_format(path: str | os.PathLike, format: str | None) -> str:
    """The format to write: `format` when given, else the one the file's suffix names."""
    if format:
        fmt = format.lower()
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {format!r}: use parquet or csv")
        return fmt
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its suffix: name it .parquet or .csv, or pass format="
        )
    return fmt


def write(frame, path: str | os.PathLike, fmt: str) -> None:
    """Writes the frame to `path` (its folder must exist); the file is replaced as a whole, so a
    reader never sees half of it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            _write_parquet(frame, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_parquet(frame, path: Path) -> None:
    try:
        import pyarrow  # noqa: F401 - pandas writes Parquet through it
    except ImportError:
        raise RunstreamError(
            "writing Parquet needs pyarrow: pip install pyarrow (or runstream[parquet])"
        ) from None
    frame = frame.copy(deep=False)
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object and not _one_arrow_type(column):
            frame[name] = [_as_text(v) for v in column]
    frame.to_parquet(path, index=False)


def _one_arrow_type(column) -> bool:
    """True when pyarrow can store the column as it is (all numbers, all text, all flags, ...)."""
    import pyarrow as pa

    try:
        pa.array(column.tolist(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return False
    return True


def _as_text(value) -> str | None:
    """A cell of a mixed column: text as is, missing (NaN/None) as null, anything else as JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value)
