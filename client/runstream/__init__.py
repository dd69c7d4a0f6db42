"""Runstream SDK: log runs, metrics and artifacts from training jobs.

import runstream
with runstream.init(project="mnist", config={"lr": 1e-3}) as run:
    for step in range(1000):
        run.log({"loss": loss}, step=step)
"""

from runstream.errors import (
    FlushTimeoutError,
    InvalidValueError,
    NotInitializedError,
    RunstreamError,
    ServerError,
    ServerUnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "FlushTimeoutError",
    "InvalidValueError",
    "NotInitializedError",
    "RunstreamError",
    "ServerError",
    "ServerUnavailableError",
    "__version__",
]
