"""Writes runs read from another tracker into Runstream, idempotently and resumably.

Every source module (mlflow_source, tensorboard_source, wandb_source, neptune_source) turns what
it reads into `SourceRun`s; `import_runs` is the one writer of them. Its contract:

- **One Runstream run per source run, with an id derived from the source's id** (`run_id_for`):
  importing again addresses the same run, never a new one.
- **Skipped when already complete**: the last thing an import does for a run, after every point and
  file was acknowledged, is to tag it `import.fingerprint` (a digest of the source run's state,
  computed by the reader) and finish it. A run whose tag matches and which has ended is skipped
  without reading its metrics. A source run that changed since (it went on logging) gets another
  fingerprint and is brought up to date.
- **Resumed when interrupted**: a run without that tag is continued. Of each metric series only the
  points after those the server holds are sent (`held_prefix`: the server's count and last step
  of the series tell which prefix is stored); when that cannot be told, the whole series is sent
  again, and the store keeps one point per (run, key, step): a resent point replaces itself
  (last-write-wins on the point's identity, writers/store.py). Artifacts whose files (paths and
  sha256) the run already holds under the same name are not logged again.

Points with the same step in one source series: Runstream keeps one point per step. When every
point of a series has the same step (MLflow's default when `step` is not given) the points are
numbered 0, 1, 2, ... in time order; otherwise the last one logged for a step is kept and the
others are counted in the report as `collapsed`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream import states
from runstream.errors import RunstreamError, ServerError

FINGERPRINT_TAG = "import.fingerprint"
SOURCE_TAG = "import.source"
SOURCE_ID_TAG = "import.source_id"
_ID_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")
_PROJECT_BAD = re.compile(r"[^A-Za-z0-9._-]+")


class ImportFailed(RunstreamError):
    """Raised when a source cannot be read or a run could not be written completely."""


@dataclass
class Series:
    """One metric's history: steps (ints >= 0), values (floats), times (unix seconds, or None)."""

    key: str
    steps: list[int]
    values: list[float]
    times: list[float] | None = None


@dataclass
class SourceArtifact:
    """A file or folder to record as artifact `name`; `path()` returns where it lies locally (a
    reader may download it first, into `scratch`)."""

    name: str
    path: Callable[[Path], Path]
    type: str = ""


@dataclass
class SourceRun:
    """A run as a reader found it. `metrics` and `artifacts` are called only when the run is
    imported (skipped runs never read them)."""

    source: str
    source_id: str
    project: str
    fingerprint: str
    name: str = ""
    group: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    start_s: float | None = None
    end_s: float | None = None
    state: str = states.FINISHED
    metrics: Callable[[], Iterable[Series]] = lambda: ()
    artifacts: Callable[[], Iterable[SourceArtifact]] = lambda: ()
    run_id: str = ""  # set by import_runs (run_id_for) unless the reader chose one
    error: str = ""  # set by a reader that could not read this run: reported as failed, nothing written


@dataclass
class RunResult:
    source_id: str
    project: str
    run_id: str
    status: str  # imported | resumed | skipped | failed
    keys_sent: int = 0
    keys_kept: int = 0
    points: int = 0
    collapsed: int = 0
    artifacts_sent: int = 0
    artifacts_kept: int = 0
    error: str = ""


@dataclass
class ImportReport:
    runs: list[RunResult] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # what the registry step did, one line each

    def count(self, status: str) -> int:
        return sum(1 for r in self.runs if r.status == status)

    @property
    def points(self) -> int:
        return sum(r.points for r in self.runs)

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in ("imported", "resumed", "skipped", "failed")]
        return f"runs: {', '.join(parts)}; {self.points:,} points sent"


def digest(*parts: Any) -> str:
    """A short stable digest of JSON-able parts (fingerprints, derived ids)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def run_id_for(source: str, source_id: str) -> str:
    """The Runstream run id of a source run: `<source>-<id>` when the id is short and plain (an
    MLflow or W&B run id), else `<source>-<digest of the id>`; the same for every import."""
    if _ID_SAFE.match(source_id) and len(source) + 1 + len(source_id) <= 64:
        return f"{source}-{source_id}"
    return f"{source}-{digest(source, source_id)}"


def project_name(text: str) -> str:
    """A Runstream project name (1-64 of A-Z a-z 0-9 . _ -) from a source's experiment or project
    name: other characters become '-'."""
    cleaned = _PROJECT_BAD.sub("-", text).strip("-")[:64] or "imported"
    return cleaned if set(cleaned) != {"."} else "imported"


def artifact_name(text: str) -> str:
    """An artifact name the server takes (no '/', '\\' or control characters; not '.' or '..'):
    a source's path-like name "files/model" becomes "files.model"."""
    cleaned = (
        re.sub(r"[\x00-\x1f\x7f]", "", text.replace("/", ".").replace("\\", ".")).strip(".") or "artifact"
    )
    return cleaned[:128]


