"""The runs page's view as URL query parameters, so a copied link reopens the same view, and as
the JSON object a saved view stores (SavedViewService keeps it as given).

Parameters (only those that differ from the defaults appear in a URL):

    filter=<text>  sort=<field>  desc=0|1  rows=<n>
    params=<key>&params=<key>...   metrics=<key>...   the table's columns ("" alone: none)
    curves=<key>...                the metrics drawn as learning curves
    runs=<run id>...               the runs drawn
    x=step|time|relative  smooth=<0..0.99>  log=0|1
    group=<by>                     "" (one line per run), "group", "params.<key>" or "tags.<key>"

Lists are repeated parameters, so keys with commas survive. Values that do not parse fall back
to the default (a hand-edited link still opens)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

X_AXES = ("step", "time", "relative")
PAGE_SIZES = (50, 100, 250, 1000)
LIST_FIELDS = ("params", "metrics", "curves", "runs")
_EMPTY = ""  # the one value of a list parameter that says "an empty list", not "the default"


@dataclass(frozen=True)
class RunsView:
    filter: str = ""
    sort: str = "start"
    desc: bool = True
    rows: int = 100
    params: tuple[str, ...] | None = None  # None: the page's default columns
    metrics: tuple[str, ...] | None = None
    curves: tuple[str, ...] | None = None
    runs: tuple[str, ...] = ()
    x: str = "step"
    smooth: float = 0.6
    log: bool = False
    group: str = ""


DEFAULT = RunsView()
_URL_NAMES = tuple(f.name for f in fields(RunsView))


def _flag(text: str, default: bool) -> bool:
    return {"1": True, "true": True, "0": False, "false": False}.get(text.lower(), default)


def _checked(view: RunsView) -> RunsView:
    """Out-of-range values replaced by the defaults."""
    changes: dict[str, Any] = {}
    if view.rows not in PAGE_SIZES:
        changes["rows"] = DEFAULT.rows
    if view.x not in X_AXES:
        changes["x"] = DEFAULT.x
    if not 0.0 <= view.smooth <= 0.99:
        changes["smooth"] = DEFAULT.smooth
    if not view.sort:
        changes["sort"] = DEFAULT.sort
    return RunsView(**{**asdict(view), **changes}) if changes else view


def from_query(get_all: Callable[[str], list[str]]) -> RunsView:
    """The view in a URL; `get_all(name)` returns every value of a parameter (st.query_params.get_all)."""
    values: dict[str, Any] = {}
    for name in _URL_NAMES:
        got = get_all(name)
        if not got:
            continue
        if name in LIST_FIELDS:
            values[name] = tuple(v for v in got if v != _EMPTY)
            continue
        last = got[-1]
        default = getattr(DEFAULT, name)
        if isinstance(default, bool):
            values[name] = _flag(last, default)
        elif isinstance(default, int):
            values[name] = int(last) if last.isdigit() else default
        elif isinstance(default, float):
            try:
                values[name] = round(float(last), 2)
            except ValueError:
                values[name] = default
        else:
            values[name] = last
    return _checked(RunsView(**values))


def to_query(view: RunsView) -> dict[str, str | list[str]]:
    """The parameters of `view` that differ from the defaults (for st.query_params)."""
    out: dict[str, str | list[str]] = {}
    for name in _URL_NAMES:
        value, default = getattr(view, name), getattr(DEFAULT, name)
        if value == default:
            continue
        if name in LIST_FIELDS:
            out[name] = list(value) or [_EMPTY]
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        else:
            out[name] = str(value)
    return out


def to_json(view: RunsView) -> dict[str, Any]:
    """The view as a saved view's state: every field that differs from the defaults."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in asdict(view).items() if v != getattr(DEFAULT, k)
    }


def from_json(state: Mapping[str, Any]) -> RunsView:
    """A saved view's state back; unknown keys (from a newer dashboard) are ignored."""

    def values(name: str) -> list[str]:
        if name not in state:
            return []
        value = state[name]
        if name in LIST_FIELDS:
            return [str(v) for v in value] or [_EMPTY]
        if isinstance(value, bool):
            return ["1" if value else "0"]
        return [str(value)]

    return from_query(values)
