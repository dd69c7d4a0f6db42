"""`runstream.init` and the Run: what training code calls. Every call here only checks its input
and appends to the run's in-memory deque; the worker thread (see _internal/pipeline.py) batches,
sends, retries and spools."""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from runstream._internal import context as context_mod
from runstream._internal import distributed, spool
from runstream._internal.buffer import Bulk, Control, MetricBuffer
from runstream._internal.files import collect, content_hash
from runstream._internal.values import (
    check_key,
    check_metric_key,
    check_name,
    check_step,
    coerce_metrics,
    flatten,
    sanitize_name,
    value_map,
)
from runstream.config import Settings, resolve, validate
from runstream.errors import InvalidValueError, RunFinishedError
from runstream.v1 import ingest_pb2, types_pb2

MAX_INLINE_BYTES = 1024 * 1024
WAKE_ENTRIES = 8192  # log() calls buffered before the worker is woken early (it also wakes on a timer)
_STATES = {
    "finished": types_pb2.RUN_STATE_FINISHED,
    "failed": types_pb2.RUN_STATE_FAILED,
    "killed": types_pb2.RUN_STATE_KILLED,
}

_time = time.time
_active: weakref.WeakSet[Run] = weakref.WeakSet()
_current: Run | None = None
_seeds: dict[str, int] = {}
_exit_state = {"state": "finished"}
_hooks_installed = False


