"""The `runstream` command. Subcommands import their dependencies lazily, so `runstream sync`
works with the bare SDK install."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  runstream up --demo                 embedded server + dashboard, with a demo sweep logged
  runstream server --port 7777        embedded server only (chDB + local artifacts, loopback)
  runstream server --bus kafka --kafka-bootstrap 127.0.0.1:9092 \\
      --clickhouse-dsn http://default:@127.0.0.1:8123 --artifact-store s3 --s3-endpoint 127.0.0.1:9000
  runstream sync ~/.runstream/spool   upload runs logged offline (idempotent)

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
    g.add_argument("--log-level", default="INFO", help="python logging level (default INFO)")


def _overrides(args: argparse.Namespace) -> dict:
    keys = [
        "host", "port", "metrics_port", "data_dir", "components", "bus", "kafka_bootstrap",
        "clickhouse_dsn", "artifact_store", "s3_endpoint", "s3_bucket",
    ]  # fmt: skip
    return {k: getattr(args, k, None) for k in keys}


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

    p = sub.add_parser("dashboard", help="run only the dashboard against a running server")
    p.add_argument("--endpoint", help="server host:port (default $RUNSTREAM_ENDPOINT or 127.0.0.1:7777)")
    p.add_argument("--port", type=int, default=8501, help="Streamlit port (default 8501)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "server":
        from runstream_services.server import main as server_main

        return server_main(args, _overrides(args))
    if args.command == "up":
        from runstream_services.up import main as up_main

        return up_main(args, _overrides(args))
    if args.command == "sync":
        from runstream.sync import main as sync_main

        return sync_main(args)
    if args.command == "dashboard":
        from runstream_services.up import dashboard_main

        return dashboard_main(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
