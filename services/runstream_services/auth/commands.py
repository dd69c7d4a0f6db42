"""Handlers of `runstream keys ...` (parser: auth/cli_args.py). Each edits the keys file under a
lock and writes it atomically (auth/keyfile.py); a key's secret is printed once and never stored."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from runstream_services.auth import keyfile
from runstream_services.errors import ConfigError


class KeysCommandError(Exception):
    """A `runstream keys` command cannot do what was asked (unknown id, no keys file)."""


def _path(args: argparse.Namespace) -> Path:
    path = getattr(args, "keys_file", None) or os.environ.get("RUNSTREAM_API_KEYS_FILE")
    if not path:
        raise KeysCommandError(
            "which keys file? give --keys-file or set RUNSTREAM_API_KEYS_FILE (the server's api_keys_file)"
        )
    return Path(path).expanduser()


def _show_new(args: argparse.Namespace, entry: keyfile.KeyEntry, key: str, path: Path, verb: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"key_id": entry.key_id, "key": key, "project": entry.project,
                          "role": entry.role, "name": entry.name}))  # fmt: skip
    else:
        print(key)
    print(
        f"{verb} {entry.key_id} ({entry.role} on {entry.project!r}) in {path}. The key above is shown "
        "only now: store it (e.g. as RUNSTREAM_API_KEY in a secret).",
        file=sys.stderr,
    )


def _find(entries: list[keyfile.KeyEntry], key_id: str, path: Path) -> int:
    for i, e in enumerate(entries):
        if e.key_id == key_id:
            return i
    raise KeysCommandError(f"no key {key_id!r} in {path}: see `runstream keys ls --keys-file {path}`")


def _guarded(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (KeysCommandError, ConfigError) as exc:
            print(f"runstream keys: {exc}", file=sys.stderr)
            return 2

    run.__doc__ = fn.__doc__
    return run


@_guarded
def create(args: argparse.Namespace) -> int:
    """`keys create`: a new hashed entry; prints the key."""
    path = _path(args)
    entry, key = keyfile.make_entry(args.project, args.role, args.name)
    with keyfile.editing(path) as entries:
        entries.append(entry)
    _show_new(args, entry, key, path, "created")
    return 0


@_guarded
def rotate(args: argparse.Namespace) -> int:
    """`keys rotate`: a new secret for an entry (a plaintext entry becomes a hashed one, new id)."""
    path = _path(args)
    with keyfile.editing(path) as entries:
        i = _find(entries, args.key_id, path)
        old = entries[i]
        entry, key = keyfile.make_entry(
            old.project, old.role, old.name, key_id=old.key_id if old.hashed else None
        )
        entries[i] = entry
    _show_new(args, entry, key, path, "rotated" if old.hashed else f"replaced plaintext key {old.key_id} by")
    return 0


@_guarded
def revoke(args: argparse.Namespace) -> int:
    """`keys revoke`: removes an entry."""
    path = _path(args)
    with keyfile.editing(path) as entries:
        old = entries.pop(_find(entries, args.key_id, path))
    print(f"revoked {old.key_id} ({old.role} on {old.project!r}{', ' + old.name if old.name else ''})")
    return 0


@_guarded
def ls(args: argparse.Namespace) -> int:
    """`keys ls`: ids and what they may do, never secrets or hashes."""
    path = _path(args)
    entries = keyfile.load(path) if path.exists() else []
    rows = [
        {
            "key_id": e.key_id, "project": e.project, "role": e.role, "name": e.name,
            "created": dt.datetime.fromtimestamp(e.created_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
            if e.created_ms else "",
            "stored": "hashed" if e.hashed else "PLAINTEXT (rotate it)",
        }
        for e in entries
    ]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no keys in {path}; make one with `runstream keys create --project P --role ROLE`")
        return 0
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(width[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(width[c]) for c in cols).rstrip())
    return 0
