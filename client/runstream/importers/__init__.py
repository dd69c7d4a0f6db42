"""Importers: runs from MLflow, TensorBoard, W&B and Neptune exports into Runstream.

`runstream import mlflow|tensorboard|wandb|neptune ...` (cli_args.py), or from Python:

    from runstream.importers.mlflow_source import import_mlflow
    report = import_mlflow("sqlite:///mlflow.db", endpoint="127.0.0.1:7777")

Each source module reads its format into core.SourceRun records; core.import_runs writes them,
idempotently (a run already imported and unchanged is skipped) and resumably (an interrupted
import continues the run it stopped in). Readers import their optional libraries lazily, so this
package loads on the bare SDK install.
"""

from .core import ImportFailed, ImportReport, RunResult, Series, SourceArtifact, SourceRun, import_runs

__all__ = [
    "ImportFailed",
    "ImportReport",
    "RunResult",
    "Series",
    "SourceArtifact",
    "SourceRun",
    "import_runs",
]
