"""Neptune exports -> Runstream: the Parquet files neptune-exporter writes (Neptune 2.x and 3.x).

Layout read (neptune-exporter's README, "Data layout on disk" and "Parquet schema"): under the
export's data folder, one folder per project holding `<run>_part_<n>.parquet` files; a run is
complete once its `part_0` file exists (the exporter renames it last), so runs without one are
left for a later import. Every row is one value of one attribute: project_id, run_id,
attribute_path, attribute_type (float, int, string, bool, datetime, string_set, float_series,
string_series, histogram_series, file, file_series), step (decimal(18,6)), timestamp, and the
typed value columns int_value ... histogram_value; file_value.path is relative to the export's
files folder.

Mapping: a Neptune project becomes a Runstream project (its id, '/' turned into '-') unless
`project=` is given; each run gets the id `neptune-<digest of project id and run id>` and the
Neptune run id as its name. sys/name (the experiment) becomes the group, sys/tags the tags,
sys/description the notes, sys/creation_time the start, sys/modification_time the end,
sys/failed a failed state; other sys/ values become `neptune.sys/...` tags. Parameters (float, int,
string, bool, datetime as ISO text, string_set as a list) become config. Float series become
metrics: Neptune steps are decimals, Runstream's integers, so each step is multiplied by
`step_multiplier` (1 by default, as the exporter's own loaders do) and must then be whole, else
the run fails with a message naming the multiplier to use. Files become artifacts named by their
attribute path; a file series becomes one artifact holding each step's file under `<step>/`;
string series and histogram series become one artifact each (a .jsonl file of step, time, value).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
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

PART = re.compile(r"^(?P<run>.+)_part_(?P<n>\d+)\.parquet$")
PARAM_TYPES = {"float", "int", "string", "bool", "datetime", "string_set"}
VALUE_COLUMN = {
    "float": "float_value", "int": "int_value", "string": "string_value", "bool": "bool_value",
    "datetime": "datetime_value", "string_set": "string_set_value",
}  # fmt: skip


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportFailed(
            "reading Neptune's Parquet export needs pyarrow: pip install 'runstream[importers]'"
        ) from None
    return pq


def find_runs(data: Path) -> dict[tuple[Path, str], list[Path]]:
    """{(project folder, run file prefix): its part files in part order} for complete runs."""
    parts: dict[tuple[Path, str], dict[int, Path]] = {}
    for path in data.rglob("*_part_*.parquet"):
        match = PART.match(path.name)
        if match and path.is_file():
            parts.setdefault((path.parent, match["run"]), {})[int(match["n"])] = path
    return {key: [p[n] for n in sorted(p)] for key, p in sorted(parts.items()) if 0 in p}


def _value(row: dict) -> Any:
    value = row.get(VALUE_COLUMN[row["attribute_type"]])
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _plain(number) -> str:
    """0.500000 -> "0.5", 2.0 -> "2"."""
    return format(Decimal(str(number)).normalize(), "f")


def _when(value) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


class NeptuneRun:
    """The rows of one exported run, grouped by attribute (read once, all parts)."""

    def __init__(self, files: list[Path], files_root: Path, step_multiplier: float):
        self.parts = files
        self.files_root = files_root
        self.multiplier = Decimal(str(step_multiplier))
        self.rows: dict[str, list[dict]] = {}
        self.types: dict[str, str] = {}
        pq = _pq()
        for path in files:
            for row in pq.read_table(path).to_pylist():
                self.rows.setdefault(row["attribute_path"], []).append(row)
                self.types[row["attribute_path"]] = row["attribute_type"]
        first = next(iter(self.rows.values()), [{}])[0]
        self.project_id = first.get("project_id") or files[0].parent.name
        self.run_id = first.get("run_id") or PART.match(files[0].name)["run"]

    def scalar(self, path: str) -> Any:
        rows = self.rows.get(path)
        return _value(rows[-1]) if rows and self.types[path] in PARAM_TYPES else None

    def step(self, raw, index: int) -> int:
        if raw is None:
            return index
        scaled = Decimal(str(raw)) * self.multiplier
        if scaled != scaled.to_integral_value() or scaled < 0:
            raise ImportFailed(
                f"Neptune run {self.run_id}: step {_plain(raw)} times --step-multiplier {_plain(self.multiplier)} "
                f"is {_plain(scaled)}, "
                "not a whole number >= 0: pick a multiplier that makes every step whole (e.g. 1000 for "
                "steps with 3 decimals), the same for every import"
            )
        return int(scaled)

    def metric_series(self) -> list[Series]:
        out = []
        for path in sorted(p for p, t in self.types.items() if t == "float_series"):
            rows = self.rows[path]
            times = [_when(r["timestamp"]) for r in rows]
            out.append(
                Series(
                    path,
                    [self.step(r["step"], i) for i, r in enumerate(rows)],
                    [float("nan") if r["float_value"] is None else float(r["float_value"]) for r in rows],
                    None if any(t is None for t in times) else times,
                )
            )
        return out

    def _file(self, rel: str) -> Path | None:
        root = self.files_root.resolve()
        for candidate in (root / rel, root / self.parts[0].parent.name / rel):
            candidate = candidate.resolve()
            if candidate.is_relative_to(root) and candidate.exists():  # never a file outside the export
                return candidate
        return None

    def source_artifacts(self) -> list[SourceArtifact]:
        out = []
        for path in sorted(self.types):
            kind, rows = self.types[path], self.rows[path]
            if kind == "file":
                local = self._file((rows[-1].get("file_value") or {}).get("path") or "")
                if local is not None:
                    out.append(SourceArtifact(path, lambda _s, local=local: local, "file"))
            elif kind == "file_series":
                found = [(r, self._file((r.get("file_value") or {}).get("path") or "")) for r in rows]
                found = [(i, r, f) for i, (r, f) in enumerate(found) if f is not None]
                if found:
                    out.append(SourceArtifact(path, self._series_files(path, found), "file_series"))
            elif kind in ("string_series", "histogram_series"):
                out.append(SourceArtifact(path, self._jsonl(path, rows), kind))
        return out

    def _series_files(self, path: str, found: list):
        def build(scratch: Path) -> Path:
            root = scratch / "files"
            for i, row, local in found:
                target = root / str(self.step(row["step"], i)) / local.name
                target.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if local.is_dir() else shutil.copyfile)(local, target)
            return root

        return build

    def _jsonl(self, path: str, rows: list[dict]):
        def build(scratch: Path) -> Path:
            target = scratch / (path.rsplit("/", 1)[-1] + ".jsonl")
            with open(target, "w") as f:
                for i, r in enumerate(rows):
                    value = (
                        r["string_value"] if r["attribute_type"] == "string_series" else r["histogram_value"]
                    )
                    f.write(
                        json.dumps(
                            {"step": self.step(r["step"], i), "time": _when(r["timestamp"]), "value": value}
                        )
                        + "\n"
                    )
            return target

        return build


def source_run(files: list[Path], files_root: Path, project: str | None, step_multiplier: float) -> SourceRun:
    run = NeptuneRun(files, files_root, step_multiplier)
    config, tags = {}, {}
    for path, kind in run.types.items():
        if kind not in PARAM_TYPES:
            continue
        if path.startswith("sys/"):
            if path not in ("sys/tags", "sys/name", "sys/description"):
                tags[f"neptune.{path}"] = str(run.scalar(path))
        else:
            config[path] = run.scalar(path)
    for tag in run.scalar("sys/tags") or []:
        tags[tag] = ""
    tags["neptune.project"] = run.project_id
    start, end = run.rows.get("sys/creation_time"), run.rows.get("sys/modification_time")
    return SourceRun(
        source="neptune",
        source_id=f"{run.project_id}/{run.run_id}",
        project=project or project_name(run.project_id),
        fingerprint=digest([(p.name, p.stat().st_size) for p in files], step_multiplier),
        name=run.run_id,
        group=str(run.scalar("sys/name") or ""),
        tags=tags,
        notes=str(run.scalar("sys/description") or ""),
        config=config,
        start_s=_when(start[-1]["datetime_value"]) if start else None,
        end_s=_when(end[-1]["datetime_value"]) if end else None,
        state=states.FAILED if run.scalar("sys/failed") else states.FINISHED,
        metrics=run.metric_series,
        artifacts=run.source_artifacts,
    )


def import_neptune(
    data: str | Path,
    *,
    files: str | Path | None = None,
    project: str | None = None,
    step_multiplier: float = 1.0,
    endpoint: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
    quiet: bool = False,
) -> ImportReport:
    """Imports every complete run of a neptune-exporter export (see the module docstring)."""
    data = Path(data).expanduser()
    if not data.is_dir():
        raise ImportFailed(f"no such folder: {data}")
    files_root = Path(files).expanduser() if files else data.parent / "files"
    found = find_runs(data)
    if not found:
        raise ImportFailed(f"no complete exported runs (<run>_part_0.parquet) under {data}")

    def runs() -> Iterator[SourceRun]:
        for (folder, prefix), parts in found.items():
            try:
                yield source_run(parts, files_root, project, step_multiplier)
            except (ImportFailed, OSError, ValueError) as exc:
                yield SourceRun("neptune", f"{folder.name}/{prefix}", project or "", "", error=str(exc))

    return import_runs(
        runs(), endpoint=endpoint, api_key=api_key, total=len(found), progress=progress, quiet=quiet,
        label="neptune import",
    )  # fmt: skip


def main(args) -> int:
    """`runstream import neptune DATA [--files FILES]`."""
    return cli_result(
        "neptune",
        lambda: import_neptune(
            args.data,
            files=args.files,
            project=args.project,
            step_multiplier=args.step_multiplier,
            endpoint=args.endpoint,
            api_key=args.api_key,
            progress=not args.no_progress,
            quiet=args.quiet,
        ),  # fmt: skip
    )
