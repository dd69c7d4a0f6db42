"""`runstream views ls|show|rm PROJECT ...`: a project's saved dashboard views (saved from the
Runs page). Flags with argparse only; the handlers import runstream.Api when they run, so
`--help` stays fast on the bare SDK install."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime


def _common(p) -> None:
    p.add_argument("project", metavar="PROJECT", help="the project whose saved views these are")
    p.add_argument("--endpoint", help="server host:port (default $RUNSTREAM_ENDPOINT or 127.0.0.1:7777)")
    p.add_argument("--api-key", help="API key (default $RUNSTREAM_API_KEY); rm needs the write role")


def add_commands(sub) -> None:
    views = sub.add_parser(
        "views",
        help="saved views of the dashboard's Runs page (filter, sort, columns, curves, grouping)",
        description="List, show or remove a project's saved views. Views are saved from the dashboard's "
        "Runs page (Saved views > Save) or with runstream.Api().save_view(project, name, state).",
    )
    vsub = views.add_subparsers(dest="views_command", metavar="ACTION", required=True)
    p = vsub.add_parser("ls", help="list the project's views: name, who saved it, when")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON (with each view's state)")
    p.set_defaults(run="runstream.cli_views:ls")
    p = vsub.add_parser(
        "show", help="print one view's state (JSON) and the Runs-page URL query that opens it"
    )
    _common(p)
    p.add_argument("name", metavar="NAME", help="the view's name (quote it if it has spaces)")
    p.set_defaults(run="runstream.cli_views:show")
    p = vsub.add_parser("rm", help="remove a view")
    _common(p)
    p.add_argument("name", metavar="NAME", help="the view's name")
    p.set_defaults(run="runstream.cli_views:rm")


def _fail(exc: Exception) -> int:
    from runstream.errors import ServerError

    print(f"error: {exc.details if isinstance(exc, ServerError) else exc}", file=sys.stderr)
    return 2


def _views(args):
    from runstream.api import Api

    with Api(endpoint=args.endpoint, api_key=args.api_key) as api:
        return api.saved_views(args.project)


def ls(args) -> int:
    from runstream.errors import RunstreamError

    try:
        views = _views(args)
    except RunstreamError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps([v.__dict__ for v in views], indent=2))
        return 0
    if not views:
        print(f"no saved views in {args.project!r}: save one from the dashboard's Runs page")
        return 0
    for v in views:
        when = datetime.fromtimestamp(v.saved_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(f"{v.name!r}  saved by {v.saved_by} at {when}")
    return 0


def show(args) -> int:
    from urllib.parse import urlencode

    from runstream.errors import RunstreamError

    try:
        found = [v for v in _views(args) if v.name == args.name]
    except RunstreamError as exc:
        return _fail(exc)
    if not found:
        print(
            f"error: no saved view {args.name!r} in {args.project!r}: `runstream views ls {args.project}`",
            file=sys.stderr,
        )
        return 1
    state = found[0].state
    print(json.dumps(state, indent=2, sort_keys=True))
    lists = {k: v or [""] for k, v in state.items() if isinstance(v, list)}  # [""]: an empty list
    scalars = {k: (int(v) if isinstance(v, bool) else v) for k, v in state.items() if not isinstance(v, list)}
    print("runs page: /runs?" + urlencode({"project": args.project, **scalars, **lists}, doseq=True))
    return 0


def rm(args) -> int:
    from runstream.api import Api
    from runstream.errors import RunstreamError

    try:
        with Api(endpoint=args.endpoint, api_key=args.api_key) as api:
            api.delete_view(args.project, args.name)
    except RunstreamError as exc:
        return _fail(exc)
    print(f"removed view {args.name!r} from {args.project!r}")
    return 0
