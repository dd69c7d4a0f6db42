"""Domain errors of the services. Each carries the gRPC status code it maps to; one server
interceptor (grpc_errors.py) turns them into statuses, so handlers just raise."""

from __future__ import annotations

import grpc


class RunstreamServiceError(Exception):
    """Root of every error the services raise on purpose."""

    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(RunstreamServiceError):
    """Raised when a request is malformed: bad names, wrong sizes, unparsable filters."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RunstreamServiceError):
    """Raised when a project, run or artifact the request names does not exist."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RunstreamServiceError):
    """Raised when creating something that exists and must not be joined."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(RunstreamServiceError):
    """Raised when a request carries no API key, or an unknown one."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RunstreamServiceError):
    """Raised when an API key lacks the role or project the request needs."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RunstreamServiceError):
    """Raised when a request is over a size limit or the server is over capacity."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RunstreamServiceError):
    """Raised when a backing service (Kafka, ClickHouse, object store) cannot be reached; retry."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class ConfigError(RunstreamServiceError):
    """Raised at start-up when settings are missing, unknown or out of range."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
