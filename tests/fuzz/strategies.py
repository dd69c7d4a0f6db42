"""Hypothesis strategies for the fuzz suite: Ingest and Query requests that are valid in shape
(they decode) but hostile in value, and raw frames that may not decode at all.

Hostile means what an attacker or a careless user sends: huge, negative, NaN and infinite numbers,
empty and very long strings, NUL and control characters, odd (but surrogate-free: protobuf cannot
carry lone surrogates) unicode, key_index beyond the key list, byte columns whose lengths disagree,
deeply nested JSON configs, enum numbers the proto does not define, duplicate seqs, runs that do
not exist and filters that are garbage. Fixed constants (`HOSTILE_TEXT`, ...) sit beside generated
values so the edges are hit on every run rather than by luck.

Requests aim at the fuzz project's runs (started by the harness, so accepted requests really reach
storage), a finished run, a run that does not exist, and hostile names. The seeded run (`SEEDED_PROJECT`/`SEEDED_RUN`) is never a target here: the
suite checks afterwards that nothing acked in it changed."""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from runstream.v1 import ingest_pb2 as ipb
from runstream.v1 import query_pb2 as qpb
from runstream.v1 import types_pb2 as tpb

FUZZ_PROJECT = "fuzz"
LIVE_RUNS = ("fz-0", "fz-1", "fz-2")  # started by the harness before fuzzing
FINISHED_RUN = "fz-done"  # started and finished by the harness
GHOST_RUN = "fz-ghost"  # never started
SEEDED_PROJECT = "seeded"
SEEDED_RUN = "anchor"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT32_MAX = 2**32 - 1

HOSTILE_TEXT = (
    "", " ", "\x00", "a\x00b", "\n", "\r\n", "\t", "\x1b[31m", "\x7f", "\u202e", "\ufeff", "\u200b",
    "\U0010ffff", "\U0001f4a5" * 40, "Ω" * 300, "x" * 65, "x" * 257, "y" * 4097, "z" * 65_537,
    ".", "..", "...", "/", "../../etc/passwd", "C:\\x", "a/b", "`", "'", '"', "\\",
    "' OR 1=1 --", "x'); DROP TABLE runs; --", "%(c)s", "{0}", "${jndi:x}", "<script>", "[x](javascript:1)",
    "NaN", "inf", "-0", "1e400", "9" * 40,
)  # fmt: skip
HOSTILE_INT64 = (0, 1, -1, INT64_MAX, INT64_MIN, 2**53 + 1, -(2**53) - 1, 1_700_000_000_000)
HOSTILE_FLOAT = (0.0, -0.0, float("nan"), float("inf"), float("-inf"), 5e-324, 1.7976931348623157e308, -1e308)
# Enum numbers: the defined ones and some the proto does not define (proto3 enums are open).
HOSTILE_ENUM = (0, 1, 2, 3, 4, 5, 6, 99, -1, INT32_MAX, INT32_MIN)


def hostile_text(max_size: int = 16) -> st.SearchStrategy[str]:
    """Short generated unicode (no surrogates) or one of HOSTILE_TEXT."""
    return st.one_of(st.text(max_size=max_size), st.sampled_from(HOSTILE_TEXT))


def int64s() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(HOSTILE_INT64), st.integers(INT64_MIN, INT64_MAX))


def uint64s() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from((0, 1, 2**63, UINT64_MAX)), st.integers(0, UINT64_MAX))


def uint32s() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from((0, 1, 65_535, 65_536, UINT32_MAX)), st.integers(0, UINT32_MAX))


def int32s() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from((0, -1, INT32_MAX, INT32_MIN)), st.integers(INT32_MIN, INT32_MAX))


def floats() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(HOSTILE_FLOAT), st.floats(allow_nan=True, allow_infinity=True))


def enums() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(HOSTILE_ENUM), int32s())


def projects() -> st.SearchStrategy[str]:
    return st.one_of(st.just(FUZZ_PROJECT), st.just(FUZZ_PROJECT), hostile_text())


