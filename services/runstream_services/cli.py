"""The `runstream` command. Subcommands import their dependencies lazily, so `runstream sync`
works with the bare SDK install."""

from __future__ import annotations

import argparse
import importlib
import sys

EPILOG = """\
examples:
  runstream up --demo                 embedded server + dashboard, with a demo sweep logged
  runstream server --port 7777        embedded server only (chDB + local artifacts, loopback)
  runstream server --bus kafka --kafka-bootstrap 127.0.0.1:9092 \\
      --clickhouse-dsn http://default:@127.0.0.1:8123 --artifact-store s3 --s3-endpoint 127.0.0.1:9000
  runstream sync ~/.runstream/spool   upload runs logged offline (idempotent)
  runstream models show --project mnist classifier@production
  runstream artifact get --project mnist classifier@production --dest ./model

Settings can also come from RUNSTREAM_<SETTING> variables (e.g. RUNSTREAM_PORT) or a TOML file
(--config or RUNSTREAM_CONFIG); a flag wins over the environment, which wins over the file.
"""


def _server_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--config", help="TOML settings file ([server] table)")
    g.add_argument("--host", help="address to listen on (default 127.0.0.1: loopback only)")
    g.add_argument("--port", type=int, help="gRPC port for ingest and query (default 7777)")
    g.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default 7778; 0: off)")
    g.add_argument("--data-dir", help="chDB data and local artifacts (default ~/.runstream)")
    g.add_argument("--components", help="comma list of ingest,writer,query (default: all)")
    g.add_argument("--bus", choices=["embedded", "kafka"], help="embedded (default) or kafka")
    g.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers, host:port[,host:port]")
    g.add_argument("--clickhouse-dsn", help="chdb://<folder> or http://user:pass@host:8123")
    g.add_argument("--artifact-store", choices=["local", "s3"], help="local folder (default) or s3")
    g.add_argument("--s3-endpoint", help="S3/MinIO host:port")
    g.add_argument("--s3-bucket", help="bucket for artifact bytes (default runstream-artifacts)")
    g.add_argument("--tls-cert-file", help="TLS certificate chain (PEM) for the gRPC port")
    g.add_argument("--tls-key-file", help="its private key (PEM); TLS is off without both")
    g.add_argument("--tls-client-ca-file", help="mTLS: clients need a certificate this CA (PEM) signed")
    g.add_argument("--log-level", default="INFO", help="python logging level (default INFO)")


def _overrides(args: argparse.Namespace) -> dict:
    keys = [
        "host", "port", "metrics_port", "data_dir", "components", "bus", "kafka_bootstrap",
        "clickhouse_dsn", "artifact_store", "s3_endpoint", "s3_bucket",
        "tls_cert_file", "tls_key_file", "tls_client_ca_file",
    ]  # fmt: skip
    return {k: getattr(args, k, None) for k in keys}


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", required=True, help="the project the models or runs belong to")
    p.add_argument("--endpoint", help="server host:port (default $RUNSTREAM_ENDPOINT or 127.0.0.1:7777)")
    p.add_argument("--api-key", help="API key (default $RUNSTREAM_API_KEY)")


