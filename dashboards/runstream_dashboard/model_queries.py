"""The model registry's loaders for the Models page, the model version page and the run page's
registry section: the registry calls of the one runstream.Api of queries.py (`queries.api()`),
shaped into DataFrames and dicts, cached per viewer like queries.py's loaders (login.per_viewer:
an answer made with one viewer's key is never shown to another; short TTLs: registry changes
are rare but a person promoting a model wants to see the move at once). A failed call raises
runstream.errors.ServerError, as in queries.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from runstream.lineage import LineageGraph
from runstream_dashboard import login
from runstream_dashboard.queries import api

MODEL_COLUMNS = ["name", "latest_version", "aliases", "description", "tags", "creator", "created"]
VERSION_COLUMNS = [
    "version", "aliases", "created", "creator", "run_id", "artifact", "sha256", "description", "tags",
]  # fmt: skip
EVENT_COLUMNS = ["time", "actor", "action", "target", "from", "to", "reason", "detail"]
MOVE_COLUMNS = ["time", "alias", "from", "to", "actor", "reason"]
INPUT_COLUMNS = ["kind", "ref", "name", "version", "alias", "source_run_id", "sha256", "actor", "time"]
MAX_EVENTS = 2_000


def _time(ms: int) -> pd.Timestamp | None:
    return pd.Timestamp(ms, unit="ms") if ms else None


def _tags(tags: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))


def _version_text(v: Any) -> str:
    """An alias move's end as shown: v3, or — for none (a new or deleted alias)."""
    return f"v{v}" if v else "—"


@login.per_viewer(ttl=3, show_spinner=False)
def models(project: str) -> pd.DataFrame:
    """The project's registered models, by name, aliases as "alias→vN"."""
    rows = [
        {
            "name": m["name"],
            "latest_version": m["latest_version"],
            "aliases": ", ".join(f"{a}→v{v}" for a, v in m["aliases"].items()),
            "description": m["description"],
            "tags": _tags(m["tags"]),
            "creator": m["creator"],
            "created": _time(m["created_ms"]),
        }
        for m in api().models(project)
    ]
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


@login.per_viewer(ttl=3, show_spinner=False)
def model(project: str, name: str) -> dict[str, Any]:
    """One model as runstream.registry_client.model_record (with its metadata history)."""
    from runstream.registry_client import model_record

    return model_record(api().get_model(project, name))


@login.per_viewer(ttl=3, show_spinner=False)
def versions(project: str, name: str) -> pd.DataFrame:
    """The model's versions, newest first."""
    rows = [
        {
            "version": v["version"],
            "aliases": ", ".join(v["aliases"]),
            "created": _time(v["created_ms"]),
            "creator": v["creator"],
            "run_id": v["run_id"],
            "artifact": f"{v['artifact_name']}:{v['artifact_version']}",
            "sha256": v["artifact_sha256"],
            "description": v["description"],
            "tags": _tags(v["tags"]),
        }
        for v in api().model_versions(project, name)
    ]
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


@login.per_viewer(ttl=3, show_spinner=False)
def version(project: str, name: str, number: int) -> dict[str, Any]:
    """One version as runstream.registry_client.version_record (files, datasets, metrics, history)."""
    return api().model_version(project, name, version=number)


@login.per_viewer(ttl=3, show_spinner=False)
def events(project: str, model_name: str = "", limit: int = MAX_EVENTS) -> pd.DataFrame:
    """The registry's audit log (of the project, or one model), newest first; from / to / reason
    taken out of each event's detail, the rest kept as JSON text."""
    rows = []
    for e in api().registry_events(project, model_name, limit=limit):
        detail = dict(e["detail"])
        frm, to = detail.pop("from", None), detail.pop("to", None)
        if e["action"].startswith("alias."):
            frm, to = _version_text(frm), _version_text(to)
        rows.append(
            {
                "time": _time(e["time_ms"]),
                "actor": e["actor"],
                "action": e["action"],
                "target": e["target"],
                "from": "" if frm is None else (frm if isinstance(frm, str) else json.dumps(frm)),
                "to": "" if to is None else (to if isinstance(to, str) else json.dumps(to)),
                "reason": detail.pop("reason", "") or "",
                "detail": json.dumps(detail, sort_keys=True) if detail else "",
            }
        )
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def alias_moves(project: str, model_name: str) -> pd.DataFrame:
    """Who moved the model's aliases, from which version to which, and why; newest first."""
    ev = events(project, model_name)
    moves = ev[ev["action"].str.startswith("alias.")].copy()
    moves["alias"] = moves["target"].str.partition("@")[2]
    return moves[MOVE_COLUMNS].reset_index(drop=True)


@login.per_viewer(ttl=5, show_spinner=False)
def lineage(
    project: str,
    model_name: str = "",
    number: int = 0,
    run_id: str = "",
    direction: str = "both",
    depth: int = 0,
) -> LineageGraph:
    """The lineage graph around a model version (model_name + number) or a run."""
    if run_id:
        return api().lineage(project, run_id=run_id, direction=direction, max_depth=depth)
    return api().lineage(project, f"{model_name}:{number}", direction=direction, max_depth=depth)


@dataclass(frozen=True)
class RunRegistry:
    """What the run page shows of the registry: the run's recorded inputs and the model versions
    registered from it (model, version, aliases)."""

    inputs: pd.DataFrame
    versions: pd.DataFrame


@login.per_viewer(ttl=3, show_spinner=False)
def run_registry(project: str, run_id: str) -> RunRegistry:
    inputs = pd.DataFrame(
        [{**i, "time": _time(i["time_ms"])} for i in api().run_inputs(project, run_id)],
        columns=[*INPUT_COLUMNS, "time_ms"],
    )[INPUT_COLUMNS]
    graph = api().lineage(project, run_id=run_id, direction="downstream", max_depth=2)
    made = [
        {"model": n.name, "version": int(n.version), "aliases": n.properties.get("aliases", "")}
        for n in graph.nodes
        if n.kind == "model_version" and not n.missing and n.properties.get("run_id") == run_id
    ]
    return RunRegistry(inputs, pd.DataFrame(made, columns=["model", "version", "aliases"]))


def clear() -> None:
    """Drops the registry's cached answers (after a change made from the dashboard)."""
    for loader in (models, model, versions, version, events, lineage, run_registry):
        loader.clear()
