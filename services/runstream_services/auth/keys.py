"""API keys: who may do what on which project. Keys live in a JSON file (format, hashing and edits:
auth/keyfile.py; `runstream keys create|rotate|revoke|ls` edits it). Handlers ask
`ApiKeys.check(principal, project, need)` for every project they touch, so a key never reaches
another project's data. With auth_required=false every call is allowed.

Roles: read (query, download), write (+ log runs, upload artifacts, register models, move
unprotected aliases), admin (+ move or delete protected aliases such as `production`). Keys are
managed by whoever may write the keys file (an operator), not over the API.

The file is re-read when it changes (checked at most once a second), so a created, rotated or
revoked key takes effect on a running server without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from runstream_services.auth import keyfile
from runstream_services.auth.keyfile import ROLES, KeyEntry
from runstream_services.config import ServerSettings
from runstream_services.errors import ConfigError, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)
RELOAD_CHECK_S = 1.0
MAX_REFUSED = 10_000


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's project ('*' for all) and role."""

    project: str
    role: str
    key_id: str  # the key's id in the keys file (older plaintext keys: a sha256 prefix), safe to log

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


class _Table:
    """One loaded version of the keys: plaintext keys by sha256, hashed entries by id, and the
    keys verified so far (by sha256, so the key text is not kept)."""

    def __init__(self, entries: list[KeyEntry]):
        self.plain = {_hash(e.plaintext): _principal(e) for e in entries if not e.hashed}
        self.hashed = {e.key_id: e for e in entries if e.hashed}
        self.verified: dict[str, Principal] = {}
        self.refused: dict[str, None] = {}  # wrong secrets for known ids, so a retry costs no hash

    def find(self, key: str) -> Principal | None:
        digest = _hash(key)
        found = self.plain.get(digest) or self.verified.get(digest)
        if found is not None or digest in self.refused:
            return found
        entry = self.hashed.get(keyfile.key_id_of(key) or "")
        if entry is None:
            return None
        if not keyfile.verify_key(key, entry.hash):
            if len(self.refused) >= MAX_REFUSED:
                self.refused.pop(next(iter(self.refused)))
            self.refused[digest] = None
            return None
        principal = self.verified[digest] = _principal(entry)
        return principal


def _principal(e: KeyEntry) -> Principal:
    return Principal(e.project, e.role, e.key_id)


class ApiKeys:
    def __init__(self, keys: dict[str, tuple[str, str]], required: bool, *, path: Path | None = None):
        """`keys`: plaintext key -> (project, role), for keys given in code; `path`: a keys file,
        loaded now and re-read when it changes."""
        self.required = required
        self.path = path
        self._fixed = [KeyEntry(keyfile.plaintext_id(k), p, r, plaintext=k) for k, (p, r) in keys.items()]
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stamp = self._file_stamp()
        self._table = _Table(self._fixed + (self._load_file() if path else []))

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ApiKeys:
        path = Path(settings.api_keys_file).expanduser() if settings.api_keys_file else None
        return cls({}, settings.auth_required, path=path)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat() if self.path else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st else None

    def _load_file(self) -> list[KeyEntry]:
        assert self.path is not None
        entries = keyfile.load(self.path)
        plain = sum(1 for e in entries if not e.hashed)
        if plain:
            log.warning(
                "api_keys_file %s holds %d plaintext key(s): they still work, but replace each with "
                "`runstream keys rotate <id>` (see `runstream keys ls`)", self.path, plain,
            )  # fmt: skip
        return entries

    def _refresh(self) -> None:
        """Re-reads the file when it changed; a file that cannot be read keeps the last keys."""
        if self.path is None or time.monotonic() - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            if time.monotonic() - self._checked < RELOAD_CHECK_S:
                return
            self._checked = time.monotonic()
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            try:
                table = _Table(self._fixed + self._load_file())
            except ConfigError as exc:
                log.warning("keys file changed but cannot be used, keeping the previous keys: %s", exc)
                return
            self._stamp, self._table = stamp, table
            log.info("API keys reloaded from %s (%d keys)", self.path, len(table.plain) + len(table.hashed))

    def authenticate(self, metadata) -> Principal | None:
        """The caller's principal; None when auth is off and no known key was sent.
        Raises Unauthenticated when auth is required and the key is missing or unknown."""
        key = bearer_key(metadata)
        self._refresh()
        principal = self._table.find(key) if key else None
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


def authorized(auth: ApiKeys | None, context, project: str, need: str) -> tuple[str, Principal | None]:
    """(the request's project name, validated; the caller's principal, None without auth) once the
    caller may `need` (read/write/admin) that project; raises InvalidArgument / Unauthenticated /
    PermissionDenied otherwise. The registry, run-edit and alert services start every call here."""
    from runstream_services.query.request_fields import project_name

    project = project_name(project)
    principal = None
    if auth is not None:
        principal = auth.authenticate(context.invocation_metadata())
        auth.check(principal, project, need)
    return project, principal


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
            # in a thread: the first call of a key verifies its scrypt hash (tens to hundreds of ms);
            # the handlers' own authenticate() then finds it verified
            await asyncio.to_thread(self.keys.authenticate, handler_call_details.invocation_metadata)
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