def _registry_commands(sub) -> None:
    """`models ls|show|alias` and `artifact get`; handlers (named, imported when run) in
    registry/commands.py."""
    models = sub.add_parser("models", help="list, inspect and alias registered models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser("ls", help="list the project's models with their latest version and aliases")
    _client_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler="models_ls")
    p = msub.add_parser(
        "show",
        help="show a model and its versions (REF = name), or one version with its run, artifact, "
        "datasets, commit and metrics (REF = name:VERSION or name@ALIAS)",
    )
    _client_flags(p)
    p.add_argument("ref", metavar="REF", help="name, name:VERSION or name@ALIAS")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler="models_show")
    p = msub.add_parser(
        "alias",
        help="point ALIAS of MODEL at VERSION in one step (or remove it with --delete); protected "
        "aliases such as production need an admin key; the move is written to the audit log",
    )
    _client_flags(p)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("alias", metavar="ALIAS")
    p.add_argument("version", metavar="VERSION", type=int, nargs="?", help="version number to point at")
    p.add_argument("--delete", action="store_true", help="remove the alias instead")
    p.add_argument("--reason", help="why, recorded in the audit log")
    p.set_defaults(handler="models_alias")
    p = msub.add_parser(
        "lineage",
        help="what a model version (REF), a run (--run) or a dataset (--dataset name@version) came from "
        "and what was made from it: runs, artifacts, model versions, datasets, one line per edge",
    )
    _client_flags(p)
    p.add_argument("ref", metavar="REF", nargs="?", help="name, name:VERSION or name@ALIAS")
    p.add_argument("--run", dest="run_id", help="start from this run id instead")  # args.run: COMMAND_GROUPS
    p.add_argument("--dataset", help="start from this dataset (name@version) instead")
    p.add_argument("--direction", choices=["both", "upstream", "downstream"], default="both")
    p.add_argument("--depth", type=int, default=0, help="hops from the start (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON (nodes and edges)")
    p.set_defaults(handler="models_lineage")

    artifact = sub.add_parser("artifact", help="download logged artifacts")
    asub = artifact.add_subparsers(dest="artifact_command", metavar="ACTION", required=True)
    p = asub.add_parser(
        "get",
        help="download an artifact's files and check each sha256: SOURCE is a run id (then NAME is "
        "the artifact name) or a model reference name, name:VERSION or name@ALIAS",
    )
    _client_flags(p)
    p.add_argument("source", metavar="SOURCE", help="run id, or model name / name:VERSION / name@ALIAS")
    p.add_argument("name", metavar="NAME", nargs="?", help="artifact name (required for a run id)")
    p.add_argument("--dest", default=".", help="folder to write the files into (default: here)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler="artifact_get")


# Command groups that live with their feature. Each module defines `add_commands(sub)`, which only
# declares subcommands and flags (argparse; no heavy imports at module level, so `--help` stays
# fast and works on the bare SDK install) and sets `run="package.module:function"` on each
# subcommand; main() imports that function when the command runs and returns what it returns.
COMMAND_GROUPS: tuple[str, ...] = (
    "runstream_services.storage.migrate_command",  # migrate
    "runstream_services.auth.cli_args",  # keys
    "runstream.importers.cli_args",  # import
    "runstream.cli_runs",  # runs ls|export
    "runstream.cli_alerts",  # alerts ls|add|rm|firings
    "runstream.cli_views",  # views ls|show|rm
)


def _add_groups(sub) -> None:
    for name in COMMAND_GROUPS:
        importlib.import_module(name).add_commands(sub)


def _run_group_command(args: argparse.Namespace) -> int:
    module_name, _, func = args.run.partition(":")
    return getattr(importlib.import_module(module_name), func)(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runstream",
        description="Runstream: experiment tracking for high-volume training jobs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("server", help="run the ingest, writer and query services")
    _server_flags(p)

    p = sub.add_parser("up", help="run the embedded server and the dashboard together")
    _server_flags(p)
    p.add_argument("--dashboard-port", type=int, default=8501, help="Streamlit port (default 8501)")
    p.add_argument("--demo", action="store_true", help="log a demo sweep through the SDK first")
    p.add_argument("--no-dashboard", action="store_true", help="start the server only")

    p = sub.add_parser("sync", help="upload runs logged offline or spooled while the server was down")
    p.add_argument("paths", nargs="*", help="spool folders or run folders (default: the spool dir)")
    p.add_argument("--endpoint", help="server host:port (default $RUNSTREAM_ENDPOINT or 127.0.0.1:7777)")
    p.add_argument("--api-key", help="API key (default $RUNSTREAM_API_KEY)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    _registry_commands(sub)
    _add_groups(sub)

    p = sub.add_parser("dashboard", help="run only the dashboard against a running server")
    p.add_argument("--endpoint", help="server host:port (default $RUNSTREAM_ENDPOINT or 127.0.0.1:7777)")
    p.add_argument("--port", type=int, default=8501, help="Streamlit port (default 8501)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None):
        return _run_group_command(args)
    if args.command == "server":
        from runstream_services.server import main as server_main

        return server_main(args, _overrides(args))
    if args.command == "up":
        from runstream_services.up import main as up_main

        return up_main(args, _overrides(args))
    if args.command == "sync":
        from runstream.sync import main as sync_main

        return sync_main(args)
    if args.command in ("models", "artifact"):
        from runstream_services.registry.commands import main as registry_main

        return registry_main(args)
    if args.command == "dashboard":
        from runstream_services.up import dashboard_main

        return dashboard_main(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
