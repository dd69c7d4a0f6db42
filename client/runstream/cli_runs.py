"""`runstream runs ls|export PROJECT ...`: the flags (argparse only, so `--help` stays fast and
works on the bare SDK install); the handlers are in runstream.runs_commands."""

from __future__ import annotations

import argparse

FILTER_HELP = """\
FILTER is the filter language of runstream.Api.runs, e.g.
  'params.lr > 0.01 and metrics.val_f1 > 0.85 and tags.team = "vision"'
  'datasets.imagenet = "v2.1" and state = "finished"'
MLflow's spellings work too: attributes.status = 'FINISHED', params.x = 'a', name LIKE 'bert%'.
ORDER is a field, "field DESC"/"field ASC" or "-field" (write --order-by=-field, with "=", so
the "-" is not read as a flag); give --order-by several times or comma-separate keys:
--order-by "metrics.val_acc DESC, params.lr". Default: newest first.
"""


def _query_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT", help="the project to list")
    p.add_argument("--filter", default="", metavar="FILTER", help="which runs (see below; default: all)")
    p.add_argument("--order-by", action="append", default=[], metavar="ORDER", help="sort key(s) (see below)")
    p.add_argument("--limit", type=int, metavar="N", help="at most N runs")
    p.add_argument("--endpoint", help="server host:port (default $RUNSTREAM_ENDPOINT or 127.0.0.1:7777)")
    p.add_argument("--api-key", help="API key with read access (default $RUNSTREAM_API_KEY)")


def add_commands(sub) -> None:
    runs = sub.add_parser(
        "runs",
        help="list runs or export them to Parquet/CSV (filter, sort, columns MLflow users know)",
        description="List or export the runs of a project.",
    )
    rsub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)

    p = rsub.add_parser(
        "ls",
        help="print matching runs as a table",
        description="Print the matching runs as a table: run_id, name, status, start_time, end_time\n"
        "and the columns --columns names.\n\n" + FILTER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _query_flags(p)
    p.add_argument(
        "--columns",
        default="",
        metavar="COLS",
        help="more columns, comma-separated, e.g. metrics.val_acc,params.lr,datasets.imagenet "
        "(a trailing .* takes every column with that prefix: metrics.*)",
    )
    p.set_defaults(run="runstream.runs_commands:ls", limit=50)

    p = rsub.add_parser(
        "export",
        help="write matching runs to a Parquet or CSV file",
        description="Write the matching runs to a file: every column runstream.Api.runs returns\n"
        "(run_id, status, start_time, end_time, params.*, metrics.*, tags.*, datasets.*, ...).\n\n"
        + FILTER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _query_flags(p)
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (replaced if it exists)")
    p.add_argument(
        "--format", choices=("parquet", "csv"), help="file format (default: from the suffix of FILE)"
    )
    p.set_defaults(run="runstream.runs_commands:export")