def run_ids() -> st.SearchStrategy[str]:
    """Mostly the fuzz project's real runs, so accepted requests reach storage."""
    real = st.sampled_from((*LIVE_RUNS, FINISHED_RUN, GHOST_RUN))
    return st.one_of(real, real, real, hostile_text())


# ---------------------------------------------------------------- values and maps

_JSON_GOOD = ("[1, 2, 3]", '{"a": {"b": [null, true, 1e308]}}', '"s"', "null", "[]", "{}")
_JSON_BAD = (
    "",
    "{",
    "[1,",
    "{'a': 1}",
    "NaN",
    "Infinity",
    "1e999999",
    '"\\ud800"',
    "\x00",
    "[" * 3 + "]" * 2,
)


@st.composite
def deep_json(draw) -> str:
    """Nested arrays/objects: 2 levels to far beyond Python's recursion limit."""
    depth = draw(st.sampled_from((2, 50, 999, 1_001, 5_000, 100_000)))
    if draw(st.booleans()):
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def values() -> st.SearchStrategy[tpb.Value]:
    return st.one_of(
        st.just(tpb.Value()),  # no kind set
        floats().map(lambda x: tpb.Value(number=x)),
        hostile_text(64).map(lambda s: tpb.Value(text=s)),
        st.booleans().map(lambda b: tpb.Value(flag=b)),
        st.one_of(st.sampled_from(_JSON_GOOD + _JSON_BAD), deep_json(), st.text(max_size=32)).map(
            lambda s: tpb.Value(json=s)
        ),
    )


def value_maps(max_size: int = 4) -> st.SearchStrategy[dict[str, tpb.Value]]:
    return st.dictionaries(hostile_text(24), values(), max_size=max_size)


def text_maps(max_size: int = 4) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(hostile_text(24), hostile_text(32), max_size=max_size)


def contexts() -> st.SearchStrategy[tpb.RunContext]:
    return st.builds(
        tpb.RunContext,
        git_commit=hostile_text(),
        git_diff=hostile_text(),
        host=hostile_text(),
        packages=text_maps(),
        seeds=st.dictionaries(hostile_text(), int64s(), max_size=3),
        gpus=st.lists(hostile_text(), max_size=3),
        command=st.lists(hostile_text(), max_size=3),
        world_size=int32s(),
    )


# ---------------------------------------------------------------- request bodies


@st.composite
def metric_batches(draw) -> ipb.MetricBatch:
    """Coherent columns (n of each) with hostile values and indexes, or lengths that disagree."""
    keys = draw(st.lists(st.one_of(st.sampled_from(("loss", "acc", "a/b")), hostile_text()), max_size=5))
    n = draw(st.integers(0, 40))
    steps = draw(st.lists(int64s(), min_size=n, max_size=n))
    vals = draw(st.lists(floats(), min_size=n, max_size=n))
    times = draw(st.lists(int64s(), min_size=n, max_size=n))
    top = max(len(keys) + 2, 1)
    index = draw(st.lists(st.one_of(st.integers(0, top), st.just(65_535)), min_size=n, max_size=n))
    columns = {
        "key_index": struct.pack(f"<{n}H", *index),
        "steps": struct.pack(f"<{n}q", *steps),
        "values": struct.pack(f"<{n}d", *vals),
        "times_ms": struct.pack(f"<{n}q", *times),
    }
    for name in draw(st.sets(st.sampled_from(sorted(columns)), max_size=2)):  # mismatched lengths
        columns[name] = draw(st.one_of(st.just(b""), st.binary(max_size=33), st.just(columns[name][:-1])))
    return ipb.MetricBatch(
        project=draw(projects()), run_id=draw(run_ids()), keys=keys, rank=draw(uint32s()),
        kind=draw(enums()), **columns,
    )  # fmt: skip


def run_starts() -> st.SearchStrategy[ipb.RunStart]:
    return st.builds(
        ipb.RunStart,
        project=projects(), run_id=run_ids(), name=hostile_text(), group=hostile_text(),
        job_type=hostile_text(), tags=text_maps(), notes=hostile_text(), config=value_maps(),
        context=contexts(), start_ms=int64s(), rank=uint32s(), resume=st.booleans(),
    )  # fmt: skip


