"""What the integrations share: finding the run to log into, making framework values storable as
config, logging a file the framework writes as an artifact, and starting short runs of their own
(one per search candidate or optuna trial) without taking the user's current run away."""

from __future__ import annotations

import contextlib
import math
import numbers
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from runstream._internal import lifecycle
from runstream._internal.start import init
from runstream._internal.values import tag_map
from runstream.errors import NotInitializedError, RefusedWarning
from runstream.run import Run

#: how long an integration waits for an artifact it wrote to a temporary folder to be acknowledged
ARTIFACT_FLUSH_S = 60.0
MAX_TEXT_CHARS = 1000  # config values that are objects (an estimator, a callable) become their repr


def missing(module: str, extra: str, exc: ImportError, hint: str = "") -> ImportError:
    """The error an integration raises when its framework does not import: which extra installs it."""
    return ImportError(
        f"runstream.integrations.{extra} needs {module}, which does not import here ({exc}): "
        f'pip install "runstream[{extra}]"{hint}'
    )


def resolve_run(run: Run | None, who: str) -> Run:
    """`run`, else the current run; `who` names the integration in the error."""
    if run is not None:
        return run
    current = lifecycle.current_run()
    if current is None:
        raise NotInitializedError(
            f"{who}: no run to log into: pass run=runstream.init(project=...) or call runstream.init first"
        )
    return current


def plain(value: Any) -> Any:
    """A config / summary value as Runstream stores it: numbers, bools, text and None as they are
    (numpy scalars unwrapped), lists and dicts of those kept, anything else as its repr (an
    estimator in a Pipeline's params, a callable scorer)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", None) == 0:
        return plain(item())
    if isinstance(value, (list, tuple)) and len(value) <= 100:
        return [plain(v) for v in value]
    if isinstance(value, Mapping) and len(value) <= 100:
        return {str(k): plain(v) for k, v in value.items()}
    return repr(value)[:MAX_TEXT_CHARS]


def plain_dict(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`plain` applied to every value, keys prefixed."""
    return {f"{prefix}{key}": plain(value) for key, value in data.items()}


def numeric(data: Mapping[str, Any]) -> dict[str, float]:
    """The entries of `data` that are numbers (metrics), as floats; NaN and inf kept."""
    out = {}
    for key, value in data.items():
        value = plain(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def with_tag(tags: Any, key: str, value: str = "") -> dict[str, str]:
    """Tags in any form runstream.init takes (one, a list, a dict) plus `key` = `value`."""
    return {**tag_map(tags), key: value}


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def log_written_file(
    run: Run, write: Callable[[Path], None], filename: str, name: str, type: str = "model"
) -> dict | None:
    """Calls write(path) for a file in a temporary folder, logs that file as the artifact `name`
    and waits until it is acknowledged (a large file is read by the worker after log_artifact
    returns), then removes the folder. Returns log_artifact's description; None (with a warning)
    when the artifact was not acknowledged in time, in which case the file is left in place."""
    folder = Path(tempfile.mkdtemp(prefix="runstream-artifact-"))
    path = folder / filename
    write(path)
    described = run.log_artifact(path, name=name, type=type)
    if not run.flush(ARTIFACT_FLUSH_S):
        warnings.warn(
            f"run {run.id!r}: artifact {name!r} not acknowledged within {ARTIFACT_FLUSH_S:.0f}s; its "
            f"file stays at {path} until it is sent",
            RefusedWarning,
            stacklevel=3,
        )
        return None
    shutil.rmtree(folder, ignore_errors=True)
    return described


def own_run_defaults() -> dict[str, Any]:
    """runstream.init arguments for a run an integration starts (a candidate, a trial): a fresh
    id, not a resume, rank 0 of 1 with the config, whatever launcher environment it runs in."""
    return {"id": uuid.uuid4().hex[:16], "resume": False, "rank": 0, "world_size": 1, "owns_config": True}


@contextlib.contextmanager
def side_run(project: str, init_kwargs: Mapping[str, Any], **run_fields: Any) -> Iterator[Run]:
    """A run of its own (one search candidate, one optuna trial) for the block, which may finish it
    with a state and end time of its choice; if it does not, it is finished on leaving the block
    ("failed" when the block raises). Then the run that was current before is current again. The
    run gets a fresh id and rank 0 of a world of 1 even inside a distributed launcher (whose run
    id and rank belong to the training run), unless init_kwargs say otherwise."""
    before = lifecycle.current_run()
    kwargs = own_run_defaults()
    kwargs.update(init_kwargs)
    kwargs.update(run_fields)
    run = init(project=project, **kwargs)
    try:
        yield run
    except BaseException:
        run.finish("failed")
        raise
    else:
        run.finish()  # a no-op when the block finished it
    finally:
        restore_current(before)


def restore_current(before: Run | None) -> None:
    """Makes `before` (the run that was current before an integration started one) current
    again, unless it finished meanwhile."""
    # the SDK's own package: Run has no public "finished" flag yet
    if before is not None and lifecycle.current_run() is not before and not before._finished:
        lifecycle.started(before)
