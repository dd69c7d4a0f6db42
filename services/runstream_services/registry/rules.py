"""The registry's rules, free of gRPC and SQL (unit-tested on their own): which names and aliases
are valid, which role a move needs, which artifact files a version is made of and their digest,
the current state of aliases from their move history, tag edits, and revision numbers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from runstream_services.errors import InvalidArgument, NotFound

DEFAULT_PROTECTED_ALIASES = ("production",)
MAX_NAME = 200
MAX_ALIASES_PER_VERSION = 50
MAX_TAGS = 100
MAX_TEXT = 64 * 1024  # description / reason / tag value
DEFAULT_PAGE = 1_000
MAX_PAGE = 10_000
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")  # never a number: "name:3" means version 3


def model_name(name: str) -> str:
    """The model name, or InvalidArgument saying what a name may hold."""
    if not name:
        raise InvalidArgument("model name is required")
    if len(name) > MAX_NAME or not _MODEL_NAME.match(name) or ".." in name:
        raise InvalidArgument(
            f"model name {name[:80]!r} is not valid: use letters, digits and - _ . / (starting with a "
            f"letter or digit, no '..'), at most {MAX_NAME} characters"
        )
    return name


def alias_name(alias: str) -> str:
    """The alias, or InvalidArgument (aliases start with a letter so they never read as a version)."""
    if not alias:
        raise InvalidArgument("alias is required")
    if len(alias) > MAX_NAME or not _ALIAS.match(alias):
        raise InvalidArgument(
            f"alias {alias[:80]!r} is not valid: start with a letter, then letters, digits and - _ . "
            f"(at most {MAX_NAME} characters); a number would read as a version"
        )
    return alias


def artifact_name(name: str) -> str:
    """An artifact name as run.log_artifact accepts it (1 to MAX_NAME characters, no control
    characters), or InvalidArgument."""
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise InvalidArgument(
            f"artifact name {name[:80]!r} is not valid: 1 to {MAX_NAME} characters, no control characters"
        )
    return name


def parse_ref(ref: str) -> tuple[str, int, str]:
    """A reference as (name, version, alias): "clf" -> ("clf", 0, ""), "clf:3" -> ("clf", 3, ""),
    "clf@prod" -> ("clf", 0, "prod"). A name may hold ':' when what follows is not a number."""
    if not ref:
        raise InvalidArgument("a reference is required: name, name:version or name@alias")
    if "@" in ref:
        name, _, alias = ref.rpartition("@")
        if not name:
            raise InvalidArgument(f"reference {ref[:80]!r}: use name, name:version or name@alias")
        return name, 0, alias_name(alias)
    name, sep, version = ref.rpartition(":")
    if sep and name and version.isdigit():
        if not 0 < int(version) < 2**32:
            raise InvalidArgument(f"reference {ref[:80]!r}: versions are numbered from 1")
        return name, int(version), ""
    return ref, 0, ""


def page_size(limit: int) -> int:
    """Items per page a list request asked for (0: DEFAULT_PAGE), or InvalidArgument."""
    if limit > MAX_PAGE:
        raise InvalidArgument(f"limit {limit:,} is over the limit of {MAX_PAGE:,} per page")
    return limit or DEFAULT_PAGE


def page_token(kind: str, value) -> str:
    """An opaque continuation token: which listing it belongs to, and where it stopped."""
    return base64.urlsafe_b64encode(json.dumps([kind, value]).encode()).decode()


def read_page_token(kind: str, token: str):
    """The position a page_token of listing `kind` holds (None for ""), or InvalidArgument."""
    if not token:
        return None
    try:
        got_kind, value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error):
        got_kind, value = None, None
    if got_kind != kind:
        raise InvalidArgument("page_token is not one this listing handed out; start again without it")
    return value


def text(what: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise InvalidArgument(f"{what} is {len(value):,} characters; at most {MAX_TEXT:,}")
    return value


def protected_aliases(given: Iterable[str], none: bool) -> list[str]:
    """The model's protected aliases: the given ones, else DEFAULT_PROTECTED_ALIASES (none: [])."""
    given = list(given)
    if none:
        if given:
            raise InvalidArgument("give protected_aliases or no_protected_aliases, not both")
        return []
    return sorted({alias_name(a) for a in given}) if given else list(DEFAULT_PROTECTED_ALIASES)


def role_for_alias(alias: str, protected: Iterable[str]) -> str:
    """The role a key needs to move or delete `alias` of a model protecting `protected`."""
    return "admin" if alias in set(protected) else "write"