class _RunDict(MutableMapping):
    """run.config / run.summary: a dict whose changes are sent as RunUpdates (by the owning rank)."""

    def __init__(self, run: Run, scope: str, initial: Mapping | None = None):
        self._run = run
        self._scope = scope
        self._data: dict[str, Any] = dict(initial or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        del self._data[key]  # local only: the server keeps what it was sent

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"{self._scope} has no key {key!r}") from None

    def __repr__(self) -> str:
        return f"{self._scope}({self._data!r})"

    def update(self, other: Mapping | None = None, **kwargs: Any) -> None:  # type: ignore[override]
        changes = {**(dict(other) if other else {}), **kwargs}
        if not changes:
            return
        values = value_map(changes)  # checks keys on the caller's thread
        self._data.update(changes)
        self._run._send_update(**{self._scope: values})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._data)


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
        self._forked_child = False
        self._pid = os.getpid()
        self._lock = threading.Lock()  # finish() only; never on the log path
        self.client_id = uuid.uuid4().hex
        self.run_dir = settings.spool_path / run_id
        self._known_keys: set = set()
        self._next_step = 0
        self._wake_step = WAKE_ENTRIES
        self._buffer = MetricBuffer(project, run_id, rank, settings.max_batch_points)
        if self.mode == "disabled":
            self._buffer.entries = deque(maxlen=0)
        self._entries = self._buffer.entries
        self._wake_at = self._wake_step if self.mode != "disabled" else 1 << 62
        self.config = _RunDict(self, "config", flatten(config) if config else None)
        self.summary = _RunDict(self, "summary")
        self._pipeline = None
        self._sampler = None
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
            context=context_mod.capture(
                full=settings.capture_context,
                with_packages=settings.capture_packages,
                max_diff_bytes=settings.max_git_diff_bytes,
                world_size=world_size,
                seeds=_seeds,
            ),
            start_ms=int(_time() * 1000),
            rank=rank,
            resume=resume,
        )
        self._entries.append(Control("run_start", start))
        if self.mode == "offline":
            spool.write_run_meta(
                self.run_dir, {"project": project, "run_id": run_id, "name": name, "mode": "offline"}
            )
        self._pipeline = self._new_pipeline(offline=self.mode == "offline")
        if settings.system_metrics_interval_s > 0:
            from runstream._internal.system import SystemSampler

            self._sampler = SystemSampler(self._entries, settings.system_metrics_interval_s)

    def _new_pipeline(self, offline: bool):
        from runstream._internal.pipeline import Pipeline
        from runstream._internal.worker import Worker

        pipeline = Pipeline(
            worker=Worker.get(),
            buffer=self._buffer,
            settings=self.settings,
            run_dir=self.run_dir,
            client_id=self.client_id,
            offline=offline,
            send_heartbeats=self.owns_config,
            on_drained=self._reset_wake,
        )
        return pipeline

    # ---- metrics: the hot path ------------------------------------------------------------

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        """Logs numbers for one step (auto-incremented when not given). Costs well under a
        microsecond per value on this thread; raises InvalidValueError for bad keys or values."""
        if type(data) is not dict:
            if not isinstance(data, Mapping):
                raise InvalidValueError(
                    f"run.log takes a dict of metric name -> number, not {type(data).__name__}"
                )
            data = dict(data)
        known = self._known_keys
        coerced = None
        for key, value in data.items():
            if key not in known:
                check_metric_key(key, known)
            t = type(value)
            if t is not float and t is not int:
                coerced = coerce_metrics(data, known)
                break
        if self._finished:
            raise RunFinishedError(f"run {self.id!r} is finished; start a new one with runstream.init")
        if step is None:
            step = self._next_step
            self._next_step = step + 1
        else:
            if type(step) is not int or step < 0:
                step = check_step(step)
            if step >= self._next_step:
                self._next_step = step + 1
        entries = self._entries
        entries.append((step, _time(), coerced if coerced is not None else data.copy()))
        if len(entries) >= self._wake_at:
            self._wake()

    def log_arrays(self, key_or_dict: str | Mapping[str, Any], steps: Any, values: Any = None) -> None:
        """Bulk path: whole series at once. `log_arrays("loss", steps, values)` or
        `log_arrays({"loss": v1, "acc": v2}, steps)`; numpy arrays, tensors or sequences."""
        if isinstance(key_or_dict, str):
            if values is None:
                raise InvalidValueError("run.log_arrays(key, steps, values): values are missing")
            series = {key_or_dict: values}
        elif isinstance(key_or_dict, Mapping):
            if values is not None:
                raise InvalidValueError(
                    "run.log_arrays(dict, steps): give values inside the dict, not as a third argument"
                )
            series = dict(key_or_dict)
        else:
            raise InvalidValueError(
                f"run.log_arrays takes a key or a dict of key -> values, not {type(key_or_dict).__name__}"
            )
        for key in series:
            if key not in self._known_keys:
                check_metric_key(key, self._known_keys)
        step_bytes, n, top = _pack_steps(steps)
        packed = []
        for key, vals in series.items():
            value_bytes, m = _pack_values(key, vals)
            if m != n:
                raise InvalidValueError(
                    f"run.log_arrays: {key!r} has {m} values for {n} steps; give one value per step"
                )
            packed.append((key, value_bytes))
        if self._finished:
            raise RunFinishedError(f"run {self.id!r} is finished; start a new one with runstream.init")
        if n == 0:
            return
        now_ms = int(_time() * 1000)
        for key, value_bytes in packed:
            self._entries.append(Bulk(key, step_bytes, value_bytes, n, now_ms))
        if top >= self._next_step:
            self._next_step = top + 1
        if self._pipeline is not None or self._forked_child:
            self._wake()

    def _wake(self) -> None:
        self._wake_at = len(self._entries) + self._wake_step
        if self._pipeline is None:
            if not self._forked_child or self._finished:
                return
            self._start_child_pipeline()
        self._pipeline.wake()

    def _reset_wake(self) -> None:
        self._wake_at = self._wake_step

    # ---- run fields -----------------------------------------------------------------------

    def _send(self, field: str, body: Any) -> None:
        if self.mode == "disabled":
            return
        if self._finished:
            raise RunFinishedError(f"run {self.id!r} is finished; start a new one with runstream.init")
        self._entries.append(Control(field, body))

    def _send_update(self, owner_only: bool = True, **fields: Any) -> None:
        if owner_only and not self.owns_config:
            return  # rank != 0 keeps config/summary locally (settings.owns_config changes that)
        self._send("run_update", ingest_pb2.RunUpdate(project=self.project, run_id=self.id, **fields))

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)
        self._send_update(name=self._name)

    @property
    def notes(self) -> str:
        return self._notes

    @notes.setter
    def notes(self, value: str) -> None:
        self._notes = str(value)
        self._send_update(notes=self._notes, has_notes=True)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    @tags.setter
    def tags(self, value: Any) -> None:
        new = _tags(value)
        removed = [k for k in self._tags if k not in new]
        self._tags = new
        self._send_update(tags=new, remove_tags=removed)

    def use_dataset(self, name: str, path_or_hash: str | os.PathLike, uri: str | None = None) -> str:
        """Records a dataset this run uses; a path is hashed (sha256), anything else is taken as
        the version string. Returns the version."""
        check_key("dataset", name)
        p = Path(path_or_hash).expanduser() if isinstance(path_or_hash, (str, os.PathLike)) else None
        if p is not None and p.exists():
            version = content_hash(p)
            uri = uri or p.resolve().as_uri()
        else:
            version = str(path_or_hash)
        ref = types_pb2.DatasetRef(name=name, version=version, uri=uri or "")
        self._send_update(datasets=[ref])
        return version

    def log_artifact(self, path: str | os.PathLike, name: str | None = None, type: str | None = None) -> dict:
        """Records a file or directory (every file, with its sha256). Files up to 1 MiB travel
        inline; larger ones are uploaded by the worker (offline: copied into the spool)."""
        files = collect(path)
        name = name or sanitize_name(Path(path).expanduser().resolve().name)
        check_key("artifact", name)
        version_tag = uuid.uuid4().hex
        if self.mode == "disabled":
            return {"name": name, "version_tag": version_tag, "files": []}
        from runstream._internal.pipeline import Upload

        for f in files:
            event = ingest_pb2.ArtifactEvent(
                project=self.project,
                run_id=self.id,
                name=name,
                type=type or "",
                path=f.rel,
                sha256=f.sha256,
                size=f.size,
                version_tag=version_tag,
            )
            if f.size <= MAX_INLINE_BYTES:
                event.inline_data = f.abs.read_bytes()
                self._send("artifact", event)
            else:
                self._send("upload", Upload(event, f.abs))
        if self._pipeline is not None:
            self._wake()
        return {
            "name": name,
            "version_tag": version_tag,
            "files": [{"path": f.rel, "sha256": f.sha256, "size": f.size} for f in files],
        }

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
        """Requests the server refused so far (each was warned about and kept in the spool folder)."""
        return self._pipeline.stream.stats.refused if self._pipeline else 0

    @property
    def stats(self) -> dict[str, Any]:
        if self._pipeline is None:
            return {}
        s = self._pipeline.stream.stats
        return {
            "submitted": s.submitted,
            "acked": s.acked,
            "refused": s.refused,
            "spilled": s.spilled,
            "reconnects": s.reconnects,
            "last_error": s.last_error,
            "pending": len(self._pipeline.stream.pending),
        }

    def finish(self, state: str | int = "finished", timeout_s: float | None = None) -> bool:
        """Ends the run: sends what is left and waits for acks up to `timeout_s`
        (settings.finish_timeout_s). Returns False when something had to be left in the spool
        for `runstream sync`. A forked child only flushes (the parent owns the run)."""
        global _current
        with self._lock:
            if self._finished:
                return True
            if isinstance(state, str):
                if state not in _STATES:
                    raise InvalidValueError(f"finish(state={state!r}): use one of {', '.join(_STATES)}")
                state = _STATES[state]
            if self._sampler is not None:
                self._sampler.stop()
            timeout_s = self.settings.finish_timeout_s if timeout_s is None else timeout_s
            deadline = time.monotonic() + timeout_s
            online = self.mode == "online" and not self._forked_child and self._pipeline is not None
            # the run start must be stored before children's files (other client ids) arrive; without
            # such files the finish goes out right behind the data, one round trip in all
            if online and self._pipeline.has_child_files() and self._pipeline.flush(timeout_s):
                self._pipeline.import_children(max(1.0, deadline - time.monotonic()))
            if not self._forked_child and self.mode != "disabled":
                self._entries.append(
                    Control(
                        "run_finish",
                        ingest_pb2.RunFinish(
                            project=self.project,
                            run_id=self.id,
                            state=state,
                            end_ms=int(_time() * 1000),
                            rank=self.rank,
                        ),
                    )
                )
            self._finished = True
            _active.discard(self)
            if _current is self:
                _current = None
            if self._forked_child and self._pipeline is None and len(self._entries):
                self._start_child_pipeline()
            if self._pipeline is None:
                return True
            return self._pipeline.close(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("finished")
        else:
            self.finish("killed" if issubclass(exc_type, KeyboardInterrupt) else "failed")

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
        self._forked_child = True
        self._pid = os.getpid()
        self._lock = threading.Lock()
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


def _to_host(values: Any) -> Any:
    """Tensors (CUDA included) to host memory; without numpy, anything with .tolist() to a list."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    if "numpy" not in sys.modules and hasattr(values, "tolist"):
        values = values.tolist()
    return values


def _pack_steps(steps: Any) -> tuple[bytes, int, int]:
    steps = _to_host(steps)
    np = sys.modules.get("numpy")
    if np is not None and not isinstance(steps, (list, tuple, range)):
        arr = np.asarray(steps)
        if arr.ndim != 1:
            raise InvalidValueError(f"run.log_arrays: steps must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise InvalidValueError(f"run.log_arrays: steps must be integers, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise InvalidValueError("run.log_arrays: steps must be >= 0")
        return arr.astype("<i8").tobytes(), int(arr.size), int(arr.max()) if arr.size else -1
    from array import array

    try:
        arr = array("q", steps)
    except (TypeError, OverflowError):
        raise InvalidValueError("run.log_arrays: steps must be a sequence of integers >= 0") from None
    if arr and min(arr) < 0:
        raise InvalidValueError("run.log_arrays: steps must be >= 0")
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes(), len(arr), max(arr) if arr else -1


def _pack_values(key: str, values: Any) -> tuple[bytes, int]:
    values = _to_host(values)
    np = sys.modules.get("numpy")
    if np is not None and not isinstance(values, (list, tuple)):
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise InvalidValueError(f"run.log_arrays: {key!r} values must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind not in "fiub":
            raise InvalidValueError(f"run.log_arrays: {key!r} values must be numbers, got dtype {arr.dtype}")
        return arr.astype("<f8").tobytes(), int(arr.size)
    from array import array

    try:
        arr = array("d", values)
    except TypeError:
        raise InvalidValueError(
            f"run.log_arrays: {key!r} values must be numbers (int, float, bool)"
        ) from None
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes(), len(arr)


def _tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Mapping):
        out = {check_key("tag", k): "" if v is None else str(v) for k, v in value.items()}
    else:
        out = {check_key("tag", k): "" for k in value}
    return out


# ---- init ---------------------------------------------------------------------------------


def init(
    project: str,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    tags: Any = None,
    notes: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    id: str | None = None,
    resume: bool | None = None,
    mode: str | None = None,
    endpoint: str | None = None,
    api_key: str | None = None,
    settings: Settings | Mapping[str, Any] | None = None,
    **setting_overrides: Any,
) -> Run:
    """Starts (or joins) a run and makes it the current one for the module-level shortcuts.

    Ranks of a distributed job join one run: the id comes from `id`, RUNSTREAM_RUN_ID, the
    launcher (torchrun, SLURM, MPI) or `group`. Settings: see runstream.config.Settings; any of
    them can be passed as a keyword (e.g. flush_interval_s=0.5) or a RUNSTREAM_<NAME> variable.
    """
    global _current
    check_name("project", project)
    overrides = dict(setting_overrides)
    overrides.update(mode=mode, endpoint=endpoint, api_key=api_key)
    if isinstance(settings, Settings):
        resolved = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        validate(resolved)
    else:
        resolved = resolve(**{**(dict(settings) if settings else {}), **overrides})
    rank = resolved.rank if resolved.rank is not None else distributed.rank()
    world = resolved.world_size if resolved.world_size is not None else distributed.world_size()
    if id is not None:
        run_id = check_name("run id", id)
    else:
        run_id = distributed.launcher_run_id()
        if run_id is None and world > 1 and group:
            run_id = sanitize_name(f"{group}")
        run_id = run_id or uuid.uuid4().hex[:16]
    owns = resolved.owns_config if resolved.owns_config is not None else rank == 0
    if resume is None:
        resume = id is not None or rank != 0
    run = Run(
        project=project,
        run_id=run_id,
        settings=resolved,
        rank=rank,
        world_size=world,
        owns_config=owns,
        name=name or "",
        group=group or "",
        job_type=job_type or "",
        tags=_tags(tags),
        notes=notes or "",
        config=config,
        resume=bool(resume),
    )
    _install_hooks()
    _active.add(run)
    _current = run
    return run


def current_run() -> Run | None:
    return _current


def set_seed(seed: int, name: str = "seed") -> int:
    """Seeds random (and numpy / torch when present) and records the seed on the run: in the
    context of runs started afterwards, in the config of the current run."""
    import random

    seed = int(seed)
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is None:
        try:
            import numpy as np  # type: ignore[no-redef]
        except ImportError:
            np = None
    if np is not None:
        np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")  # importing torch just to seed it would cost seconds
    if torch is not None:
        torch.manual_seed(seed)
    _seeds[name] = seed
    if _current is not None:
        _current.config[f"seeds.{name}"] = seed
    return seed


# ---- process hooks ------------------------------------------------------------------------


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        _exit_state["state"] = "killed" if issubclass(exc_type, KeyboardInterrupt) else "failed"
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def _at_exit() -> None:
    for run in list(_active):
        try:
            run.finish(_exit_state["state"])
        except Exception as exc:  # never raise at interpreter exit
            print(f"runstream: could not finish run {run.id}: {exc}", file=sys.stderr)


def _after_fork_in_child() -> None:
    from runstream._internal.worker import Worker

    Worker.forget_after_fork()
    for run in list(_active):
        run._after_fork_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
