"""`runstream import mlflow|tensorboard|wandb|neptune ...`: the flags (argparse only, so `--help`
stays fast and works on the bare SDK install); each subcommand names its handler in `run`."""

from __future__ import annotations

import argparse

COMMON_HELP = """\
Every import is idempotent and resumable: a run already imported (and unchanged at the source) is
skipped; an import that was interrupted continues the run it stopped in, sending only the metric
points and artifacts the server does not hold yet. Run it again until it reports no failures.
"""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Runstream")
    g.add_argument("--endpoint", help="server host:port (default $RUNSTREAM_ENDPOINT or 127.0.0.1:7777)")
    g.add_argument("--api-key", help="API key with write access (default $RUNSTREAM_API_KEY)")
    g.add_argument("--no-progress", action="store_true", help="one line per run instead of a progress bar")
    g.add_argument("--quiet", action="store_true", help="print only the summary")


def add_commands(sub) -> None:
    imp = sub.add_parser(
        "import",
        help="import runs from MLflow, TensorBoard, W&B or a Neptune export (idempotent, resumable)",
        description="Import runs from another tracker into Runstream.\n\n" + COMMON_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    isub = imp.add_subparsers(dest="import_source", metavar="SOURCE", required=True)

    p = isub.add_parser(
        "mlflow",
        help="an MLflow tracking server, SQLite store or mlruns/ folder: runs, params, tags, every "
        "metric point, artifacts, registered models with versions and aliases",
        description="Import from MLflow (no mlflow install needed).\n\n"
        "URI: http(s)://host:port (a tracking server), sqlite:///path/mlflow.db, or an mlruns/ folder\n"
        "(file:///... or a path). Each experiment becomes a project named after it, unless --project\n"
        "puts every run into one project (the experiment name then becomes the run's group).\n"
        "Runs get the id mlflow-<MLflow run id>.\n\n" + COMMON_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("uri", metavar="URI", help="tracking server URL, sqlite:///file.db or mlruns/ folder")
    p.add_argument(
        "--project", help="import every experiment into this project (default: one per experiment)"
    )
    p.add_argument("--mlflow-token", help="bearer token for the MLflow server (default: none)")
    p.add_argument("--no-models", action="store_true", help="skip the model registry")
    _common(p)
    p.set_defaults(run="runstream.importers.mlflow_source:main")

    p = isub.add_parser(
        "tensorboard",
        help="TensorBoard event files (scalars): every folder holding events.out.tfevents.* is one run",
        description="Import TensorBoard scalars. Each folder under LOGDIR that holds event files is one\n"
        "run, named by its path relative to LOGDIR; scalar tags become metric keys with their steps\n"
        "and wall times.\n\n" + COMMON_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("logdir", metavar="LOGDIR", help="folder of event files (searched recursively)")
    p.add_argument("--project", required=True, help="project to import into")
    p.add_argument("--group", help="group for the imported runs (default: the LOGDIR folder's name)")
    _common(p)
    p.set_defaults(run="runstream.importers.tensorboard_source:main")

    p = isub.add_parser(
        "wandb",
        help="W&B run folders (offline runs or synced copies: run-*/run-<id>.wandb), read with wandb's own reader",
        description="Import W&B runs from their local run folders (wandb/offline-run-*/ or run-*/,\n"
        "each holding run-<id>.wandb): config, summary, tags, notes, group, every history row,\n"
        "the run's files/ and logged artifacts. Needs wandb installed: its record schema decodes the\n"
        ".wandb files.\n\n" + COMMON_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", metavar="PATH", nargs="+", help="wandb/ folders or run folders")
    p.add_argument("--project", help="project to import into (default: the W&B project of each run)")
    _common(p)
    p.set_defaults(run="runstream.importers.wandb_source:main")

    p = isub.add_parser(
        "neptune",
        help="Parquet files written by neptune-exporter (parameters, float series, files)",
        description="Import a neptune-exporter export: DATA holds <project>/<run>_part_<n>.parquet\n"
        "files, FILES the downloaded files. A run is imported once its part_0 file exists (the\n"
        "exporter writes it last). Parameters become config, float series metrics, sys/tags tags,\n"
        "sys/name the group; files, file series, string series and histograms become artifacts.\n\n"
        + COMMON_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="the exporter's --data-path folder")
    p.add_argument("--files", help="the exporter's --files-path folder (default: DATA/../files)")
    p.add_argument("--project", help="project to import into (default: from each Neptune project id)")
    p.add_argument(
        "--step-multiplier",
        type=float,
        default=1.0,
        help="Neptune steps are decimals; Runstream's are integers: step * this (default 1) must be whole",
    )
    _common(p)
    p.set_defaults(run="runstream.importers.neptune_source:main")