def run_updates() -> st.SearchStrategy[ipb.RunUpdate]:
    datasets = st.lists(
        st.builds(tpb.DatasetRef, name=hostile_text(), version=hostile_text(), uri=hostile_text()), max_size=3
    )
    return st.builds(
        ipb.RunUpdate,
        project=projects(), run_id=run_ids(), config=value_maps(), summary=value_maps(), tags=text_maps(),
        remove_tags=st.lists(hostile_text(), max_size=3), notes=hostile_text(), has_notes=st.booleans(),
        datasets=datasets, heartbeat_ms=int64s(), name=hostile_text(),
    )  # fmt: skip


def run_finishes() -> st.SearchStrategy[ipb.RunFinish]:
    return st.builds(
        ipb.RunFinish, project=projects(), run_id=run_ids(), state=enums(), end_ms=int64s(), rank=uint32s()
    )


_SHA_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256(b"")


def artifacts() -> st.SearchStrategy[ipb.ArtifactEvent]:
    sha = st.one_of(st.just(_SHA_EMPTY), st.just("0" * 64), st.just("G" * 64), hostile_text())
    return st.builds(
        ipb.ArtifactEvent,
        project=projects(), run_id=run_ids(), name=hostile_text(), type=hostile_text(),
        path=hostile_text(), sha256=sha, size=uint64s(), inline_data=st.binary(max_size=64),
        version_tag=hostile_text(),
    )  # fmt: skip


def media() -> st.SearchStrategy[ipb.MediaEvent]:
    sha = st.one_of(st.just(_SHA_EMPTY), st.just("0" * 64), st.just(""), hostile_text())
    kinds = st.one_of(st.sampled_from(("image", "audio", "histogram", "table", "text")), hostile_text())
    return st.builds(
        ipb.MediaEvent,
        project=projects(), run_id=run_ids(), key=hostile_text(), step=int64s(), index=uint32s(),
        kind=kinds, caption=hostile_text(), sha256=sha, size=uint64s(), inline_data=st.binary(max_size=64),
        format=st.one_of(st.sampled_from(("png", "wav", "parquet")), hostile_text()), time_ms=int64s(),
        rank=uint32s(), width=uint32s(), sample_rate=uint32s(), duration_s=floats(),
        columns=st.lists(hostile_text(), max_size=3), bin_edges=st.lists(floats(), max_size=5),
        counts=st.lists(floats(), max_size=4), text=hostile_text(),
    )  # fmt: skip


@st.composite
def console_batches(draw) -> ipb.ConsoleBatch:
    """Console lines: columns mostly one item per text (sometimes not), any stream value, hostile
    texts, times and ranks."""
    n = draw(st.integers(0, 5))

    def column(items: st.SearchStrategy) -> list:
        matching = draw(st.integers(0, 4)) > 0
        return draw(st.lists(items, min_size=n, max_size=n) if matching else st.lists(items, max_size=6))

    return ipb.ConsoleBatch(
        project=draw(projects()), run_id=draw(run_ids()), rank=draw(uint32s()),
        texts=draw(st.lists(hostile_text(), min_size=n, max_size=n)), streams=column(enums()),
        line_numbers=column(uint64s()), times_ms=column(int64s()),
    )  # fmt: skip


BODIES = {
    "run_start": run_starts(),
    "run_update": run_updates(),
    "run_finish": run_finishes(),
    "metrics": metric_batches(),
    "artifact": artifacts(),
    "media": media(),
    "console": console_batches(),
}


@st.composite
def ingest_requests(draw, client_id: str, seq: int) -> ipb.IngestRequest:
    """One request: a body of any kind (or none), seq and client_id as given or hostile."""
    req = ipb.IngestRequest(
        seq=draw(st.one_of(st.just(seq), st.just(seq), uint64s())),
        client_id=draw(st.one_of(st.just(client_id), st.just(client_id), hostile_text())),
    )
    kind = draw(st.sampled_from((*BODIES, None)))
    if kind is not None:
        getattr(req, kind).CopyFrom(draw(BODIES[kind]))
    return req


