"""The handlers of `runstream runs ls|export` (flags in runstream.cli_runs): thin wrappers on
runstream.Api.runs and Api.export_runs that print what a person needs and return an exit code."""

from __future__ import annotations

import sys

from runstream.api import Api
from runstream.errors import RunstreamError, ServerError

LS_COLUMNS = ("run_id", "name", "status", "start_time", "end_time")


def ls(args) -> int:
    """`runstream runs ls PROJECT`: the matching runs as a text table on stdout."""
    try:
        with Api(endpoint=args.endpoint, api_key=args.api_key) as api:
            frame = api.runs(args.project, filter=args.filter, order_by=args.order_by, limit=args.limit)
    except (RunstreamError, ValueError) as exc:
        return _fail(exc)
    try:
        columns = pick_columns(list(frame.columns), args.columns)
    except ValueError as exc:
        return _fail(exc)
    if frame.empty:
        print(f"no runs in {args.project!r}" + (f" match {args.filter!r}" if args.filter else ""))
        return 0
    print(frame[columns].to_string(index=False, max_colwidth=40))
    return 0


def export(args) -> int:
    """`runstream runs export PROJECT --out FILE`: writes the file, prints how many runs."""
    try:
        with Api(endpoint=args.endpoint, api_key=args.api_key) as api:
            n = api.export_runs(
                args.project, args.out, format=args.format, filter=args.filter, order_by=args.order_by,
                limit=args.limit,
            )  # fmt: skip
    except (RunstreamError, ValueError, OSError) as exc:
        return _fail(exc)
    print(f"wrote {n} run{'s' if n != 1 else ''} to {args.out}")
    return 0


def pick_columns(available: list[str], wanted: str) -> list[str]:
    """LS_COLUMNS, then the comma-separated `wanted` ones (a trailing ".*" takes every column of
    that prefix); ValueError naming the columns there are when one is unknown."""
    columns = [c for c in LS_COLUMNS if c in available]
    for item in (w.strip() for w in wanted.split(",") if w.strip()):
        if item.endswith(".*"):
            found = [c for c in available if c.startswith(item[:-1])]
        else:
            found = [item] if item in available else []
        if not found:
            raise ValueError(f"no column {item!r}; the runs have: {', '.join(available)}")
        columns += [c for c in found if c not in columns]
    return columns


def _fail(exc: Exception) -> int:
    message = exc.details if isinstance(exc, ServerError) else str(exc)
    print(f"error: {message}", file=sys.stderr)
    return 2
