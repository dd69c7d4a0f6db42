"""The API keys file: its format, key generation, hashing, and safe edits.

The file is one JSON object. An entry made by `runstream keys create` is stored under its key id,
with only a salted scrypt hash of the key:

    {"rsk_3f9a1c2b8d7e": {"hash": "scrypt$16384$8$1$<salt>$<digest>", "project": "mnist",
                          "role": "write", "name": "alice", "created_ms": 1764770000000}}

The key itself (`rsk_3f9a1c2b8d7e_<43 random characters>`) is printed once and never stored; its
id part tells the server which entry to verify against, so a check costs one hash, not one per
entry. scrypt, not a fast hash, so that a copied keys file does not give the keys away even for a
key someone typed by hand; the server keeps a verified key in memory, so only the first call of a
key in a process pays for it (~50 ms).

Older files hold plaintext keys: {"<key>": {"project": ..., "role": ...}}. They keep working (the
server logs a warning naming how many); `runstream keys rotate <id>` replaces one with a hashed key,
and `runstream keys ls` marks them. Decision: no silent in-place migration, because a key that sat
in a file in clear text should be replaced, not just hashed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from runstream_services.errors import ConfigError

ROLES = {"read": 1, "write": 2, "admin": 3}
KEY_PREFIX = "rsk_"
_KEY_RE = re.compile(r"^(rsk_[0-9a-f]{12})_([A-Za-z0-9_-]{32,})$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass(frozen=True)
class KeyEntry:
    """One key of the file. `hash` is empty for a plaintext (older) entry, whose id is then the
    first 12 hex characters of the key's sha256, as the audit log names it."""

    key_id: str
    project: str  # a project name, or "*" for all
    role: str  # read | write | admin
    name: str = ""  # who or what holds it (free text)
    created_ms: int = 0
    hash: str = ""
    plaintext: str = ""  # older entries only; never written by this module

    @property
    def hashed(self) -> bool:
        return bool(self.hash)


def plaintext_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def key_id_of(key: str) -> str | None:
    """The id part of a generated key, or None for a key of another shape."""
    m = _KEY_RE.match(key)
    return m.group(1) if m else None


def new_key() -> tuple[str, str]:
    """A fresh (key id, key): 48 bits of id, 256 bits of secret."""
    key_id = KEY_PREFIX + secrets.token_hex(6)
    return key_id, f"{key_id}_{secrets.token_urlsafe(32)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_key(key: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, **_SCRYPT, dklen=32)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def verify_key(key: str, stored: str) -> bool:
    """Whether `key` matches the stored hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(key.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def _entry(path: Path, name: str, raw: object) -> KeyEntry:
    if not isinstance(raw, dict) or raw.get("role") not in ROLES or not raw.get("project"):
        raise ConfigError(
            f"api_keys_file {path}: each entry needs {{'project': '<name>' or '*', 'role': one of {sorted(ROLES)}}}"
            f" (entry {name[:16]!r}...)"
        )
    common = {
        "project": str(raw["project"]),
        "role": raw["role"],
        "name": str(raw.get("name", "")),
        "created_ms": int(raw.get("created_ms", 0) or 0),
    }
    if "hash" in raw:
        if not _KEY_RE.match(f"{name}_{'x' * 32}") or not str(raw["hash"]).startswith("scrypt$"):
            raise ConfigError(
                f"api_keys_file {path}: entry {name!r} has a hash but is not a key id rsk_<12 hex> with "
                "an scrypt$... hash; make keys with `runstream keys create`"
            )
        return KeyEntry(key_id=name, hash=str(raw["hash"]), **common)
    return KeyEntry(key_id=plaintext_id(name), plaintext=name, **common)


def load(path: str | os.PathLike[str]) -> list[KeyEntry]:
    """Every entry of the file; ConfigError saying what is wrong when it cannot be used."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read api_keys_file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"api_keys_file {path} must hold a JSON object of key -> {{project, role}}")
    return [_entry(path, name, raw) for name, raw in data.items()]


def _record(e: KeyEntry) -> tuple[str, dict]:
    fields = {
        k: v for k, v in asdict(e).items() if k not in ("key_id", "plaintext", "hash") and v not in ("", 0)
    }
    fields = {"project": e.project, "role": e.role, **fields}
    if e.hashed:
        return e.key_id, {"hash": e.hash, **fields}
    return e.plaintext, fields


def save(path: str | os.PathLike[str], entries: list[KeyEntry]) -> None:
    """Writes the file atomically (a reader sees the old or the new one), readable by its owner only."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(_record(e) for e in entries), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def editing(path: str | os.PathLike[str]) -> Iterator[list[KeyEntry]]:
    """The file's entries under an exclusive lock (a sibling .lock file); the list as left by the
    block is saved when the block ends without an exception. A missing file starts empty."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = load(path) if path.exists() else []
        yield entries
        save(path, entries)


def make_entry(project: str, role: str, name: str = "", key_id: str | None = None) -> tuple[KeyEntry, str]:
    """A new hashed entry and its key (to show once). `key_id` keeps an existing id (rotation)."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not project:
        raise ConfigError("a key needs a project (or '*' for all projects)")
    fresh_id, key = new_key()
    if key_id is not None:
        key = key_id + key[len(fresh_id) :]
    entry = KeyEntry(
        key_id=key_id or fresh_id, project=project, role=role, name=name,
        created_ms=int(time.time() * 1000), hash=hash_key(key),
    )  # fmt: skip
    return entry, key


__all__ = [
    "KEY_PREFIX", "ROLES", "KeyEntry", "editing", "hash_key", "key_id_of", "load", "make_entry", "new_key",
    "plaintext_id", "save", "verify_key",
]  # fmt: skip
