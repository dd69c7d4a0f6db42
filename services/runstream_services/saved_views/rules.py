"""What a saved view may be: the checks SaveView applies before anything is stored.

A view's state is the JSON object the dashboard keeps in the runs page's URL
(runstream_dashboard.url_state: filter, sort, columns, curve metrics, selected runs, grouping);
the server checks only that it is a JSON object of bounded size, so the dashboard can add keys
without a server change."""

from __future__ import annotations

import json
import unicodedata

from runstream_services.errors import InvalidArgument

MAX_NAME_CHARS = 200
MAX_STATE_BYTES = 64 * 1024
MAX_VIEWS_PER_PROJECT = 500
VIEW_COLUMNS = (
    "project",
    "name",
    "state",
    "created_by",
    "created_ms",
    "saved_by",
    "saved_ms",
    "deleted",
    "revision",
)


def view_name(name: str) -> str:
    """The name as stored (surrounding blanks removed), or InvalidArgument saying what to change."""
    name = name.strip()
    if not name:
        raise InvalidArgument("a saved view needs a name, e.g. 'lr sweep, val curves'")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"view name is {len(name)} characters long; at most {MAX_NAME_CHARS}")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise InvalidArgument("view name contains a control character (newline, tab, ...): remove it")
    return name


def view_state(state_json: str) -> str:
    """The state, checked to be a JSON object of at most MAX_STATE_BYTES."""
    size = len(state_json.encode())
    if size > MAX_STATE_BYTES:
        raise InvalidArgument(f"view state is {size:,} bytes; at most {MAX_STATE_BYTES:,}")
    try:
        value = json.loads(state_json or "{}")
    except ValueError as exc:
        raise InvalidArgument(f"view state is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"view state must be a JSON object, not {type(value).__name__}")
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