def parse_param(text: str) -> Any:
    """An MLflow-style string param as the value a filter can compare: int, float or bool when the
    text is exactly one, the text otherwise ("0.01" -> 0.01, "True" -> True, "adam" -> "adam")."""
    if text in ("True", "true", "False", "false"):
        return text in ("True", "true")
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) or text.lower() in ("nan", "inf", "-inf") else text


def normalize(series: Series) -> tuple[Series, int]:
    """One point per step (see the module docstring); returns the series and the points dropped."""
    n = len(series.steps)
    if n <= 1:
        return series, 0
    times = series.times
    order = sorted(range(n), key=lambda i: (series.steps[i], times[i] if times else 0.0, i))
    if series.steps[order[0]] == series.steps[order[-1]]:  # one step for all: number them in time order
        return Series(
            series.key,
            list(range(n)),
            [series.values[i] for i in order],
            [times[i] for i in order] if times else None,
        ), 0
    keep = [
        i for pos, i in enumerate(order) if pos + 1 == n or series.steps[order[pos + 1]] != series.steps[i]
    ]
    return Series(
        series.key,
        [series.steps[i] for i in keep],
        [series.values[i] for i in keep],
        [times[i] for i in keep] if times else None,
    ), n - len(keep)


def held_prefix(series: Series, held: tuple[int, int] | None) -> int:
    """How many of the series' first points the server holds already, from its summary of the
    series (count, last step): a series is sent in step order, so what an interrupted import
    stored is a prefix of it when the count matches the points up to the stored last step. Any
    other state (nothing held, a changed source) sends the whole series again, which the store
    takes idempotently (one point per step)."""
    if held is None:
        return 0
    count, last_step = held
    upto = bisect.bisect_right(series.steps, last_step)
    return upto if upto == count and upto and series.steps[upto - 1] == last_step else 0


