"""W&B run folders -> Runstream: config, summary, tags, notes, group, job type, every history row,
the run's files and its logged artifacts.

Input: the folders wandb writes locally (`wandb/offline-run-<time>-<id>/` for offline runs,
`wandb/run-<time>-<id>/` for synced ones), each holding `run-<id>.wandb`, the transaction log of
everything the run recorded. The log is read with W&B's own record schema
(`wandb.proto.wandb_internal_pb2.Record`, so wandb must be installed); wandb >= 0.2x no longer ships
a Python reader of the log's framing (its Go core reads it), so the framing is read here: a 7-byte
file header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte
header (CRC-32 of type byte + data, length, type FULL/FIRST/MIDDLE/LAST). Every chunk's CRC is
checked; a run whose log is corrupt is reported as failed with the file and offset.

Mapping: a run becomes `wandb-<W&B run id>` in the project given, else the W&B project's name.
History rows: every numeric value is a point at the row's `_step`, timed by its `_timestamp`;
values that are not numbers (media, tables) are left out. Keys starting with "_" are W&B's own.
Summary keys that are not history keys (e.g. `run.summary["best"] = ...`) become the summary.
The run's state: finished for exit code 0, failed for another, killed when the log has no exit
record (the run crashed or still runs: a later import picks up the rest). Files in the run's
files/ folder become artifacts named after their top-level entry; a logged W&B artifact whose
files are still staged locally becomes an artifact of its name and type.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runstream import states

from .core import (
    ImportFailed,
    ImportReport,
    Series,
    SourceArtifact,
    SourceRun,
    cli_result,
    digest,
    import_runs,
    project_name,
)

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (0, FULL, FIRST, MIDDLE, LAST)}


def _record_class():
    try:
        from wandb.proto.wandb_internal_pb2 import Record
    except ImportError:
        raise ImportFailed("reading .wandb files needs wandb's record schema: pip install wandb") from None
    return Record


def log_records(path: Path) -> Iterator[bytes]:
    """The records of one .wandb transaction log, CRCs checked (see the module docstring)."""
    data = path.read_bytes()
    if data[:7] != HEADER:
        raise ImportFailed(f"{path} is not a W&B transaction log (no ':W&B' header)")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0 and crc == 0:  # zero padding at the end of a block / file
            pos += room
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        if len(chunk) < length:
            return  # cut short: the run is still being written
        if kind not in _TYPE_CRC or zlib.crc32(chunk, _TYPE_CRC[kind]) & 0xFFFFFFFF != crc:
            raise ImportFailed(f"{path}: corrupt record at byte {pos} (CRC mismatch)")
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        else:
            yield pending + chunk
            pending = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _number(text: str) -> float | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
            return float(value.replace("Infinity", "inf"))
        return None
    return float(value)


class WandbRun:
    """Everything one .wandb log says about its run, read once."""

    def __init__(self, log: Path):
        self.log = log
        self.folder = log.parent
        self.info = None
        self.config: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.exit_code: int | None = None
        self.series: dict[str, tuple[list, list, list]] = {}
        self.artifacts: list = []
        self.history_keys: set[str] = set()  # numeric or not
        record_cls = _record_class()
        for data in log_records(log):
            record = record_cls.FromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.info = record.run
                self._config(record.run.config)
            elif kind == "config":
                self._config(record.config)
            elif kind == "history":
                self._history(record.history)
            elif kind == "summary":
                for item in record.summary.update:
                    self.summary[_key(item)] = item.value_json
                for item in record.summary.remove:
                    self.summary.pop(_key(item), None)
            elif kind == "exit":
                self.exit_code = record.exit.exit_code
            elif kind == "artifact":
                self.artifacts.append(record.artifact)
        if self.info is None:
            raise ImportFailed(f"{log}: no run record (not a run's transaction log?)")

    def _config(self, config) -> None:
        for item in config.update:
            key = _key(item)
            if key != "_wandb":
                self.config[key] = json.loads(item.value_json)
        for item in config.remove:
            self.config.pop(_key(item), None)

    def _history(self, history) -> None:
        row = {_key(item): item.value_json for item in history.item}
        step = int(history.step.num) if history.HasField("step") else int(json.loads(row.get("_step", "0")))
        when = _number(row.get("_timestamp", "null"))
        for key, text in row.items():
            if key.startswith("_"):
                continue
            self.history_keys.add(key)
            value = _number(text)
            if value is None:
                continue
            steps, values, times = self.series.setdefault(key, ([], [], []))
            steps.append(step)
            values.append(value)
            times.append(when if when is not None else math.nan)

    def metric_series(self) -> list[Series]:
        out = []
        for key in sorted(self.series):
            steps, values, times = self.series[key]
            out.append(Series(key, steps, values, None if any(t != t for t in times) else times))
        return out

    def summary_values(self) -> dict[str, Any]:
        out = {}
        for key, text in self.summary.items():
            if key.startswith("_") or key in self.history_keys:
                continue
            try:
                out[key] = json.loads(text)
            except ValueError:
                out[key] = text
        return out

    def source_artifacts(self) -> list[SourceArtifact]:
        files = self.folder / "files"
        out = []
        if files.is_dir():
            out += [SourceArtifact(p.name, lambda _s, p=p: p) for p in sorted(files.iterdir())]
        for art in self.artifacts:
            entries = [(c.path, Path(c.local_path)) for c in art.manifest.contents if c.local_path]
            if not entries or not all(local.is_file() for _, local in entries):
                continue  # staged copies already removed (after a sync): nothing local to import

            def path(scratch: Path, entries=entries, name=art.name) -> Path:
                root = scratch / name
                for rel, local in entries:
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(local, root / rel)
                return root

            out.append(SourceArtifact(art.name, path, art.type))
        return out


def find_logs(paths: list[str | Path]) -> list[Path]:
    """.wandb logs under each path (a .wandb file, a run folder or a wandb/ folder), by run folder."""
    logs: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_file() and path.suffix == ".wandb":
            logs.append(path)
        elif path.is_dir():
            logs += sorted(path.glob("run-*.wandb")) or sorted(path.glob("*/run-*.wandb"))
        else:
            raise ImportFailed(f"{path}: not a .wandb file or a folder")
    if not logs:
        raise ImportFailed(f"no W&B run logs (run-<id>.wandb) under {', '.join(map(str, paths))}")
    return sorted({log.resolve() for log in logs})  # wandb/latest-run links to a run folder too


def source_run(log: Path, project: str | None) -> SourceRun:
    run = WandbRun(log)
    info = run.info
    files = run.folder / "files"
    listing = sorted((p.relative_to(files).as_posix(), p.stat().st_size) for p in files.rglob("*") if p.is_file()) if files.is_dir() else []  # fmt: skip
    state = (
        states.KILLED if run.exit_code is None else (states.FINISHED if run.exit_code == 0 else states.FAILED)
    )
    times = [t for _, _, ts in run.series.values() for t in ts if t == t]
    start = info.start_time.seconds + info.start_time.nanos / 1e9 if info.HasField("start_time") else None
    return SourceRun(
        source="wandb",
        source_id=info.run_id,
        project=project or project_name(info.project or "wandb"),
        fingerprint=digest(log.stat().st_size, listing),
        name=info.display_name,
        group=info.run_group,
        tags={
            **{t: "" for t in info.tags},
            "wandb.project": info.project,
            "wandb.entity": info.entity,
            "wandb.host": info.host,
            "wandb.job_type": info.job_type,
        },  # fmt: skip
        notes=info.notes,
        config=run.config,
        summary=run.summary_values(),
        start_s=start,
        end_s=max(times) if times and run.exit_code is not None else None,
        state=state,
        metrics=run.metric_series,
        artifacts=run.source_artifacts,
    )


def import_wandb(
    paths: list[str | Path],
    *,
    project: str | None = None,
    endpoint: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
    quiet: bool = False,
) -> ImportReport:
    """Imports every W&B run log found under `paths` (see the module docstring)."""
    logs = find_logs(paths)

    def runs() -> Iterator[SourceRun]:
        for log in logs:
            try:
                yield source_run(log, project)
            except ImportFailed as exc:  # this log cannot be read: reported, the others go on
                name = log.stem.removeprefix("run-")
                yield SourceRun("wandb", name, project or "", "", error=str(exc))

    return import_runs(
        runs(), endpoint=endpoint, api_key=api_key, total=len(logs), progress=progress, quiet=quiet,
        label="wandb import",
    )  # fmt: skip


def main(args) -> int:
    """`runstream import wandb PATH...`."""
    return cli_result(
        "wandb",
        lambda: import_wandb(
            args.paths,
            project=args.project,
            endpoint=args.endpoint,
            api_key=args.api_key,
            progress=not args.no_progress,
            quiet=args.quiet,
        ),  # fmt: skip
    )