@st.composite
def ingest_streams(draw, max_requests: int = 24) -> list[ipb.IngestRequest]:
    """What one stream sends: one client id, seqs mostly increasing, some duplicated or hostile."""
    client_id = draw(st.uuids()).hex
    count = draw(st.integers(1, max_requests))
    out = []
    for i in range(count):
        seq = i + 1 if not out or draw(st.integers(0, 9)) else out[-1].seq  # a duplicate now and then
        out.append(draw(ingest_requests(client_id, seq)))
    return out


# ---------------------------------------------------------------- raw frames


def _field_bytes(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (tag, varint length, bytes)."""
    out, length = bytearray([(number << 3) | 2]), len(data)
    while length >= 0x80:
        out.append((length & 0x7F) | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out) + data


@st.composite
def corrupted_frames(draw) -> bytes:
    """A valid request's bytes, then damaged: invalid UTF-8 in a string field, truncated, bytes
    flipped or inserted, or a field of the wrong wire type."""
    raw = draw(ingest_requests(draw(st.uuids()).hex, draw(st.integers(1, 1000)))).SerializeToString()
    how = draw(st.sampled_from(("utf8", "truncate", "flip", "insert", "wiretype")))
    if how == "utf8":  # client_id (2) or a nested string: last value wins, so it is what decodes
        bad = draw(
            st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\x80ok", b"\xf8\x88\x80\x80\x80"))
        )
        inner = _field_bytes(2, bad)  # run_id of any body message is field 2
        return raw + draw(
            st.sampled_from((_field_bytes(2, bad), _field_bytes(13, inner), _field_bytes(10, inner)))
        )
    if how == "truncate" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "flip" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    if how == "wiretype":
        return raw + bytes([(1 << 3) | 2, 3]) + b"abc"  # seq (a varint) sent as a string
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]


def raw_frames() -> st.SearchStrategy[bytes]:
    """Bytes for an Ingest stream: random, damaged valid requests, or intact valid requests."""
    valid = st.builds(lambda r: r.SerializeToString(), ingest_requests("raw-client", 1))
    return st.one_of(st.binary(max_size=256), corrupted_frames(), valid)


# ---------------------------------------------------------------- query requests

_FILTER_TOKENS = (
    "params.lr", "config.a.b", "metrics.loss", "metrics.loss.min", "metrics.`a b`.count", "summary.x",
    "tags.t", "state", "name", "start", "end", "heartbeat", "git_dirty", "nope", "metrics.", "params",
    "=", "==", "!=", "<>", "<", "<=", ">", ">=", "~", "in", "not", "and", "or", "(", ")", ",", "`",
    '"finished"', "'x'", '"', "'", "true", "false", "1", "-1", "0.5", "1e400", "-1e400", "nan", "inf",
    "99999999999999999999999", "-9223372036854775809", "9223372036854775808", "\x00", "\n", "💥",
)  # fmt: skip


@st.composite
def filters(draw) -> str:
    """Token soup from the filter language, deep parentheses, or arbitrary text."""
    soup = " ".join(draw(st.lists(st.sampled_from(_FILTER_TOKENS), max_size=12)))
    depth = draw(st.sampled_from((1, 70, 2_000)))
    deep = "(" * depth + "state = 'running'" + ")" * depth
    wide = " or ".join(["metrics.loss > 1"] * draw(st.sampled_from((2, 600))))
    return draw(st.sampled_from((soup, soup, soup, deep, wide, "", draw(hostile_text(64)))))


def order_bys() -> st.SearchStrategy[list[str]]:
    key = st.one_of(
        st.sampled_from(
            ("-start", "start", "-metrics.loss", "params.lr", "-", "--name", "tags.", "x" * 2_000)
        ),
        hostile_text(),
    )
    return st.one_of(st.lists(key, max_size=6), st.just(["metrics.loss"] * 600))


def _run_list() -> st.SearchStrategy[list[str]]:
    return st.one_of(st.lists(run_ids(), max_size=5), st.just([LIVE_RUNS[0]] * 2_000))


def _keys() -> st.SearchStrategy[list[str]]:
    keys = st.one_of(st.sampled_from(("loss", "acc", "a/b")), hostile_text())
    return st.one_of(st.lists(keys, max_size=5), st.just(["loss"] * 500))


QUERY_METHODS = {
    # method name -> (request strategy, response type, server-streaming?)
    "ListProjects": (st.just(qpb.ListProjectsRequest()), qpb.ListProjectsResponse, False),
    "SearchRuns": (
        st.builds(
            qpb.SearchRunsRequest, project=projects(), filter=filters(), order_by=order_bys(),
            page_size=uint32s(), page_token=hostile_text(), param_keys=_keys(), metric_keys=_keys(),
            include_config=st.booleans(),
        ),
        qpb.SearchRunsResponse, False,
    ),
    "GetRun": (st.builds(qpb.GetRunRequest, project=projects(), run_id=run_ids()), qpb.GetRunResponse, False),
    "ListKeys": (
        st.builds(qpb.ListKeysRequest, project=projects(), run_ids=_run_list()), qpb.ListKeysResponse, False
    ),
    "GetMetricSeries": (
        st.builds(
            qpb.GetMetricSeriesRequest, project=projects(), run_ids=_run_list(), keys=_keys(),
            max_points=uint32s(), downsampling=enums(), x_axis=enums(), kind=enums(), rank=int32s(),
            all_ranks=st.booleans(), x_min=floats(), x_max=floats(), has_range=st.booleans(),
        ),
        qpb.GetMetricSeriesResponse, False,
    ),
    "GetHistory": (
        st.builds(
            qpb.GetHistoryRequest, project=projects(), run_id=run_ids(), keys=_keys(), kind=enums(),
            page_size=uint32s(),
        ),
        qpb.GetHistoryResponse, True,
    ),
    "GetHistoryPage": (
        st.builds(
            qpb.GetHistoryPageRequest,
            query=st.builds(
                qpb.GetHistoryRequest, project=projects(), run_id=run_ids(), keys=_keys(), kind=enums(),
                page_size=uint32s(),
            ),
            after=st.one_of(
                st.none(), st.builds(qpb.HistoryCursor, key=hostile_text(), rank=uint32s(), step=int64s())
            ),
        ),
        qpb.GetHistoryPageResponse, False,
    ),
    "DownloadArtifact": (
        st.builds(
            qpb.DownloadArtifactRequest, project=projects(), run_id=run_ids(),
            sha256=st.one_of(st.just(_SHA_EMPTY), hostile_text()),
        ),
        qpb.DownloadArtifactResponse, True,
    ),
    "ListMedia": (
        st.builds(
            qpb.ListMediaRequest, project=projects(), run_ids=_run_list(), key=hostile_text(),
            min_step=int64s(), max_step=int64s(), has_step_range=st.booleans(), limit=uint32s(),
            keys_only=st.booleans(),
        ),
        qpb.ListMediaResponse, False,
    ),
    "DownloadMedia": (
        st.builds(
            qpb.DownloadMediaRequest, project=projects(), run_id=run_ids(),
            sha256=st.one_of(st.just(_SHA_EMPTY), hostile_text()),
        ),
        qpb.DownloadArtifactResponse, True,
    ),
    "GetConsole": (
        st.builds(
            qpb.GetConsoleRequest, project=projects(), run_id=run_ids(), ranks=st.lists(uint32s(), max_size=4),
            stream=enums(), search=st.one_of(hostile_text(), st.just("%_\\"), st.just("x" * 2_000)),
            limit=uint32s(), tail=st.booleans(), after_time_ms=int64s(), after_rank=uint32s(),
            after_line=uint64s(), has_after=st.booleans(),
        ),
        qpb.GetConsoleResponse, False,
    ),
}  # fmt: skip
