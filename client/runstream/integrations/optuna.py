"""Optuna: a study callback that records each finished trial as a run of its own, the study being
the group, so trials can be filtered, sorted and compared like any runs.

    from runstream.integrations.optuna import RunstreamCallback
    callback = RunstreamCallback(project="mnist")
    study = optuna.create_study(study_name="lr-sweep", direction="minimize")
    study.optimize(objective, n_trials=50, callbacks=[callback])
    # runstream.Api().runs("mnist", filter='group = "lr-sweep"', order_by="metrics.value")

To log from inside the objective while the trial runs (per-epoch curves, artifacts), decorate
it: the trial's run then starts with the trial and is the current run during it, so
runstream.log(...) lands in it; the callback completes that run rather than writing another.

    @callback.track
    def objective(trial):
        ...
        runstream.log({"val_loss": loss}, step=epoch)   # with n_jobs > 1: callback.run_of(trial).log

Each run: name "trial-<number>", group = the study name (or `group`), job_type "optuna-trial";
config = the trial's params plus optuna.trial (its number), optuna.study, optuna.sampler and
optuna.direction(s); metrics = the objective value(s) under `metric_name` (default "value", or
the study's metric_names when it set them) at step 0, and the values the objective reported
with trial.report as "intermediate_value" at their steps; summary = the same values, the trial
state, its duration and its user attrs ("user_attrs.<key>"); tags: the state (trial_state:
COMPLETE, PRUNED or FAIL). The run's start and end are the trial's; a failed trial's run is
"failed", a complete or pruned one "finished". Without `track`, Optuna calls the callback after
the trial ended, so a run is written at once, in about one round trip to the server.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from runstream._internal import lifecycle
from runstream._internal.start import init
from runstream.run import Run

from ._common import missing, own_run_defaults, plain_dict, restore_current, side_run, with_tag

try:
    import optuna
    from optuna.trial import FrozenTrial, TrialState
except ImportError as exc:
    raise missing("optuna", "optuna", exc) from None


_RUN_STATES = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "finished", TrialState.FAIL: "failed"}
RUN_ID_ATTR = "runstream_run_id"  # the trial user attr `track` sets to its run's id


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
        # track: (study, trial number) -> (its run, the run current before); and those already failed
        self._live: dict[tuple[str, int], tuple[Run, Run | None]] = {}
        self._failed: set[tuple[str, int]] = set()
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

    def _fields(self, study: optuna.Study, number: int, state: str) -> dict[str, Any]:
        return {
            "name": f"trial-{number}",
            "group": self.group or study.study_name,
            "job_type": "optuna-trial",
            "tags": with_tag(self.init_kwargs.get("tags"), "trial_state", state),
        }

    def track(self, objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
        """Decorates an objective so that each trial's run starts with the trial and is the
        current run while the objective runs (see the module doc). A trial whose objective raises
        (anything but optuna.TrialPruned) has its run finished as failed at once, with the error
        in its summary, whether or not study.optimize(catch=...) then goes on."""

        @functools.wraps(objective)
        def tracked(trial: optuna.Trial) -> Any:
            study = trial.study
            key = (study.study_name, trial.number)
            kwargs = own_run_defaults()
            kwargs.update(self.init_kwargs)
            kwargs.update(self._fields(study, trial.number, TrialState.RUNNING.name))
            kwargs["config"] = {**(kwargs.get("config") or {}), "optuna.trial": trial.number}
            kwargs["config"]["optuna.study"] = study.study_name
            with self._lock:
                before = lifecycle.current_run()
                run = init(project=self.project, **kwargs)
                self._live[key] = (run, before)
                self.run_ids[trial.number] = run.id
            trial.set_user_attr(RUN_ID_ATTR, run.id)
            try:
                return objective(trial)
            except optuna.TrialPruned:
                raise  # the callback completes the run with the pruned trial's values
            except BaseException as exc:
                with self._lock:
                    self._live.pop(key, None)
                    self._failed.add(key)
                run.config.update(plain_dict(trial.params))
                run.tags = with_tag(self.init_kwargs.get("tags"), "trial_state", TrialState.FAIL.name)
                run.summary.update(
                    {"trial_state": TrialState.FAIL.name, "error": f"{type(exc).__name__}: {exc}"[:1000]}
                )
                run.finish("failed")
                restore_current(before)
                raise

        return tracked

    def run_of(self, trial: optuna.Trial) -> Run:
        """The run `track` started for this trial (for objectives run with n_jobs > 1, where the
        current run is whichever trial started last)."""
        with self._lock:
            live = self._live.get((trial.study.study_name, trial.number))
        if live is None:
            raise KeyError(
                f"trial {trial.number} has no live run: decorate the objective with @callback.track"
            )
        return live[0]

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
        summary: dict[str, Any] = {"trial_state": state, **plain_dict(trial.user_attrs, "user_attrs.")}
        if trial.duration is not None:
            summary["duration_s"] = trial.duration.total_seconds()
        objective = dict(zip(names, trial.values, strict=True)) if trial.values is not None else {}
        fields = self._fields(study, trial.number, state)
        key = (study.study_name, trial.number)
        with self._lock:
            live = self._live.pop(key, None)
            if key in self._failed:
                self._failed.discard(key)
                return  # a tracked trial whose objective raised: its run is finished already
        if live is not None:
            run, before = live
            run.config.update(config)
            run.tags = fields["tags"]
            self._complete(run, trial, objective, summary)
            restore_current(before)
        else:
            config = {**(self.init_kwargs.get("config") or {}), **config}
            with self._lock, side_run(self.project, self.init_kwargs, config=config, start_time=trial.datetime_start,
                                      **fields) as run:  # fmt: skip
                self._complete(run, trial, objective, summary)
            self.run_ids[trial.number] = run.id

    @staticmethod
    def _complete(run: Run, trial: FrozenTrial, objective: dict[str, float], summary: dict[str, Any]) -> None:
        end = trial.datetime_complete
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
