"""`runstream alerts ls|add|rm|firings PROJECT ...`: the flags (argparse only, so `--help` stays
fast on the bare SDK install); the handlers are in runstream.alerts_commands."""

from __future__ import annotations

import argparse

KINDS_HELP = """\
Kinds of rule:
  threshold  --key loss --op '>' --value 10 [--last-n 5]   the mean of the newest N points of a
             metric compared with a value (N = 1: the newest point)
  nonfinite  [--key loss]     a NaN or +-inf point of the metric (of any metric without --key)
  no_points  --minutes 15     a running run logged no point for that long
  crashed                     the server marked a run crashed (it stopped without finishing)
Each rule fires once per run and condition episode: it fires again only after the condition
was false in between. A firing is POSTed as JSON to --webhook, signed: the header
X-Runstream-Signature is "sha256=" + HMAC-SHA256(secret, body) in hex. `add` prints the secret
once (pass --secret to choose it).
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT", help="the project whose alert rules these are")
    p.add_argument("--endpoint", help="server host:port (default $RUNSTREAM_ENDPOINT or 127.0.0.1:7777)")
    p.add_argument("--api-key", help="API key (default $RUNSTREAM_API_KEY); add and rm need the write role")


def add_commands(sub) -> None:
    alerts = sub.add_parser(
        "alerts",
        help="alert rules (metric threshold, NaN/inf, no points, crashed) delivered by webhook",
        description="Manage a project's alert rules and see their recent firings.\n\n" + KINDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    asub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)

    p = asub.add_parser("ls", help="list the project's rules")
    _common(p)
    p.set_defaults(run="runstream.alerts_commands:ls")

    p = asub.add_parser(
        "add",
        help="add a rule",
        description="Add an alert rule.\n\n" + KINDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("name", metavar="NAME", help="what people will read in the alert, e.g. 'loss diverged'")
    p.add_argument("kind", choices=["threshold", "nonfinite", "no_points", "crashed"], help="the condition")
    p.add_argument("--webhook", required=True, metavar="URL", help="http(s) URL that receives each firing")
    p.add_argument("--key", default="", help="metric key (threshold; nonfinite: default any metric)")
    p.add_argument(
        "--op", default="", choices=["", ">", ">=", "<", "<=", "==", "!="], help="threshold comparison"
    )
    p.add_argument("--value", type=float, default=0.0, help="threshold value")
    p.add_argument(
        "--last-n", type=int, default=1, metavar="N", help="threshold on the mean of the newest N points"
    )
    p.add_argument("--minutes", type=float, default=0.0, help="no_points: minutes without a point")
    p.add_argument("--secret", default="", help="webhook signing secret (default: a random one, printed)")
    p.set_defaults(run="runstream.alerts_commands:add")

    p = asub.add_parser("rm", help="remove a rule")
    _common(p)
    p.add_argument("rule_id", metavar="RULE_ID", help="the rule's id (see `runstream alerts ls`)")
    p.set_defaults(run="runstream.alerts_commands:rm")

    p = asub.add_parser("firings", help="recent firings with their webhook delivery status")
    _common(p)
    p.add_argument("--rule", default="", metavar="RULE_ID", help="only this rule's firings")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N firings (default 50)")
    p.set_defaults(run="runstream.alerts_commands:firings")