class Progress:
    """A tqdm bar over runs when tqdm is installed and `enabled`; otherwise one line per run on
    stderr (unless `quiet`)."""

    def __init__(self, total: int | None, label: str, enabled: bool = True, quiet: bool = False):
        self.total, self.label, self.quiet = total, label, quiet
        self.done = 0
        self._bar = None
        if enabled and not quiet:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=label, unit="run", leave=True)
            except ImportError:
                pass

    def update(self, result: RunResult) -> None:
        self.done += 1
        line = describe(result)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{result.status} {result.run_id}", refresh=False)
            self._bar.update(1)
            if result.status == "failed":
                self._bar.write(line, file=sys.stderr)
        elif not self.quiet:
            of = f"/{self.total}" if self.total is not None else ""
            print(f"{self.label}: [{self.done}{of}] {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def describe(r: RunResult) -> str:
    where = f"{r.source_id} -> {r.project}/{r.run_id}"
    if r.status == "skipped":
        return f"{where}: skipped (already imported, unchanged)"
    if r.status == "failed":
        return f"{where}: FAILED: {r.error}"
    return (
        f"{where}: {r.status}: {r.keys_sent} series sent ({r.points:,} points), {r.keys_kept} already there; "
        f"{r.artifacts_sent} artifacts sent, {r.artifacts_kept} already there"
        + (f"; {r.collapsed} points with a repeated step dropped" if r.collapsed else "")
    )


class RunWriter:
    """Writes SourceRuns into one Runstream server (see the module docstring for the rules)."""

    def __init__(
        self,
        endpoint: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        scratch: Path | None = None,
    ):
        from runstream.config import resolve
        from runstream.registry_client import RegistryClient

        self.settings = resolve(
            endpoint=endpoint,
            api_key=api_key,
            mode="online",
            system_metrics_interval_s=0,  # the importing machine's CPU is not the source run's
            capture_context=False,  # nor its git commit, packages or host
            capture_packages=False,
            console="off",  # nor its terminal (the importer's own progress output)
            finish_timeout_s=timeout_s,
        )
        self.timeout_s = timeout_s
        self.query = RegistryClient(self.settings.endpoint, self.settings.api_key, timeout_s=timeout_s)
        self.scratch = scratch

    def close(self) -> None:
        self.query.close()

    def existing(self, project: str, run_id: str):
        try:
            return self.query.get_run(project, run_id)
        except ServerError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise

    def write(self, src: SourceRun) -> RunResult:
        src.run_id = src.run_id or run_id_for(src.source, src.source_id)
        result = RunResult(src.source_id, src.project, src.run_id, "imported")
        if src.error:
            result.status, result.error = "failed", src.error
            return result
        have = self.existing(src.project, src.run_id)
        if have is not None:
            ended = states.state_name(have.state) in states.TERMINAL_STATES
            if ended and have.tags.get(FINGERPRINT_TAG) == src.fingerprint:
                result.status = "skipped"
                return result
            result.status = "resumed"
        self._write(src, have, result)
        return result

    def _write(self, src: SourceRun, have, result: RunResult) -> None:
        import tempfile

        import runstream

        have_metrics = {m.key: (m.count, m.last_step) for m in have.metrics} if have is not None else {}
        have_files: dict[str, list[set]] = {}
        if have is not None:
            by_version: dict[tuple[str, int], set] = {}
            for a in have.artifacts:
                by_version.setdefault((a.name, a.version), set()).add((a.path, a.sha256))
            for (name, _), files in by_version.items():
                have_files.setdefault(name, []).append(files)
        tags = {k: v for k, v in src.tags.items() if k != FINGERPRINT_TAG}
        tags[SOURCE_TAG] = src.source
        tags[SOURCE_ID_TAG] = src.source_id
        series_list = []  # read before the run starts: without a source start, the first point's time is it
        collapsed = 0
        for series in src.metrics():
            series, dropped = normalize(series)
            collapsed += dropped
            if series.steps:
                series_list.append(series)
        times = [t for series in series_list if series.times for t in (min(series.times), max(series.times))]
        start_s = src.start_s if src.start_s is not None else min(times, default=None)
        end_s = src.end_s or max(times, default=None)
        result.collapsed = collapsed
        run = runstream.init(
            project=src.project,
            id=src.run_id,
            resume=True,
            name=src.name or None,
            group=src.group or None,
            tags=tags,
            notes=src.notes or None,
            config=src.config or None,
            start_time=start_s,
            settings=self.settings,
        )
        try:
            if src.summary:
                run.summary.update(src.summary)
            for series in series_list:
                start = held_prefix(series, have_metrics.get(series.key))
                if start == len(series.steps):
                    result.keys_kept += 1
                    continue
                times = series.times[start:] if series.times else None
                run.log_arrays(series.key, series.steps[start:], series.values[start:], times=times)
                result.keys_sent += 1
                result.points += len(series.steps) - start
            # files over 1 MiB are uploaded by the worker later: downloads must outlive the flush
            with tempfile.TemporaryDirectory(prefix="runstream-import-", dir=self.scratch) as tmp:
                for i, art in enumerate(src.artifacts()):
                    self._artifact(run, art, Path(tmp) / str(i), have_files, result)
                flushed = run.flush(self.timeout_s)
            if run.refused_count:
                raise ImportFailed(
                    f"run {src.run_id!r}: the server refused {run.refused_count} of its requests (the warnings "
                    "above say why); the run stays incomplete and is continued by the next import"
                )
            if not flushed:
                raise ImportFailed(
                    f"run {src.run_id!r}: the server did not acknowledge everything within {self.timeout_s}s "
                    f"(last error: {run.stats.get('last_error') or 'none'}); run the import again to resume"
                )
            run.tags = {**run.tags, FINGERPRINT_TAG: src.fingerprint}
            state = src.state if src.state in states.FINISH_STATES else states.KILLED
            if not run.finish(state, end_time=end_s):
                raise ImportFailed(
                    f"run {src.run_id!r}: its end was not acknowledged; run the import again to resume"
                )
        except BaseException:
            run.finish(states.KILLED, timeout_s=5.0)
            raise

    def _artifact(self, run, art: SourceArtifact, scratch: Path, have_files, result: RunResult) -> None:
        from runstream._internal.files import collect  # the same walk and sha256 as log_artifact

        scratch.mkdir(parents=True, exist_ok=True)
        path = art.path(scratch)
        files = {(f.rel, f.sha256) for f in collect(path)}
        if not files:
            return
        name = artifact_name(art.name)
        if any(files == held for held in have_files.get(name, [])):
            result.artifacts_kept += 1
            return
        run.log_artifact(path, name=name, type=art.type or None)
        result.artifacts_sent += 1


def import_runs(
    runs: Iterable[SourceRun],
    *,
    endpoint: str | None = None,
    api_key: str | None = None,
    total: int | None = None,
    progress: bool = True,
    quiet: bool = False,
    label: str = "runstream import",
    keep_going: bool = True,
    writer: RunWriter | None = None,
) -> ImportReport:
    """Writes each SourceRun (see the module docstring); a run that fails is reported and the next
    one goes on unless `keep_going` is False. Returns the report."""
    report = ImportReport()
    own = writer is None
    writer = writer or RunWriter(endpoint, api_key)
    bar = Progress(total, label, enabled=progress, quiet=quiet)
    try:
        for src in runs:
            try:
                result = writer.write(src)
            except (RunstreamError, OSError, ValueError) as exc:
                if not keep_going:
                    raise
                result = RunResult(src.source_id, src.project, src.run_id, "failed", error=str(exc))
            report.runs.append(result)
            bar.update(result)
    finally:
        bar.close()
        if own:
            writer.close()
    return report


def cli_result(source: str, call: Callable[[], ImportReport]) -> int:
    """Runs an import for `runstream import SOURCE`: prints the report (registry lines, then the
    summary). Exit status 0 when every run is in, 1 when some failed (run it again to resume them),
    2 when the import could not start (the message says why)."""
    try:
        report = call()
    except RunstreamError as exc:
        print(f"runstream import {source}: {exc}", file=sys.stderr)
        return 2
    for line in report.models:
        print(line)
    print(report.summary())
    return 1 if report.count("failed") else 0
