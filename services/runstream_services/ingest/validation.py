"""Checks every ingest request before it is accepted. Each refusal says what is wrong and how
to fix it; nothing here touches storage (run existence is checked by the ingest service)."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from runstream import states
from runstream.v1 import ingest_pb2, types_pb2
from runstream_services.bus.base import BodyKind
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument

NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"
_NAME = re.compile(rf"^{NAME_PATTERN}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")

MAX_KEY_CHARS = 256
MAX_TEXT_CHARS = 64 * 1024
MAX_JSON_CHARS = 1024 * 1024
MAX_MAP_ENTRIES = 10_000
MAX_ARTIFACT_NAME_CHARS = 128
MAX_ARTIFACT_PATH_CHARS = 1024
MAX_RANK = 65_535
MAX_TAGS_PER_REQUEST = 1_000
# RunContext: what the SDK captures at init, bounded so one run cannot bloat the runs table and
# every writer's run cache (the SDK truncates git diffs to 256 KiB by default)
MAX_GIT_DIFF_CHARS = 1024 * 1024
MAX_PACKAGES = 5_000
MAX_CONTEXT_LIST_ITEMS = 1_024  # gpus, command words, seeds
MAX_CONTEXT_FIELD_CHARS = 256  # host, user, os, cpu, branch, commit, python version, env name
MAX_CONTEXT_TEXT_CHARS = 4096  # git_remote, one command word


def _wire_names(names) -> str:
    """State names as the proto spells them, for refusals: 'RUN_STATE_FINISHED, ... or ...'."""
    wire = [f"RUN_STATE_{name.upper()}" for name in sorted(names, key=states.state_number)]
    return ", ".join(wire[:-1]) + " or " + wire[-1]


_FINISH_CHOICES = _wire_names(states.FINISH_STATES)


@dataclass(frozen=True)
class Accepted:
    """What a valid request is about."""

    kind: BodyKind
    project: str
    run_id: str
    points: int = 0  # metric points, for metric batches


#: names and config/summary key sets known to pass (every request names its project and run, and
#: a team's runs repeat their config keys); each set starts over when full
MAX_CHECKED_NAMES = 65_536  # ~100 bytes each
MAX_CHECKED_VALUE_KEYS = 4096
_CHECKED_NAMES: set[str] = set()
_CHECKED_VALUE_KEYS: set[frozenset[str]] = set()


def _remember(checked: set, item, limit: int) -> None:
    if len(checked) >= limit:
        checked.clear()
    checked.add(item)


_CHECKED_CLIENTS: set[str] = set()  # client ids known to pass validate_request's check


def check_name(what: str, value: str) -> None:
    """Project and run names: letters, digits, '.', '_', '-'; 1 to 64 characters; not only dots."""
    if value in _CHECKED_NAMES:
        return
    if not value:
        raise InvalidArgument(f"{what} is empty: give a {what} matching {NAME_PATTERN}")
    if not _NAME.match(value) or set(value) == {"."}:
        raise InvalidArgument(
            f"{what} {value[:80]!r} is not allowed: use 1 to 64 of A-Z a-z 0-9 . _ - (not only dots)"
        )
    _remember(_CHECKED_NAMES, value, MAX_CHECKED_NAMES)


def check_key(what: str, key: str) -> None:
    """Metric, config, summary and tag keys: 1 to 256 characters, no control characters."""
    if not key:
        raise InvalidArgument(f"{what} has an empty key: every key needs at least one character")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(
            f"{what} key {key[:40]!r}... is {len(key)} characters; the limit is {MAX_KEY_CHARS}"
        )
    if _CONTROL.search(key):
        raise InvalidArgument(
            f"{what} key {key[:80]!r} holds control characters (NUL, newline, ...): remove them"
        )


def check_value(what: str, key: str, value: types_pb2.Value) -> None:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(f"{what} {key!r} has no value: set one of number, text, flag or json")
    if kind == "text" and len(value.text) > MAX_TEXT_CHARS:
        raise InvalidArgument(
            f"{what} {key!r} is a text of {len(value.text)} characters; the limit is {MAX_TEXT_CHARS} "
            "(log large content as an artifact)"
        )
    if kind == "json":
        if len(value.json) > MAX_JSON_CHARS:
            raise InvalidArgument(
                f"{what} {key!r} is {len(value.json)} characters of JSON; the limit is {MAX_JSON_CHARS}"
            )
        try:
            json.loads(value.json)
        except ValueError as exc:
            raise InvalidArgument(
                f"{what} {key!r} is not valid JSON ({exc}): encode it with json.dumps"
            ) from None
        except RecursionError:
            raise InvalidArgument(f"{what} {key!r} is JSON nested too deeply to decode: flatten it") from None


def check_values(what: str, values) -> None:
    if len(values) > MAX_MAP_ENTRIES:
        raise InvalidArgument(f"{what} has {len(values)} entries; the limit is {MAX_MAP_ENTRIES} per request")
    if not values:
        return
    keys = frozenset(values)
    if keys not in _CHECKED_VALUE_KEYS:
        for key in keys:
            check_key(what, key)
        _remember(_CHECKED_VALUE_KEYS, keys, MAX_CHECKED_VALUE_KEYS)
    for key, value in values.items():
        check_value(what, key, value)


def check_tags(tags) -> None:
    if len(tags) > MAX_TAGS_PER_REQUEST:
        raise InvalidArgument(
            f"{len(tags)} tags in one request; the limit is {MAX_TAGS_PER_REQUEST}: "
            "tags label a run, log many values as config or summary"
        )
    for key, value in tags.items():
        check_key("tag", key)
        if len(value) > MAX_TEXT_CHARS:
            raise InvalidArgument(
                f"tag {key!r} has a value of {len(value)} characters; limit {MAX_TEXT_CHARS}"
            )


def _check_text(what: str, value: str, limit: int = MAX_TEXT_CHARS) -> None:
    if len(value) > limit:
        raise InvalidArgument(f"{what} is {len(value)} characters; the limit is {limit}")


def _check_line(what: str, value: str, limit: int = MAX_CONTEXT_FIELD_CHARS) -> None:
    """A one-line label (host, user, ...): bounded, no control characters."""
    _check_text(what, value, limit)
    if _CONTROL.search(value):
        raise InvalidArgument(
            f"{what} {value[:80]!r} holds control characters (NUL, newline, ...): remove them"
        )


def check_context(ctx: types_pb2.RunContext) -> None:
    """The run context the SDK captured: bounded sizes and counts, one-line labels. A process's
    runs send the same context (host, command, packages...), so one that passed is remembered by
    its bytes (~80 us per check with a hundred packages; a refusal is not remembered). The bytes
    are the message's as parsed, not sorted (deterministic=True took 2.5x as long): a context sent
    with its map in another order is only checked again."""
    _check_context_bytes(ctx.SerializeToString())


@lru_cache(maxsize=64)  # entries hold a context (a git diff may be ~256 KiB)
def _check_context_bytes(raw: bytes) -> None:
    ctx = types_pb2.RunContext.FromString(raw)
    for name in ("git_commit", "git_branch", "python_version", "host", "os", "cpu", "env_name", "user"):
        _check_line(f"context {name}", getattr(ctx, name))
    _check_line("context git_remote", ctx.git_remote, MAX_CONTEXT_TEXT_CHARS)
    _check_text("context git_diff", ctx.git_diff, MAX_GIT_DIFF_CHARS)
    if len(ctx.packages) > MAX_PACKAGES:
        raise InvalidArgument(
            f"context lists {len(ctx.packages)} packages; the limit is {MAX_PACKAGES}: capture fewer "
            "(runstream.init(capture_packages=False))"
        )
    for package, version in ctx.packages.items():
        _check_line("context package", package)
        _check_line(f"context package {package!r} version", version)
    for what, items in (("gpus", ctx.gpus), ("command", ctx.command), ("seeds", ctx.seeds)):
        if len(items) > MAX_CONTEXT_LIST_ITEMS:
            raise InvalidArgument(
                f"context {what} has {len(items)} entries; the limit is {MAX_CONTEXT_LIST_ITEMS}"
            )
    for gpu in ctx.gpus:
        _check_line("context gpu", gpu)
    for word in ctx.command:
        _check_text("context command word", word, MAX_CONTEXT_TEXT_CHARS)
    for seed in ctx.seeds:
        check_key("seed", seed)
    if ctx.world_size < 0:
        raise InvalidArgument(f"context world_size {ctx.world_size} is negative")


def check_config_size(what: str, msg, settings: ServerSettings) -> None:
    """A run_start / run_update (config, summary, context, tags, notes) must fit well under the
    transport limit: above it the request could never be delivered, and would be resent forever."""
    size = msg.ByteSize()
    limit = settings.config_limit_bytes
    if size > limit:
        raise InvalidArgument(
            f"{what} is {size} bytes (config, summary, context, tags, notes); the limit is "
            f"max_config_bytes = {limit}: log large values as artifacts"
        )


def check_time_ms(what: str, value: int) -> None:
    if value < 0:
        raise InvalidArgument(f"{what} = {value} is negative: send unix time in milliseconds")


def check_rank(rank: int) -> None:
    if rank > MAX_RANK:
        raise InvalidArgument(f"rank {rank} is out of range: ranks go from 0 to {MAX_RANK}")


_METRIC_KINDS = frozenset(types_pb2.MetricKind.values())
MAX_CHECKED_KEY_LISTS = 4096  # key lists known to pass check_key (the set starts over when full)
_CHECKED_KEY_LISTS: set[tuple[str, ...]] = set()


def metric_batch_points(batch: ingest_pb2.MetricBatch, max_points: int) -> int:
    """Validates a columnar batch and returns its number of points. An empty key_index is allowed
    when the batch has exactly one key (every point uses it); empty times_ms means 'now'. Each
    bytes field is read once (every read copies it out of the message): this runs per request."""
    keys = batch.keys
    if not keys:
        raise InvalidArgument("metric batch has no keys: list the metric names in `keys`")
    if len(keys) > 65_536:
        raise InvalidArgument(f"metric batch has {len(keys)} keys; key_index is uint16, so at most 65536")
    names = tuple(keys)
    if names not in _CHECKED_KEY_LISTS:  # a rank sends the same keys in every batch
        for key in keys:
            check_key("metric", key)
        if len(_CHECKED_KEY_LISTS) >= MAX_CHECKED_KEY_LISTS:
            _CHECKED_KEY_LISTS.clear()
        _CHECKED_KEY_LISTS.add(names)
    steps, values, times_ms, key_index = batch.steps, batch.values, batch.times_ms, batch.key_index
    for field, length, item in (
        ("steps", len(steps), 8), ("values", len(values), 8), ("times_ms", len(times_ms), 8),
        ("key_index", len(key_index), 2),
    ):  # fmt: skip
        if length % item:
            raise InvalidArgument(
                f"metric batch `{field}` is {length} bytes, not a multiple of {item}: pack it as "
                f"{'uint16' if item == 2 else 'int64/float64'} little-endian (numpy .astype('<...').tobytes())"
            )
    n = len(steps) // 8
    if n == 0:
        raise InvalidArgument("metric batch has no points: send at least one step/value")
    if len(values) // 8 != n:
        raise InvalidArgument(
            f"metric batch has {n} steps but {len(values) // 8} values: send one value per step"
        )
    if times_ms and len(times_ms) // 8 != n:
        raise InvalidArgument(
            f"metric batch has {n} steps but {len(times_ms) // 8} times: send one time per step or none"
        )
    if key_index:
        if len(key_index) // 2 != n:
            raise InvalidArgument(
                f"metric batch has {n} steps but {len(key_index) // 2} key indexes: send one per step"
            )
        if names_each_key_once(key_index, n):
            top = n - 1  # each key once, in order: one step of n metrics (a rank's usual batch)
        elif grid_rows(key_index, n, len(keys)):
            top = len(keys) - 1  # rows of every key in order: an SDK flush of several steps
        elif n <= 64:  # numpy's fixed cost is larger than a small batch
            top = max(struct.unpack(f"<{n}H", key_index))
        else:
            top = int(np.frombuffer(key_index, "<u2").max())
        if top >= len(keys):
            raise InvalidArgument(
                f"metric batch key_index refers to key {top} but only {len(keys)} keys are listed"
            )
    elif len(keys) != 1:
        raise InvalidArgument("metric batch has several keys but no key_index: send one key index per point")
    if n > max_points:
        raise InvalidArgument(
            f"metric batch has {n} points; the server takes at most {max_points} per batch: split it"
        )
    if batch.kind not in _METRIC_KINDS:
        raise InvalidArgument(f"metric batch kind {batch.kind} is unknown: use USER or SYSTEM")
    check_rank(batch.rank)
    return n


#: key_index of n points naming keys 0..n-1 once each, in order, for n up to 128
_EACH_KEY_ONCE = [np.arange(n, dtype="<u2").tobytes() for n in range(129)]


def names_each_key_once(key_index: bytes, n: int) -> bool:
    """True when a batch's n points name keys 0..n-1 once each, in order: one step of n metrics,
    a rank's usual batch (ingest's key check and the writer's replaced-points check both skip
    their per-point work for it). A bytes compare; False past 128 points."""
    return n < len(_EACH_KEY_ONCE) and key_index == _EACH_KEY_ONCE[n]


def grid_rows(key_index: bytes, n: int, keys: int) -> int:
    """How many rows of keys 0..keys-1 in order a batch's n key indexes are (an SDK flush of
    several steps of the same metrics), 0 when they are not such a grid. A bytes compare."""
    if not 0 < keys < len(_EACH_KEY_ONCE) or n % keys:
        return 0
    rows = n // keys
    return rows if key_index == _EACH_KEY_ONCE[keys] * rows else 0


def check_artifact_path(path: str) -> None:
    """A relative path inside an artifact. Refuses what could escape or confuse a folder layout."""
    if not path:
        raise InvalidArgument(
            "artifact path is empty: give the file's relative path, e.g. 'model/weights.pt'"
        )
    if len(path) > MAX_ARTIFACT_PATH_CHARS:
        raise InvalidArgument(
            f"artifact path is {len(path)} characters; the limit is {MAX_ARTIFACT_PATH_CHARS}"
        )
    if "\x00" in path or _CONTROL.search(path):
        raise InvalidArgument(f"artifact path {path[:80]!r} holds NUL or control characters: remove them")
    if "\\" in path:
        raise InvalidArgument(f"artifact path {path[:80]!r} holds a backslash: use '/' between folders")
    if path.startswith("/") or _DRIVE.match(path):
        raise InvalidArgument(
            f"artifact path {path[:80]!r} is absolute: give a path relative to the artifact"
        )
    parts = path.split("/")
    if any(p == ".." for p in parts):
        raise InvalidArgument(f"artifact path {path[:80]!r} contains '..': paths may not leave the artifact")
    if any(p in ("", ".") for p in parts):
        raise InvalidArgument(f"artifact path {path[:80]!r} has an empty or '.' part: normalize it")


def check_artifact_name(name: str) -> None:
    if not name:
        raise InvalidArgument("artifact name is empty: name it, e.g. 'model'")
    if len(name) > MAX_ARTIFACT_NAME_CHARS:
        raise InvalidArgument(
            f"artifact name is {len(name)} characters; the limit is {MAX_ARTIFACT_NAME_CHARS}"
        )
    if _CONTROL.search(name) or "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidArgument(
            f"artifact name {name[:80]!r} is not allowed: no '/', '\\', control characters, '.' or '..'"
        )


def check_sha256(value: str) -> None:
    if not _SHA256.match(value):
        raise InvalidArgument(
            f"sha256 {value[:80]!r} is not 64 hex digits: send hashlib.sha256(data).hexdigest()"
        )


def check_artifact(event: ingest_pb2.ArtifactEvent, settings: ServerSettings) -> None:
    check_artifact_name(event.name)
    check_artifact_path(event.path)
    check_sha256(event.sha256)
    _check_text("artifact type", event.type, MAX_KEY_CHARS)
    _check_text("artifact version_tag", event.version_tag, MAX_KEY_CHARS)
    if len(event.inline_data) > settings.max_inline_artifact_bytes:
        raise InvalidArgument(
            f"inline artifact data is {len(event.inline_data)} bytes; the limit is "
            f"{settings.max_inline_artifact_bytes}: upload it with UploadArtifact and send only the manifest"
        )
    if event.inline_data or event.size == 0:  # the bytes are here: they must be what the manifest says
        if len(event.inline_data) != event.size:
            raise InvalidArgument(
                f"artifact {event.path!r} says size {event.size} but carries {len(event.inline_data)} bytes"
            )
        digest = hashlib.sha256(event.inline_data).hexdigest()
        if digest != event.sha256.lower():
            raise InvalidArgument(
                f"artifact {event.path!r}: the inline bytes hash to sha256 {digest}, not the declared "
                f"{event.sha256.lower()}: send hashlib.sha256(data).hexdigest() of the bytes sent"
            )


def validate_request(
    req: ingest_pb2.IngestRequest, settings: ServerSettings, wire_bytes: int | None = None
) -> Accepted:
    """Checks one request's shape and limits; raises InvalidArgument with the fix. `wire_bytes`:
    the request's size as received, when known; a body within the config limit because the whole
    request is needs no size of its own (~10 us for a run_start with a hundred packages)."""
    sized = wire_bytes is not None and wire_bytes <= settings.config_limit_bytes
    body = req.WhichOneof("body")
    if body is None:
        raise InvalidArgument(
            f"request {req.seq} has no body: set one of run_start, run_update, run_finish, metrics, artifact, "
            "media, console"
        )
    if not req.client_id:
        raise InvalidArgument("request has no client_id: set a uuid per SDK process (the idempotency key)")
    client_id = req.client_id
    if client_id not in _CHECKED_CLIENTS:
        if len(client_id) > 128 or _CONTROL.search(client_id):
            raise InvalidArgument("client_id must be at most 128 printable characters (a uuid)")
        _remember(_CHECKED_CLIENTS, client_id, MAX_CHECKED_NAMES)
    msg = getattr(req, body)
    check_name("project", msg.project)
    check_name("run_id", msg.run_id)
    if body == "run_start":
        if not sized:
            check_config_size("run_start", msg, settings)
        check_context(msg.context)
        _check_text("run name", msg.name, MAX_KEY_CHARS)
        _check_text("run group", msg.group, MAX_KEY_CHARS)
        _check_text("job_type", msg.job_type, MAX_KEY_CHARS)
        _check_text("notes", msg.notes)
        check_tags(msg.tags)
        check_values("config", msg.config)
        check_time_ms("start_ms", msg.start_ms)
        check_rank(msg.rank)
        return Accepted("run_start", msg.project, msg.run_id)
    if body == "run_update":
        if not sized:
            check_config_size("run_update", msg, settings)
        check_values("config", msg.config)
        check_values("summary", msg.summary)
        check_tags(msg.tags)
        if len(msg.remove_tags) > MAX_TAGS_PER_REQUEST:
            raise InvalidArgument(
                f"{len(msg.remove_tags)} tags to remove; the limit is {MAX_TAGS_PER_REQUEST}"
            )
        for key in msg.remove_tags:
            check_key("tag", key)
        _check_text("notes", msg.notes)
        _check_text("run name", msg.name, MAX_KEY_CHARS)
        check_time_ms("heartbeat_ms", msg.heartbeat_ms)
        for ds in msg.datasets:
            if not ds.name:
                raise InvalidArgument("dataset reference has no name: name every dataset")
            for field in ("name", "version", "uri"):
                _check_text(f"dataset {field}", getattr(ds, field), 4096)
        return Accepted("run_update", msg.project, msg.run_id)
    if body == "run_finish":
        if states.STATE_NAMES.get(msg.state) not in states.FINISH_STATES:
            raise InvalidArgument(
                f"run_finish state {types_pb2.RunState.Name(msg.state) if msg.state in states.STATE_NAMES else msg.state}"
                f" is not allowed: use {_FINISH_CHOICES}"
            )
        check_time_ms("end_ms", msg.end_ms)
        check_rank(msg.rank)
        return Accepted("run_finish", msg.project, msg.run_id)
    if body == "metrics":
        points = metric_batch_points(msg, settings.max_batch_points)
        return Accepted("metrics", msg.project, msg.run_id, points)
    if body == "media":
        from runstream_services.ingest.media_validation import check_media  # imports this module

        check_media(msg, settings)
        return Accepted("media", msg.project, msg.run_id)
    if body == "console":
        from runstream_services.ingest.console_validation import check_console  # imports this module

        check_console(msg)
        return Accepted("console", msg.project, msg.run_id)
    check_artifact(msg, settings)
    return Accepted("artifact", msg.project, msg.run_id)