# ---------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class ArtifactFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ChosenArtifact:
    """The files of one version of a run's artifact, and the digest that names them together."""

    name: str
    version: int
    files: tuple[ArtifactFile, ...]

    @property
    def sha256(self) -> str:
        return artifact_digest(self.files)

    def files_json(self) -> str:
        return json.dumps([{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files])


def artifact_digest(files: Iterable[ArtifactFile]) -> str:
    """One file: its own sha256 (so `sha256sum model.pt` checks it). Several: the sha256 of their
    sorted "path<TAB>sha256<LF>" lines, which changes when any file, name or byte changes."""
    files = sorted(files, key=lambda f: f.path)
    if len(files) == 1:
        return files[0].sha256
    listing = "".join(f"{f.path}\t{f.sha256}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def choose_artifact(
    rows: Iterable[tuple[str, int, str, str, int]], project: str, run_id: str, name: str, version: int
) -> ChosenArtifact:
    """From the run's artifact rows (name, version, path, sha256, size): the files of `name` at
    `version` (0: the newest version the run logged). NotFound names what the run does have."""
    rows = [r for r in rows if r[0] == name]
    if not rows:
        raise NotFound(
            f"run {run_id!r} of project {project!r} has no artifact named {name!r}; log it with "
            "run.log_artifact(path, name=...) and wait for run.flush() before registering"
        )
    versions = sorted({int(r[1]) for r in rows})
    chosen = version or versions[-1]
    if chosen not in versions:
        raise NotFound(f"run {run_id!r} has artifact {name!r} in version(s) {versions}, not {version}")
    files = {}
    for _, v, path, sha, size in rows:
        if int(v) == chosen:
            sha = sha.decode() if isinstance(sha, bytes) else sha
            files[path] = ArtifactFile(path, sha, int(size))
    return ChosenArtifact(name, chosen, tuple(files[p] for p in sorted(files)))


def metrics_json(rows: Iterable[tuple[str, float, float, float, int, int]]) -> str:
    """The metrics snapshot (key, last, min, max, count, last_step rows) as stored JSON; NaN and
    infinities are kept as strings, since JSON has no literal for them."""

    def num(x: float):
        return x if math.isfinite(x) else repr(float(x))

    return json.dumps(
        [
            {
                "key": k,
                "last": num(last),
                "min": num(lo),
                "max": num(hi),
                "count": int(c),
                "last_step": int(s),
            }
            for k, last, lo, hi, c, s in rows
        ]
    )


def metrics_from_json(data: str) -> list[dict]:
    out = []
    for m in json.loads(data or "[]"):
        out.append({k: (float(v) if k in ("last", "min", "max") else v) for k, v in m.items()})
    return out


# ---------------------------------------------------------------- aliases and edits


@dataclass(frozen=True)
class AliasMove:
    """One row of an alias's history."""

    alias: str
    to_version: int  # 0: deleted
    from_version: int
    actor: str
    reason: str
    time_ms: int
    revision: int


def current_aliases(moves: Iterable[AliasMove]) -> dict[str, int]:
    """alias -> version for the aliases that exist now: each alias's highest revision wins, and a
    winning delete (to_version 0) means the alias is gone."""
    latest: dict[str, AliasMove] = {}
    for m in moves:
        if m.alias not in latest or m.revision > latest[m.alias].revision:
            latest[m.alias] = m
    return {a: m.to_version for a, m in sorted(latest.items()) if m.to_version}


def aliases_by_version(aliases: Mapping[str, int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        out.setdefault(version, []).append(alias)
    return out


def edited_tags(
    current: Mapping[str, str], set_tags: Mapping[str, str], remove: Iterable[str]
) -> dict[str, str]:
    """The tags after an edit: removals first, then additions (a tag both removed and set is set)."""
    remove = set(remove)
    tags = {k: v for k, v in current.items() if k not in remove}
    for k, v in set_tags.items():
        if not k or len(k) > MAX_NAME:
            raise InvalidArgument(f"tag key {k[:80]!r} must be 1 to {MAX_NAME} characters")
        tags[k] = text(f"tag {k!r}", v)
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"a version may carry at most {MAX_TAGS} tags, not {len(tags)}")
    return tags


def actor_of(principal) -> str:
    """Who the audit log names: the key's id (a prefix of its sha256, safe to show), or anonymous."""
    return "anonymous" if principal is None else f"key:{principal.key_id}"


class Revisions:
    """Increasing revision numbers: unix microseconds, raised past the last one handed out, so two
    changes in one process never share a revision and later changes sort later."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last = 0

    def next(self, now_us: int | None = None) -> int:
        now_us = int(time.time() * 1_000_000) if now_us is None else now_us
        with self._lock:
            self._last = max(self._last + 1, now_us)
            return self._last
