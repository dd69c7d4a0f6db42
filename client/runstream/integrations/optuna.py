"""Optuna: a study callback that records each finished trial as a run of its own, the study being
the group, so trials can be filtered, sorted and compared like any runs.

    from runstream.integrations.optuna import RunstreamCallback
    study = optuna.create_study(study_name="lr-sweep", direction="minimize")
    study.optimize(objective, n_trials=50, callbacks=[RunstreamCallback(project="mnist")])
    # runstream.Api().runs("mnist", filter='group = "lr-sweep"', order_by="metrics.value")

Each run: name "trial-<number>", group = the study name (or `group`), job_type "optuna-trial";
config = the trial's params plus optuna.trial (its number), optuna.study, optuna.sampler and
optuna.direction(s); metrics = the objective value(s) under `metric_name` (default "value", or
the study's metric_names when it set them) at step 0, and the values the objective reported
with trial.report as "intermediate_value" at their steps; summary = the same values, the trial
state, its duration and its user attrs ("user_attrs.<key>"); tags: the state (trial_state:
COMPLETE, PRUNED or FAIL). The run's start and end are the trial's; a failed trial's run is
"failed", a complete or pruned one "finished". Optuna calls the callback after the trial ended,
so a run is written at once, in about one round trip to the server.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ._common import missing, plain_dict, side_run, with_tag

try:
    import optuna
    from optuna.trial import FrozenTrial, TrialState
except ImportError as exc:
    raise missing("optuna", "optuna", exc) from None


_RUN_STATES = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "finished", TrialState.FAIL: "failed"}


class RunstreamCallback:
    """For study.optimize(callbacks=[...]): one run per finished trial in `project`.
    `init_kwargs` go to runstream.init for every trial's run (endpoint, tags, settings...)."""

    def __init__(
        self,
        project: str,
        *,
        metric_name: str | Sequence[str] | None = None,
        group: str | None = None,
        **init_kwargs: Any,
    ):
        self.project = project
        self.metric_name = metric_name
        self.group = group
        self.init_kwargs = init_kwargs
        self.run_ids: dict[int, str] = {}  # trial number -> run id, for the trials seen so far
        self._lock = threading.Lock()  # study.optimize(n_jobs=...) calls back from several threads

    def _names(self, study: optuna.Study, count: int) -> list[str]:
        names = self.metric_name
        if names is None:
            names = study.metric_names  # set by study.set_metric_names, else None
        if names is None:
            return ["value"] if count == 1 else [f"value_{i}" for i in range(count)]
        names = [names] if isinstance(names, str) else list(names)
        if len(names) != count:
            raise ValueError(
                f"RunstreamCallback(metric_name={self.metric_name!r}): the study has {count} objective(s); "
                f"give {count} name(s)"
            )
        return names

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        directions = [d.name.lower() for d in study.directions]
        names = self._names(study, len(directions))
        config = plain_dict(trial.params)
        config.update({"optuna.trial": trial.number, "optuna.study": study.study_name})
        config["optuna.sampler"] = type(study.sampler).__name__
        if len(directions) == 1:
            config["optuna.direction"] = directions[0]
        else:
            config["optuna.directions"] = directions
        state = trial.state.name
        end = trial.datetime_complete
        summary: dict[str, Any] = {"trial_state": state, **plain_dict(trial.user_attrs, "user_attrs.")}
        if trial.duration is not None:
            summary["duration_s"] = trial.duration.total_seconds()
        objective = dict(zip(names, trial.values, strict=True)) if trial.values is not None else {}
        tags = with_tag(self.init_kwargs.get("tags"), "trial_state", state)
        with (
            self._lock,
            side_run(
                self.project,
                self.init_kwargs,
                name=f"trial-{trial.number}",
                group=self.group or study.study_name,
                job_type="optuna-trial",
                config=config,
                tags=tags,
                start_time=trial.datetime_start,
            ) as run,
        ):
            for step, value in sorted(trial.intermediate_values.items()):
                run.log({"intermediate_value": value}, step=step, timestamp=end)
            if objective:
                run.log(objective, step=0, timestamp=end)
                summary.update(objective)
            last = trial.last_step
            if last is not None:
                summary["intermediate_value"] = trial.intermediate_values[last]
                summary["last_step"] = last
            run.summary.update(summary)
            run.finish(_RUN_STATES.get(trial.state, "finished"), end_time=end)
        self.run_ids[trial.number] = run.id
