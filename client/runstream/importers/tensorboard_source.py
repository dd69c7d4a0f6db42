"""TensorBoard event files -> Runstream: scalars, with their steps and wall times.

Every folder under LOGDIR holding `*tfevents*` files is one run (its event files read in name
order, which is the order they were written); the run's id derives from its path relative to
LOGDIR (core.run_id_for), so moving LOGDIR does not change it, and that path is the run's name.
The run's start and end are the times of its first and last scalar. Scalars are the values TensorBoard's Scalars tab shows: `simple_value` summaries (tensorboardX,
TF1, PyTorch's SummaryWriter) and rank-0 tensors tagged with the "scalars" plugin (TF2's
tf.summary.scalar). Images, histograms, text and graphs are not imported.

The file framing (TFRecord: length, masked CRC32C of the length, data, masked CRC32C of the data)
is read here and both checksums are checked; a corrupt record stops the import of that run with an
error naming the file and offset, a record cut short at the end of a file (a writer still running)
ends that file. Each record's Event message is decoded with the Event protobuf class of TensorBoard
when installed, else of tensorboardX (`pip install 'runstream[importers]'`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from .core import ImportFailed, ImportReport, Series, SourceRun, cli_result, digest, import_runs

_CRC_TABLE: list[int] = []
try:
    from google_crc32c import value as _fast_crc32c
except ImportError:
    _fast_crc32c = None


def _table() -> list[int]:
    if not _CRC_TABLE:
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    return _CRC_TABLE


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord files use: google-crc32c's C code when it is
    installed, else this table-driven loop (about 8 MB/s on one core)."""
    if _fast_crc32c is not None:
        return _fast_crc32c(data)
    table = _table()
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path: Path) -> Iterator[bytes]:
    """The records of one TFRecord file, checksums checked (see the module docstring)."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if len(header) < 12:
                return  # end of file, or a header cut short by a writer still running
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if masked_crc(length_bytes) != length_crc:
                raise ImportFailed(f"{path}: corrupt record length at byte {offset} (CRC32C mismatch)")
            (length,) = struct.unpack("<Q", length_bytes)
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                return
            if masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise ImportFailed(f"{path}: corrupt record data at byte {offset} (CRC32C mismatch)")
            offset += 16 + length
            yield data


def _event_class():
    try:
        from tensorboard.compat.proto.event_pb2 import Event
    except ImportError:
        try:
            from tensorboardX.proto.event_pb2 import Event
        except ImportError:
            raise ImportFailed(
                "decoding TensorBoard events needs tensorboard or tensorboardX: "
                "pip install 'runstream[importers]'"
            ) from None
    return Event


_DTYPE_FLOAT, _DTYPE_DOUBLE, _DTYPE_HALF = 1, 2, 19


def _scalar(value) -> float | None:
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return value.simple_value
    if kind != "tensor" or value.metadata.plugin_data.plugin_name != "scalars":
        return None
    t = value.tensor
    if t.float_val:
        return t.float_val[0]
    if t.double_val:
        return t.double_val[0]
    if t.tensor_content:
        fmt = {_DTYPE_FLOAT: "<f", _DTYPE_DOUBLE: "<d", _DTYPE_HALF: "<e"}.get(t.dtype)
        if fmt:
            return struct.unpack_from(fmt, t.tensor_content)[0]
    return None


def read_scalars(files: list[Path]) -> list[Series]:
    event_cls = _event_class()
    points: dict[str, tuple[list, list, list]] = {}
    for path in files:
        for data in records(path):
            event = event_cls.FromString(data)
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                number = _scalar(value)
                if number is None:
                    continue
                steps, values, times = points.setdefault(value.tag, ([], [], []))
                steps.append(max(0, int(event.step)))
                values.append(float(number))
                times.append(event.wall_time)
    return [Series(tag, *points[tag]) for tag in sorted(points)]


def find_runs(logdir: Path) -> dict[str, list[Path]]:
    """{relative folder: its event files, in name order} for every folder holding event files."""
    runs: dict[str, list[Path]] = {}
    for path in sorted(logdir.rglob("*tfevents*")):
        if path.is_file():
            rel = path.parent.relative_to(logdir).as_posix()
            runs.setdefault(rel, []).append(path)
    return runs


def source_runs(logdir: Path, project: str, group: str | None = None) -> list[SourceRun]:
    if not logdir.is_dir():
        raise ImportFailed(f"no such folder: {logdir}")
    found = find_runs(logdir)
    if not found:
        raise ImportFailed(f"no TensorBoard event files (*tfevents*) under {logdir}")
    out = []
    for rel, files in found.items():
        name = rel if rel != "." else logdir.resolve().name
        series_cache: list[list[Series]] = []

        def metrics(files=files, cache=series_cache) -> list[Series]:
            if not cache:
                cache.append(read_scalars(files))
            return cache[0]

        out.append(
            SourceRun(
                source="tensorboard",
                source_id=name if rel == "." else rel,
                project=project,
                group=group if group is not None else logdir.resolve().name,
                fingerprint=digest([(p.name, p.stat().st_size) for p in files]),
                name=name,
                tags={"tensorboard.logdir": str(logdir.resolve()), "tensorboard.run": rel},
                metrics=metrics,
            )
        )
    return out


def import_tensorboard(
    logdir: str | Path,
    *,
    project: str,
    group: str | None = None,
    endpoint: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
    quiet: bool = False,
) -> ImportReport:
    """Imports every run (folder of event files) under `logdir` into `project`."""
    runs = source_runs(Path(logdir).expanduser(), project, group)
    return import_runs(
        runs, endpoint=endpoint, api_key=api_key, total=len(runs), progress=progress, quiet=quiet,
        label="tensorboard import",
    )  # fmt: skip


def main(args) -> int:
    """`runstream import tensorboard LOGDIR --project P`."""
    return cli_result(
        "tensorboard",
        lambda: import_tensorboard(
            args.logdir,
            project=args.project,
            group=args.group,
            endpoint=args.endpoint,
            api_key=args.api_key,
            progress=not args.no_progress,
            quiet=args.quiet,
        ),  # fmt: skip
    )
