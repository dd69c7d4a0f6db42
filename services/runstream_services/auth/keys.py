"""API keys: a JSON file {"<key>": {"project": "<name>" or "*", "role": "read|write|admin"}}.
Handlers ask `ApiKeys.check(principal, project, need)` for every project they touch, so a key
never reaches another project's data. With auth_required=false every call is allowed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import grpc

from runstream_services.config import ServerSettings
from runstream_services.errors import ConfigError, PermissionDenied, Unauthenticated

ROLES = {"read": 1, "write": 2, "admin": 3}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's project ('*' for all) and role."""

    project: str
    role: str
    key_id: str  # first characters of the key's sha256, safe to log

    def may(self, project: str, need: str) -> bool:
        return self.project in ("*", project) and ROLES[self.role] >= ROLES[need]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_key(metadata) -> str | None:
    for name, value in metadata or ():
        if name.lower() == "authorization" and isinstance(value, str):
            scheme, _, key = value.strip().partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return key.strip()
    return None


class ApiKeys:
    def __init__(self, keys: dict[str, tuple[str, str]], required: bool):
        """`keys`: key -> (project, role)."""
        self.required = required
        self._by_hash = {_hash(k): Principal(p, r, _hash(k)[:12]) for k, (p, r) in keys.items()}

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ApiKeys:
        if not settings.api_keys_file:
            return cls({}, settings.auth_required)
        path = Path(settings.api_keys_file).expanduser()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read api_keys_file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"api_keys_file {path} must hold a JSON object of key -> {{project, role}}")
        keys = {}
        for key, entry in data.items():
            if not isinstance(entry, dict) or entry.get("role") not in ROLES or not entry.get("project"):
                raise ConfigError(
                    f"api_keys_file {path}: each entry needs {{'project': '<name>' or '*', "
                    f"'role': one of {sorted(ROLES)}}}"
                )
            keys[key] = (str(entry["project"]), entry["role"])
        return cls(keys, settings.auth_required)

    def authenticate(self, metadata) -> Principal | None:
        """The caller's principal; None when auth is off and no known key was sent.
        Raises Unauthenticated when auth is required and the key is missing or unknown."""
        key = bearer_key(metadata)
        principal = self._by_hash.get(_hash(key)) if key else None
        if principal is None and self.required:
            if key is None:
                raise Unauthenticated(
                    "this server needs an API key: send metadata 'authorization: Bearer <key>'"
                )
            raise Unauthenticated("unknown API key: check RUNSTREAM_API_KEY or ask an admin for a key")
        return principal

    def check(self, principal: Principal | None, project: str, need: str) -> None:
        """Raises PermissionDenied unless `principal` may `need` (read/write/admin) on `project`."""
        if not self.required:
            return
        if principal is None or not principal.may(project, need):
            raise PermissionDenied(
                f"this API key may not {need} project {project!r}: use a key with role {need} or higher "
                "for that project"
            )

    def check_context(self, context: grpc.aio.ServicerContext, project: str, need: str) -> None:
        self.check(self.authenticate(context.invocation_metadata()), project, need)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid key when auth is required (Health stays open for probes).
    Project-level checks happen in the handlers, which know the project of each request."""

    OPEN_METHODS = ("/runstream.v1.IngestService/Health", "/grpc.health.v1.Health/Check")

    def __init__(self, keys: ApiKeys):
        self.keys = keys

    async def intercept_service(self, continuation, handler_call_details):
        if not self.keys.required or handler_call_details.method in self.OPEN_METHODS:
            return await continuation(handler_call_details)
        try:
            self.keys.authenticate(handler_call_details.invocation_metadata)
        except Unauthenticated as exc:
            handler = await continuation(handler_call_details)
            return _refusing(handler, exc.message)
        return await continuation(handler_call_details)


def _refusing(handler, message: str):
    async def abort_unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    if handler is None:
        return None
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort_unary, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort_unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kw)
    return grpc.stream_stream_rpc_method_handler(abort_stream, **kw)
