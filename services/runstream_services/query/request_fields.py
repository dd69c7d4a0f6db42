"""Checks and codecs of request fields that several query RPCs share: the project name, the metric
kind, and SearchRuns' page tokens. A page token is opaque to clients: the offset of the next page
and a fingerprint of the query it belongs to, so a token is never applied to another query."""

from __future__ import annotations

import base64
import hashlib
import json

from runstream.v1 import types_pb2
from runstream_services.errors import InvalidArgument

MAX_PROJECT_CHARS = 256
MAX_PAGE_OFFSET = 10_000_000


def project_name(project: str) -> str:
    """The project a request names; InvalidArgument when it is empty or too long."""
    if not project:
        raise InvalidArgument("project is required")
    if len(project) > MAX_PROJECT_CHARS:
        raise InvalidArgument(f"project name is longer than {MAX_PROJECT_CHARS} characters")
    return project


def metric_kind(kind: int) -> str:
    """The stored kind ("user" or "system") of a runstream.v1.MetricKind; unspecified is user."""
    if kind in (types_pb2.METRIC_KIND_UNSPECIFIED, types_pb2.METRIC_KIND_USER):
        return "user"
    if kind == types_pb2.METRIC_KIND_SYSTEM:
        return "system"
    raise InvalidArgument(f"unknown metric kind {kind}; use USER or SYSTEM")


def search_fingerprint(project: str, filter_text: str, order_by: list[str]) -> str:
    """What a SearchRuns page token is bound to: the project, filter and sort order."""
    return hashlib.sha256(json.dumps([project, filter_text, order_by]).encode()).hexdigest()[:16]


def encode_page_token(offset: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> int:
    """The offset a token carries (0 for no token); InvalidArgument for a token this server did not
    issue, one issued for another query, or one out of range."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        offset = int(data["o"])
        same = data["f"] == fingerprint
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is not one this server issued; start without it") from None
    if not same:
        raise InvalidArgument(
            "page_token belongs to a different project, filter or order_by; start without it"
        )
    if offset < 0 or offset > MAX_PAGE_OFFSET:
        raise InvalidArgument("page_token is out of range; start without it")
    return offset
