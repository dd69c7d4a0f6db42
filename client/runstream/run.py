"""The Run: what training code holds and calls (create one with `runstream.init`). Every call
here only checks its input on the caller's thread and appends to the run's in-memory deque; the
worker thread (see _internal/pipeline.py) batches, sends, retries and spools.

Times: each call records when it happened (time.time()) unless given `timestamp=` (unix seconds
or a datetime), for replaying or importing what ran earlier; init's `start_time=` and finish's
`end_time=` do the same for the run itself.

Helpers with one job each live in _internal/: start.py (init), run_dict.py (config/summary),
arrays.py (log_arrays packing), artifacts.py, lifecycle.py (current run, exit and fork hooks).
What remains is the Run class (about 430 of this module's ~520 lines, over the house's ~400 on
purpose): its methods share the run's buffer, step counters and finished flag, and the hot path
(log) stays inline in one class rather than spread over mixins.

The hand-off to the worker is bounded by bytes (settings.max_memory_bytes, accounted by
buffer.queued_bytes): checked only when the caller wakes the worker (every few thousand calls, or
fewer when entries are large), so run.log's per-call cost is unchanged; when it is full the caller
waits for the worker to drain it, at most HANDOFF_WAIT_S per wake (counted in run.stats as
handoff_waits / handoff_wait_s). Waiting was chosen over spooling on the caller's thread: the
worker already spills to disk past max_memory_bytes, so a short wait bounds memory without a
second writer of the spool or packing on the training thread."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runstream import states
from runstream._internal import context as context_mod
from runstream._internal import lifecycle, spool
from runstream._internal.arrays import pack_series
from runstream._internal.artifacts import artifact_entries, collect_artifact, dataset_ref
from runstream._internal.buffer import SYSTEM, Bulk, Control, MetricBuffer
from runstream._internal.media_events import is_media, media_entries, split_media
from runstream._internal.run_dict import RunDict
from runstream._internal.values import (
    MAX_FLOAT,
    MAX_STEP,
    check_metric_key,
    check_step,
    check_text,
    check_timestamp,
    coerce_metrics,
    flatten,
    tag_map,
    value_map,
)
from runstream.config import Settings
from runstream.errors import FlushTimeoutError, InvalidValueError, RunFinishedError, RunstreamError
from runstream.v1 import ingest_pb2

WAKE_ENTRIES = 8192  # log() calls buffered before the worker is woken early (it also wakes on a timer)
#: the longest a log call waits for the worker to drain a full hand-off (then it goes on, counted)
HANDOFF_WAIT_S = 1.0
SYSTEM_PREFIX = "system/"  # the automatic sampler's keys start with it; log_system adds it when missing

_time = time.time
Timestamp = float | datetime


#: a run_start / run_update (config, summary, tags, notes, context) above this is refused on the
#: caller's thread; the server's default max_config_bytes is the same, well under gRPC's message
#: limit, so such a request can never wedge the stream in a resend loop
MAX_RUN_EVENT_BYTES = 8 * 1024 * 1024


def _check_event_size(field: str, body: Any) -> None:
    size = body.ByteSize()
    if size > MAX_RUN_EVENT_BYTES:
        raise InvalidValueError(
            f"this {field} is {size:,} bytes (config, summary, tags, notes, context); the limit is "
            f"{MAX_RUN_EVENT_BYTES:,}: log large values as artifacts (run.log_artifact) instead"
        )


class Run:
    """One run as seen by one process (one rank). Create it with `runstream.init`."""

    def __init__(
        self,
        *,
        project: str,
        run_id: str,
        settings: Settings,
        rank: int,
        world_size: int,
        owns_config: bool,
        name: str,
        group: str,
        job_type: str,
        tags: dict[str, str],
        notes: str,
        config: Mapping | None,
        resume: bool,
        seeds: Mapping[str, int] | None = None,
        start_time: float | None = None,
    ):
        self.project = project
        self.id = run_id
        self.settings = settings
        self.rank = rank
        self.world_size = world_size
        self.owns_config = owns_config
        self.mode = settings.mode
        self.group = group
        self.job_type = job_type
        self._name = name
        self._tags = dict(tags)
        self._notes = notes
        self._finished = False
        self._at_exit = False  # set by lifecycle at interpreter exit: an unreached server is not waited for
        self._forked_child = False
        self._pid = os.getpid()
        self._lock = threading.Lock()  # finish() only; never on the log path
        self.client_id = uuid.uuid4().hex
        self.run_dir = settings.spool_path / run_id
        self._known_keys: set = set()
        self._next_step = 0
        self._system_steps = itertools.count()  # shared with the sampler thread
        self._wake_step = WAKE_ENTRIES
        self._handoff_limit = settings.max_memory_bytes  # bytes queued for the worker (buffer.py)
        self._handoff_step = WAKE_ENTRIES  # entries that fit a quarter of it, from the newest entry
        self._drained = threading.Event()  # set by the worker after each drain
        self._handoff_waits = 0
        self._handoff_wait_s = 0.0
        self._buffer = MetricBuffer(project, run_id, rank, settings.max_batch_points)
        if self.mode == "disabled":
            self._buffer.entries = deque(maxlen=0)
        self._entries = self._buffer.entries
        self._wake_at = 1 if self.mode != "disabled" else 1 << 62  # the first call sizes _handoff_step
        self.config = RunDict(self._send_update, "config", flatten(config) if config else None)
        self.summary = RunDict(self._send_update, "summary")
        self._pipeline = None
        self._sampler = None
        self._console = None
        if self.mode == "disabled":
            return
        start = ingest_pb2.RunStart(
            project=project,
            run_id=run_id,
            name=name,
            group=group,
            job_type=job_type,
            tags=self._tags,
            notes=notes,
            config=value_map(self.config.as_dict()) if owns_config else {},
            start_ms=int((_time() if start_time is None else start_time) * 1000),
            rank=rank,
            resume=resume,
        )
        context_mod.capture(
            full=settings.capture_context,
            with_packages=settings.capture_packages,
            max_diff_bytes=settings.max_git_diff_bytes,
            world_size=world_size,
            seeds=dict(seeds or {}),
            into=start.context,
        )
        _check_event_size("run_start", start)
        self._entries.append(Control("run_start", start))
        if self.mode == "offline":
            spool.write_run_meta(
                self.run_dir, {"project": project, "run_id": run_id, "name": name, "mode": "offline"}
            )
        self._pipeline = self._new_pipeline(offline=self.mode == "offline")
        if settings.system_metrics_interval_s > 0:
            from runstream._internal.system import SystemSampler

            self._sampler = SystemSampler(
                self._entries, settings.system_metrics_interval_s, self._system_steps
            )
        if settings.console == "capture":  # stdout/stderr of this rank, teed (_internal/console.py)
            from runstream._internal.console import ConsoleCapture

            self._console = ConsoleCapture.start(
                self._entries, project=project, run_id=run_id, rank=rank, settings=settings
            )

    def _new_pipeline(self, offline: bool):
        from runstream._internal.pipeline import Pipeline
        from runstream._internal.worker import Worker

        return Pipeline(
            worker=Worker.get(),
            buffer=self._buffer,
            settings=self.settings,
            run_dir=self.run_dir,
            client_id=self.client_id,
            offline=offline,
            send_heartbeats=self.owns_config,
            on_drained=self._reset_wake,
        )

    # ---- metrics: the hot path ------------------------------------------------------------

    def log(
        self, data: Mapping[str, Any], step: int | None = None, *, timestamp: Timestamp | None = None
    ) -> None:
        """Logs numbers for one step (auto-incremented when not given), and media next to them
        (runstream.Image, Audio, Histogram, Table, Text, or a list of them under one key; see
        runstream/media.py). `timestamp`: when the
        values were measured, as unix seconds or a datetime (naive = local time); default now.
        Costs well under a microsecond per value on this thread; raises InvalidValueError for
        bad keys, values, steps or timestamps."""
        if type(data) is not dict:
            if not isinstance(data, Mapping):
                raise InvalidValueError(
                    f"run.log takes a dict of metric name -> number, not {type(data).__name__}"
                )
            data = dict(data)
        known = self._known_keys
        coerced = media = None
        for key, value in data.items():
            if key not in known:
                check_metric_key(key, known)
            if type(value) is not float and (type(value) is not int or not -MAX_FLOAT <= value <= MAX_FLOAT):
                try:
                    coerced = coerce_metrics(data, known)  # converts, or names the bad key and value
                except InvalidValueError:  # media (runstream.Image, ...: runstream/media.py), or bad
                    if not any(map(is_media, data.values())):
                        raise
                    data, media = split_media(data)  # numpy scalars etc. never pay for this check
                    coerced = coerce_metrics(data, known)
                break
        # the default path costs one branch more than before timestamp= existed
        timestamp = _time() if timestamp is None else check_timestamp(timestamp, "run.log timestamp")
        if self._finished:
            raise RunFinishedError(f"run {self.id!r} is finished; start a new one with runstream.init")
        if step is None:
            step = self._next_step
            self._next_step = step + 1
        else:
            if type(step) is not int or not 0 <= step <= MAX_STEP:
                step = check_step(step)
            if step >= self._next_step:
                self._next_step = step + 1
        entries = self._entries
        if media is not None:
            entries.extend(
                media_entries(self.project, self.id, self.rank, step, int(timestamp * 1000), media)
            )
            if not coerced:
                if self._pipeline is not None:
                    self._wake()
                return
        entries.append((step, timestamp, coerced if coerced is not None else data.copy()))
        if len(entries) >= self._wake_at:
            self._wake()

    def log_system(self, data: Mapping[str, Any], *, timestamp: Timestamp | None = None) -> None:
        """Logs system metrics (CPU, memory, GPU, ...) of this process's machine, as the automatic
        sampler (settings.system_metrics_interval_s) does: METRIC_KIND_SYSTEM points of this rank
        (every rank records its own), numbered by the sample counter the sampler also uses. Keys
        are stored under "system/" (added when missing: {"cpu_percent": 12.0} becomes
        "system/cpu_percent", next to the sampler's). `timestamp`: unix seconds or a datetime;
        default now. For machines the sampler cannot read, or samples recorded elsewhere."""
        if not isinstance(data, Mapping):
            raise InvalidValueError(
                f"run.log_system takes a dict of metric name -> number, not {type(data).__name__}"
            )
        known = self._known_keys
        values = coerce_metrics(data, known)  # checks the keys as given, then the values
        samples = {k if k.startswith(SYSTEM_PREFIX) else SYSTEM_PREFIX + k: v for k, v in values.items()}
        for key in samples:
            if key not in known:
                check_metric_key(key, known)
        when = _time() if timestamp is None else check_timestamp(timestamp, "run.log_system timestamp")
        self._check_open()
        if not samples:
            return
        entries = self._entries
        entries.append((next(self._system_steps), when, samples, SYSTEM))
        if len(entries) >= self._wake_at:
            self._wake()

    def log_arrays(
        self,
        key_or_dict: str | Mapping[str, Any],
        steps: Any,
        values: Any = None,
        *,
        timestamp: Timestamp | None = None,
        times: Any = None,
    ) -> None:
        """Bulk path: whole series at once. `log_arrays("loss", steps, values)` or
        `log_arrays({"loss": v1, "acc": v2}, steps)`; numpy arrays, tensors or sequences.
        Times: `timestamp` (unix seconds or a datetime) for every point, or `times` with one
        per step (unix seconds, numpy datetime64 or datetimes); default now."""
        if timestamp is not None and times is not None:
            raise InvalidValueError(
                "run.log_arrays: give timestamp= (one time for all steps) or times= (one per step), not both"
            )
        series = pack_series(key_or_dict, steps, values, times, self._known_keys)
        if timestamp is not None:
            timestamp = check_timestamp(timestamp, "run.log_arrays timestamp")
        self._check_open()
        if series.n == 0:
            return
        time_ms = int((_time() if timestamp is None else timestamp) * 1000)
        for key, value_bytes in series.columns:
            self._entries.append(Bulk(key, series.steps, value_bytes, series.n, time_ms, series.times))
        if series.top_step >= self._next_step:
            self._next_step = series.top_step + 1
        if self._pipeline is not None or self._forked_child:
            self._wake()

    def _wake(self) -> None:
        """Wakes the worker; over the hand-off bound (max_memory_bytes of queued entries), waits
        for it to drain (at most HANDOFF_WAIT_S: the caller is slowed, never stopped). Runs every
        _wake_step / _handoff_step entries, so run.log's per-call cost does not change."""
        entries = self._entries
        queued = self._buffer.queued_bytes()
        if entries:
            self._handoff_step = max(
                16, min(WAKE_ENTRIES, len(entries) * self._handoff_limit // (4 * queued))
            )
        self._wake_at = len(entries) + min(self._wake_step, self._handoff_step)
        if self._pipeline is None:
            if not self._forked_child or self._finished:
                return
            self._start_child_pipeline()
        if queued > self._handoff_limit:
            self._wait_for_drain()
        else:
            self._pipeline.wake()

    def _wait_for_drain(self) -> None:
        """Backpressure: the caller logs faster than the worker packs and sends (or spools)."""
        t0 = time.monotonic()
        self._drained.clear()
        self._pipeline.wake()
        if not self._drained.wait(HANDOFF_WAIT_S) and not self._handoff_wait_s:
            print(
                f"runstream: run {self.id!r}: the worker did not drain {self._handoff_limit >> 20} MiB of "
                f"logged data within {HANDOFF_WAIT_S}s; logging goes on (see run.stats['handoff_wait_s'])",
                file=sys.stderr,
            )
        self._handoff_waits += 1
        self._handoff_wait_s += time.monotonic() - t0

    def _reset_wake(self, idle: bool = False) -> None:
        """The worker drained the hand-off. `idle`: it found nothing, so the next entry wakes it
        (a quiet run's next point is sent at once, not at the next flush_interval_s tick);
        otherwise the next wake is _wake_step / _handoff_step entries away."""
        self._wake_at = 1 if idle else min(self._wake_step, self._handoff_step)
        self._drained.set()

    # ---- run fields -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._finished:
            raise RunFinishedError(f"run {self.id!r} is finished; start a new one with runstream.init")

    def _send(self, field: str, body: Any) -> None:
        if self.mode == "disabled":
            return
        self._check_open()
        if field == "run_update":
            _check_event_size(field, body)
        self._entries.append(Control(field, body))

    def _send_update(self, owner_only: bool = True, **fields: Any) -> None:
        if owner_only and not self.owns_config:
            return  # rank != 0 keeps config/summary locally (settings.owns_config changes that)
        fields.setdefault("heartbeat_ms", int(time.time() * 1000))  # when it was made: edits made later win
        self._send("run_update", ingest_pb2.RunUpdate(project=self.project, run_id=self.id, **fields))

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = check_text("run name", str(value))
        self._send_update(name=self._name)

    @property
    def notes(self) -> str:
        return self._notes

    @notes.setter
    def notes(self, value: str) -> None:
        self._notes = check_text("run notes", str(value))
        self._send_update(notes=self._notes, has_notes=True)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    @tags.setter
    def tags(self, value: Any) -> None:
        new = tag_map(value)
        removed = [k for k in self._tags if k not in new]
        self._tags = new
        self._send_update(tags=new, remove_tags=removed)

    def use_dataset(self, name: str, path_or_hash: str | os.PathLike, uri: str | None = None) -> str:
        """Records a dataset this run uses; a path is hashed (sha256), anything else is taken as
        the version string. Returns the version."""
        ref = dataset_ref(name, path_or_hash, uri)
        self._send_update(datasets=[ref])
        return ref.version

    def log_artifact(self, path: str | os.PathLike, name: str | None = None, type: str | None = None) -> dict:
        """Records a file or directory (every file, with its sha256). Files up to 1 MiB travel
        inline; larger ones are uploaded by the worker (offline: copied into the spool)."""
        artifact = collect_artifact(path, name)
        if self.mode == "disabled":
            return {"name": artifact.name, "version_tag": artifact.version_tag, "files": []}
        entries = artifact_entries(self.project, self.id, artifact, type)
        self._check_open()
        self._entries.extend(entries)
        if self._pipeline is not None:
            self._wake()
        return artifact.describe()

    def register_model(
        self,
        artifact_name: str,
        model_name: str,
        aliases=(),
        description: str = "",
        timeout_s: float = 60.0,
        endpoint: str | None = None,
    ) -> dict:
        """Registers the newest version of the artifact `artifact_name` this run logged as the next
        version of `model_name` (registered on first use), pointing `aliases` at it. Waits until
        what was logged is acknowledged, then asks the registry (runstream.registry_client), which
        records this run, the artifact's files and digest, datasets, commit and metrics in the
        version. `endpoint`: the server serving the registry, when it is not the run's (a split
        deployment). Returns the version as a dict (see Api.model_version)."""
        from runstream.registry_client import RegistryClient, version_record

        if self.mode != "online":
            raise RunstreamError(
                f"register_model needs an online run (this one is {self.mode}): the registry is on the server"
            )
        deadline = time.monotonic() + timeout_s
        if not self.flush(timeout_s):
            raise FlushTimeoutError(f"run {self.id!r}: logged data not acknowledged within {timeout_s}s")
        with RegistryClient(
            endpoint or self.settings.endpoint, self.settings.api_key, timeout_s, tls=self.settings.tls_config
        ) as registry:
            version = registry.create_model_version(
                self.project, model_name, self.id, artifact_name, aliases=aliases, description=description,
                wait_visible_s=max(0.0, deadline - time.monotonic()),
            )  # fmt: skip
        return version_record(version)

    def use_artifact(
        self,
        ref: str,
        kind: str | None = None,
        timeout_s: float = 60.0,
        endpoint: str | None = None,
        wait_s: float = 0.0,
    ) -> dict:
        """Records that this run consumes `ref`: an artifact version of its project ("name" for the
        newest, "name:3") or a registered model version ("clf", "clf:3", "clf@production"); kind
        "artifact" or "model" settles a name that is both (by default a registered model of that
        name wins). The registry resolves the reference now ("clf@production" is stored as the
        version production points at) and stores the input before this returns, so lineage shows
        it even if the run crashes next. Fetch the files with runstream.Api().download_artifact.
        `endpoint`: the server serving the registry, when it is not the run's. `wait_s`: how long
        a reference the server does not know yet is asked for again (on the Kafka bus another
        run's artifact is stored a moment after that run's flush). Returns the input as a dict
        (kind, name, version, alias, source_run_id, sha256, ...)."""
        from runstream.registry_client import RegistryClient

        if self.mode == "disabled":
            return {}
        if self.mode != "online":
            raise RunstreamError(
                f"use_artifact needs an online run (this one is {self.mode}): the registry is on the server"
            )
        self._check_open()
        with RegistryClient(endpoint or self.settings.endpoint, self.settings.api_key, timeout_s) as registry:
            return registry.use_artifact(self.project, self.id, ref, kind=kind or "", wait_visible_s=wait_s)

    # ---- delivery -------------------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Waits until everything logged so far is acknowledged (offline: written to the spool)."""
        if self._pipeline is None:
            if self._forked_child and len(self._entries):
                self._start_child_pipeline()
            else:
                return True
        return self._pipeline.flush(timeout_s)

    @property
    def refused_count(self) -> int:
        """Requests the server refused so far (each was warned about and kept in the spool folder's
        .refused file), plus entries the SDK refused itself: points its worker could not pack and
        artifact files that changed after log_artifact (each warned about as RefusedWarning)."""
        return self._pipeline.ready().stats.refused if self._pipeline else 0

    @property
    def stats(self) -> dict[str, Any]:
        """Delivery counters: submitted, acked, refused, spilled, dropped, reconnects, last_error,
        pending, handoff_waits, handoff_wait_s; with console capture on, console_lines,
        console_dropped_lines, console_truncated_lines."""
        if self._pipeline is None:
            return {}
        stream = self._pipeline.ready()
        # handoff_*: times run.log waited for the worker to drain a full hand-off, and for how long
        return (
            stream.stats.as_dict(pending=len(stream.pending))
            | {"handoff_waits": self._handoff_waits, "handoff_wait_s": round(self._handoff_wait_s, 3)}
            | (self._console.stats() if self._console is not None else {})
        )

    def finish(
        self,
        state: str | int = "finished",
        timeout_s: float | None = None,
        *,
        end_time: Timestamp | None = None,
    ) -> bool:
        """Ends the run: sends what is left and waits for acks up to `timeout_s`
        (settings.finish_timeout_s). `state`: finished, failed or killed (runstream.states).
        `end_time`: when the run ended, unix seconds or a datetime; default now. Returns False
        when something had to be left in the spool for `runstream sync`. A forked child only
        flushes (the parent owns the run)."""
        with self._lock:
            if self._finished:
                return True
            if isinstance(state, str):
                if state.lower() not in states.FINISH_STATES:
                    choices = ", ".join(sorted(states.FINISH_STATES))
                    raise InvalidValueError(f"finish(state={state!r}): use one of {choices}")
                state = states.state_number(state)
            end_s = _time() if end_time is None else check_timestamp(end_time, "run.finish end_time")
            if self._sampler is not None:
                self._sampler.stop()
            if self._console is not None:  # its last lines go out before the finish
                self._console.stop()
            timeout_s = self.settings.finish_timeout_s if timeout_s is None else timeout_s
            deadline = time.monotonic() + timeout_s
            online = self.mode == "online" and not self._forked_child and self._pipeline is not None
            # the run start must be stored before children's files (other client ids) arrive; without
            # such files the finish goes out right behind the data, one round trip in all
            if (
                online
                and self._pipeline.has_child_files()
                and (not self._at_exit or self._pipeline.server_reached())
                and self._pipeline.flush(timeout_s)
            ):
                self._pipeline.import_children(max(1.0, deadline - time.monotonic()))
            if not self._forked_child and self.mode != "disabled":
                finish = ingest_pb2.RunFinish(
                    project=self.project,
                    run_id=self.id,
                    state=state,
                    end_ms=int(end_s * 1000),
                    rank=self.rank,
                )
                self._entries.append(Control("run_finish", finish))
            self._finished = True
            lifecycle.finished(self)
            if self._forked_child and self._pipeline is None and len(self._entries):
                self._start_child_pipeline()
            if self._pipeline is None:
                return True
            return self._pipeline.close(max(0.0, deadline - time.monotonic()), at_exit=self._at_exit)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish(states.FINISHED)
        else:
            self.finish(states.KILLED if issubclass(exc_type, KeyboardInterrupt) else states.FAILED)

    def __repr__(self) -> str:
        return f"<Run {self.project}/{self.id} rank={self.rank} mode={self.mode}>"

    # ---- fork -----------------------------------------------------------------------------

    def _after_fork_child(self) -> None:
        """A forked child (e.g. a DataLoader worker) keeps none of the parent's pending data and
        never talks to the server: what it logs goes to its own spool file, which the parent
        uploads at finish (or `runstream sync`)."""
        self._buffer.entries = self._entries = deque()
        self._pipeline = None
        self._sampler = None
        self._console = None  # the parent's capture: its tees only write through here
        self._forked_child = True
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._drained = threading.Event()
        self.client_id = uuid.uuid4().hex
        self._wake_at = 0  # the first log() starts the child's pipeline

    def _start_child_pipeline(self) -> None:
        self._pipeline = self._new_pipeline(offline=True)
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:  # multiprocessing children leave through os._exit: flush before
            mp_util.Finalize(self, _flush_child, args=(weakref.ref(self),), exitpriority=100)


def _flush_child(ref: weakref.ref) -> None:
    run = ref()
    if run is not None and run._pipeline is not None:
        run._pipeline.flush(10.0)
