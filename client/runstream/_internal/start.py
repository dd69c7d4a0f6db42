"""`runstream.init` and `runstream.set_seed`: everything decided once, before a Run exists.
init resolves the settings (argument > RUNSTREAM_<NAME> variable > default), this process's rank
and the world size, the run id (shared by the ranks of one job), which rank owns config and
summary, and whether this is a resume; then it creates the Run and makes it current. set_seed
seeds the random generators and remembers the seed for the context of runs started later (a seed
beyond int64, which the context cannot hold, goes into their config as `seeds.<name>`, exact)."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runstream.config import Settings, resolve, validate
from runstream.run import Run

from . import distributed, lifecycle
from .values import check_name, check_text, check_timestamp, flatten, sanitize_name, tag_map

_seeds: dict[str, int] = {}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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
    start_time: float | datetime | None = None,
    **setting_overrides: Any,
) -> Run:
    """Starts (or joins) a run and makes it the current one for the module-level shortcuts.

    Ranks of a distributed job join one run: the id comes from `id`, RUNSTREAM_RUN_ID, the
    launcher (torchrun, SLURM, MPI) or `group`. Settings: see runstream.config.Settings; any of
    them can be passed as a keyword (e.g. flush_interval_s=0.5) or a RUNSTREAM_<NAME> variable.
    `start_time` (unix seconds or a datetime; default now) is when the run started, for
    importing or replaying a run that ran earlier.
    """
    check_name("project", project)
    for what, text in (("name", name), ("notes", notes), ("group", group), ("job_type", job_type)):
        if text is not None:
            check_text(f"runstream.init {what}", text)
    start_s = check_timestamp(start_time, "runstream.init start_time") if start_time is not None else None
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
    big_seeds = {f"seeds.{k}": v for k, v in _seeds.items() if not INT64_MIN <= v <= INT64_MAX}
    if big_seeds:  # the context's seeds are int64: beyond, the config records them exactly
        config = {**flatten(config or {}), **big_seeds}
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
        tags=tag_map(tags),
        notes=notes or "",
        config=config,
        resume=bool(resume),
        seeds={k: v for k, v in _seeds.items() if INT64_MIN <= v <= INT64_MAX},
        start_time=start_s,
    )
    lifecycle.started(run)
    return run


def set_seed(seed: int, name: str = "seed") -> int:
    """Seeds random (and numpy / torch when present) and records the seed on the run: in the
    context of runs started afterwards, in the config of the current run."""
    import random

    seed = int(seed)  # any int random.seed takes (negative, beyond 64 bits), recorded exactly
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
        torch.manual_seed(seed if INT64_MIN <= seed < 2**64 else seed % 2**64)  # torch's range
    _seeds[name] = seed
    run = lifecycle.current_run()
    if run is not None:
        run.config[f"seeds.{name}"] = seed
    return seed
