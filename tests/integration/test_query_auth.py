"""QueryService authorization on a real `runstream server` (a child process, auth required, an
api_keys_file): a project's read key reads that project through every query RPC and gets
PERMISSION_DENIED (never data) for another project's; GetHistory without a project answers a run
the key may not read as NOT_FOUND, exactly as a run that does not exist; ListProjects lists only
the key's projects; a read key cannot write (UploadArtifact, Ingest); a missing or unknown key is
UNAUTHENTICATED on every RPC; the admin key ('*') reaches every project.

Both projects hold a run "shared" (same id) and a run of their own; project B's values are offset
by B_OFFSET, so any B point in an answer to an A key is visible."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import query_pb2, query_pb2_grpc
from tests.ingest_client import metric_batch, run_start, status_code, stub_for
from tests.server_process import ServerProcess

A, B = "team-a", "team-b"
B_OFFSET = 1_000_000  # every value B stores is at least this; A's are below
POINTS = 40  # per run, keys loss/acc
KEYS = {
    "read-a": {"project": A, "role": "read"},
    "write-a": {"project": A, "role": "write"},
    "read-b": {"project": B, "role": "read"},
    "admin": {"project": "*", "role": "admin"},
}
OWN_RUN = {A: "run-a", B: "run-b"}
ARTIFACT = {A: b"team a's weights " * 64, B: b"team b's secret weights " * 64}


def bearer(key: str | None) -> list[tuple[str, str]]:
    return [] if key is None else [("authorization", f"Bearer {key}")]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(stub, project: str, run_id: str, data: bytes, key: str | None) -> pb.UploadArtifactResponse:
    header = pb.UploadHeader(project=project, run_id=run_id, sha256=sha(data), size=len(data))
    parts = [pb.UploadArtifactRequest(header=header), pb.UploadArtifactRequest(chunk=data)]
    return stub.UploadArtifact(iter(parts), metadata=bearer(key), timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: the checks read, or write only artifact bytes no manifest names."""
    tmp = tmp_path_factory.mktemp("query_auth")
    keys = tmp / "keys.json"
    keys.write_text(json.dumps(KEYS))
    env = {"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys)}
    process = ServerProcess(tmp / "server", env=env).start()
    try:
        seed(stub_for(process))
        yield process
    finally:
        process.stop()


def seed(ingest) -> None:
    """Runs "shared" and OWN_RUN[project] in each project, POINTS points each, and an artifact on
    the own run: A with A's write key, B with the admin key."""
    for project, key in ((A, "write-a"), (B, "admin")):
        cid = uuid.uuid4().hex
        starts = [
            run_start(1, cid, "shared", project=project),
            run_start(2, cid, OWN_RUN[project], project=project),
        ]
        acks = list(ingest.Ingest(iter(starts), metadata=bearer(key), timeout=60))
        assert all(a.ok for a in acks), acks
        offset, own = (B_OFFSET if project == B else 0), OWN_RUN[project]
        assert not upload(ingest, project, own, ARTIFACT[project], key).already_present
        event = pb.ArtifactEvent(project=project, run_id=own, name="model", type="model", path="model.bin",
                                 sha256=sha(ARTIFACT[project]), size=len(ARTIFACT[project]), version_tag="v1")  # fmt: skip
        rest = [
            pb.IngestRequest(seq=3, client_id=cid, metrics=metric_batch("shared", offset, POINTS, project=project)),
            pb.IngestRequest(seq=4, client_id=cid, metrics=metric_batch(own, offset, POINTS, project=project)),
            pb.IngestRequest(seq=5, client_id=cid, artifact=event),
        ]  # fmt: skip
        acks = list(ingest.Ingest(iter(rest), metadata=bearer(key), timeout=60))
        assert all(a.ok for a in acks), acks


@pytest.fixture(scope="module")
def query(server):
    channel = grpc.insecure_channel(server.endpoint)
    yield query_pb2_grpc.QueryServiceStub(channel)
    channel.close()


# ---- one reader per project-scoped RPC: what the answer says about whose data it holds ----------


def values_of(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, "<f8")


def projects_in_values(values: np.ndarray) -> set[str]:
    return {B if v >= B_OFFSET else A for v in values}


@dataclass(frozen=True)
class Read:
    """A project-scoped read: `call(stub, project, key)` returns the set of projects whose data the
    answer holds (empty: an empty answer)."""

    name: str
    call: Callable[[query_pb2_grpc.QueryServiceStub, str, str | None], set[str]]


def _search(stub, project, key):
    answer = stub.SearchRuns(query_pb2.SearchRunsRequest(project=project), metadata=bearer(key), timeout=30)
    assert {r.run_id for r in answer.runs} == {"shared", OWN_RUN[project]}
    return {r.project for r in answer.runs}


def _get_run(stub, project, key):
    answer = stub.GetRun(
        query_pb2.GetRunRequest(project=project, run_id=OWN_RUN[project]), metadata=bearer(key), timeout=30
    )
    assert [a.sha256 for a in answer.run.artifacts] == [sha(ARTIFACT[project])]
    return {answer.run.project} | projects_in_values(np.array([m.last for m in answer.run.metrics]))


def _series(stub, project, key):
    request = query_pb2.GetMetricSeriesRequest(
        project=project, run_ids=["shared", OWN_RUN[project]], keys=["loss"]
    )
    answer = stub.GetMetricSeries(request, metadata=bearer(key), timeout=30)
    assert len(answer.series) == 2
    return projects_in_values(np.concatenate([values_of(s.y) for s in answer.series]))


def _history(stub, project, key):
    request = query_pb2.GetHistoryRequest(project=project, run_id="shared")
    pages = list(stub.GetHistory(request, metadata=bearer(key), timeout=30))
    values = np.concatenate([values_of(p.values) for p in pages])
    assert len(values) == POINTS
    return projects_in_values(values)


def _history_page(stub, project, key):
    query = query_pb2.GetHistoryRequest(project=project, run_id="shared")
    answer = stub.GetHistoryPage(
        query_pb2.GetHistoryPageRequest(query=query), metadata=bearer(key), timeout=30
    )
    assert len(values_of(answer.page.values)) == POINTS and not answer.HasField("next")
    return projects_in_values(values_of(answer.page.values))


def _keys(stub, project, key):
    answer = stub.ListKeys(query_pb2.ListKeysRequest(project=project), metadata=bearer(key), timeout=30)
    assert sorted(answer.metric_keys) == ["acc", "loss"]
    return {project}  # keys carry no project: reaching them at all is the access


def _download(stub, project, key):
    request = query_pb2.DownloadArtifactRequest(
        project=project, run_id=OWN_RUN[project], sha256=sha(ARTIFACT[project])
    )
    data = b"".join(c.chunk for c in stub.DownloadArtifact(request, metadata=bearer(key), timeout=30))
    return {p for p, blob in ARTIFACT.items() if blob == data}


READS = [
    Read("SearchRuns", _search),
    Read("GetRun", _get_run),
    Read("GetMetricSeries", _series),
    Read("GetHistory", _history),
    Read("GetHistoryPage", _history_page),
    Read("ListKeys", _keys),
    Read("DownloadArtifact", _download),
]
READ_IDS = [r.name for r in READS]


def refused(call: Callable[[], object]) -> grpc.StatusCode:
    """The status of a call that must fail; a call that answers fails the test."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


@pytest.mark.parametrize("read", READS, ids=READ_IDS)
@pytest.mark.parametrize(("key", "own", "other"), [("read-a", A, B), ("write-a", A, B), ("read-b", B, A)])
def test_a_project_key_reads_its_project_and_is_denied_the_other(query, read, key, own, other):
    assert read.call(query, own, key) == {own}
    assert refused(lambda: read.call(query, other, key)) == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("read", READS, ids=READ_IDS)
def test_the_admin_key_reads_every_project(query, read):
    assert read.call(query, A, "admin") == {A}
    assert read.call(query, B, "admin") == {B}


@pytest.mark.parametrize("key", [None, "no-such-key"], ids=["missing", "unknown"])
@pytest.mark.parametrize("read", READS, ids=READ_IDS)
def test_no_valid_key_is_unauthenticated(query, read, key):
    assert refused(lambda: read.call(query, A, key)) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("key", [None, "no-such-key"], ids=["missing", "unknown"])
def test_no_valid_key_cannot_list_projects(query, key):
    call = lambda: query.ListProjects(query_pb2.ListProjectsRequest(), metadata=bearer(key), timeout=30)  # noqa: E731
    assert refused(call) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("key", "listed"), [("read-a", [A]), ("write-a", [A]), ("read-b", [B]), ("admin", [A, B])]
)
def test_list_projects_shows_only_the_keys_projects(query, key, listed):
    answer = query.ListProjects(query_pb2.ListProjectsRequest(), metadata=bearer(key), timeout=30)
    assert sorted(p.name for p in answer.projects) == listed
    assert all(p.run_count == 2 for p in answer.projects)


def history_without_project(query, run_id: str, key: str) -> np.ndarray:
    pages = query.GetHistory(query_pb2.GetHistoryRequest(run_id=run_id), metadata=bearer(key), timeout=30)
    return np.concatenate([values_of(p.values) for p in pages] or [np.empty(0)])


def test_history_without_project_finds_only_readable_runs(query):
    # "shared" exists in both projects: A's key gets A's points, never B's
    assert projects_in_values(history_without_project(query, "shared", "read-a")) == {A}
    assert projects_in_values(history_without_project(query, "shared", "read-b")) == {B}
    # a run only B holds is NOT_FOUND for A's key, exactly as a run that does not exist
    denied = refused(lambda: history_without_project(query, OWN_RUN[B], "read-a"))
    absent = refused(lambda: history_without_project(query, "no-such-run", "read-a"))
    assert denied == absent == grpc.StatusCode.NOT_FOUND
    # the admin reads both: a unique id resolves, a shared one needs the project
    assert projects_in_values(history_without_project(query, OWN_RUN[B], "admin")) == {B}
    assert (
        refused(lambda: history_without_project(query, "shared", "admin")) == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert refused(lambda: history_without_project(query, "shared", None)) == grpc.StatusCode.UNAUTHENTICATED


def test_a_read_key_cannot_write(server):
    ingest = stub_for(server)
    data = b"a read key's upload"
    assert refused(lambda: upload(ingest, A, OWN_RUN[A], data, "read-a")) == grpc.StatusCode.PERMISSION_DENIED
    assert (
        refused(lambda: upload(ingest, B, OWN_RUN[B], data, "write-a")) == grpc.StatusCode.PERMISSION_DENIED
    )
    for no_key in (None, "no-such-key"):
        assert refused(lambda: upload(ingest, A, OWN_RUN[A], data, no_key)) == grpc.StatusCode.UNAUTHENTICATED  # noqa: B023
    cid = uuid.uuid4().hex
    requests = [
        run_start(1, cid, "read-key-run", project=A),
        pb.IngestRequest(seq=2, client_id=cid, metrics=metric_batch(OWN_RUN[A], 10_000, 4, project=A)),
    ]
    acks = {a.seq: a for a in ingest.Ingest(iter(requests), metadata=bearer("read-a"), timeout=60)}
    assert [status_code(acks[s].code) for s in (1, 2)] == [grpc.StatusCode.PERMISSION_DENIED] * 2


def test_the_admin_key_writes_every_project(server):
    ingest = stub_for(server)
    for project in (A, B):
        data = f"admin upload to {project}".encode()
        assert not upload(ingest, project, OWN_RUN[project], data, "admin").already_present
