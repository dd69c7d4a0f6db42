"""Errors the SDK raises. `retriable` tells whether trying the same call later may succeed."""

from __future__ import annotations


class RunstreamError(Exception):
    """Root of every error the SDK raises on purpose."""

    retriable = False


class InvalidValueError(RunstreamError, ValueError):
    """Raised on the caller's thread when a logged value or key is not acceptable."""


class NotInitializedError(RunstreamError):
    """Raised by module-level shortcuts (runstream.log, ...) when no run is active."""


#: gRPC status names that mean the server was not reached (or did not answer in time)
UNREACHABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


class ServerError(RunstreamError):
    """Raised when the server refused a request. `code` is the gRPC status name; `details` is the
    text to show a person: the server's own words (e.g. where a filter is malformed), or for an
    unreachable server, where it was sought. str() adds which call failed."""

    def __init__(self, message: str, code: str = "UNKNOWN", details: str | None = None):
        super().__init__(message)
        self.code = code
        self.details = message if details is None else details

    @property
    def unreachable(self) -> bool:
        """True when the server was not reached in time, rather than refusing the request."""
        return self.code in UNREACHABLE_CODES


class ServerUnavailableError(ServerError):
    """Raised when the server cannot be reached within the allowed time."""

    retriable = True


class FlushTimeoutError(RunstreamError):
    """Raised when pending data was not acknowledged within the flush timeout (it stays spooled)."""

    retriable = True


class ConfigError(RunstreamError, ValueError):
    """Raised by `runstream.init` when a setting (argument or RUNSTREAM_* variable) is invalid."""


class RunFinishedError(RunstreamError):
    """Raised when logging to a run that was already finished."""


class SpoolError(RunstreamError):
    """Raised when the local spool (offline runs, spilled batches) cannot be read or written."""


class RefusedWarning(UserWarning):
    """Warned when the server refused a request (ok=False ack, or INVALID_ARGUMENT for an artifact
    upload); the request is kept in `<spool>/<run_id>/<client_id>.refused` and counted in
    `Run.refused_count`. Also warned (and counted) for the rare entry the SDK's worker could not
    pack: that entry alone is left out, the rest is sent."""
