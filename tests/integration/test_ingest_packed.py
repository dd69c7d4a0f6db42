"""Packed ingest requests (IngestRequest.packed): many clients' requests in one stream message,
each handled as if it had come alone and the message answered once (issue 11: the per-message
cost of gRPC is paid once per packed message). Raw gRPC against a real embedded server."""

from __future__ import annotations

import uuid

import grpc
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from tests.ingest_client import PROJECT, ingest, metric_batch, run_start, status_code, stub_for

N_CLIENTS, PER_CLIENT, POINTS = 10, 5, 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.server_process import ServerProcess

    proc = ServerProcess(tmp_path_factory.mktemp("packed")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(server):
    from runstream.api import Api

    client = Api(endpoint=server.endpoint)
    yield client
    client.close()


def _started_run(server) -> str:
    run_id = f"packed-{uuid.uuid4().hex[:8]}"
    assert ingest(stub_for(server), [run_start(1, uuid.uuid4().hex, run_id)])[1].ok
    return run_id


def _clients_requests(run_id: str) -> list[bytes]:
    """N_CLIENTS ranks of one run, PER_CLIENT metric requests each (seqs 1.. per client)."""
    out = []
    for rank in range(N_CLIENTS):
        client_id = uuid.uuid4().hex
        for i in range(PER_CLIENT):
            batch = metric_batch(run_id, i * POINTS, POINTS, rank=rank)
            out.append(pb.IngestRequest(seq=i + 1, client_id=client_id, metrics=batch).SerializeToString())
    return out


def _stored(api, run_id: str) -> tuple[int, int]:
    """(points, distinct (rank, key, step)) of the run as queries see them."""
    hist = api.history(run_id, project=PROJECT)
    return len(hist), len(hist[["rank", "key", "step"]].drop_duplicates())


def test_one_packed_message_stores_every_request_once_and_is_answered_once(server, api):
    run_id = _started_run(server)
    inner = _clients_requests(run_id)
    message = pb.IngestRequest(seq=7, packed=inner)
    answers = ingest(stub_for(server), [message])
    assert answers[7].ok and not answers[7].packed_refused
    assert answers[7].points_accepted == len(inner) * POINTS
    expected = N_CLIENTS * PER_CLIENT * POINTS
    assert _stored(api, run_id) == (expected, expected)
    # the same message again (a relay resending what it did not see acked): nothing doubles
    again = ingest(stub_for(server), [pb.IngestRequest(seq=1, packed=inner)])
    assert again[1].ok
    assert _stored(api, run_id) == (expected, expected)


def test_refused_packed_requests_are_named_by_position_and_the_others_are_stored(server, api):
    run_id = _started_run(server)
    inner = _clients_requests(run_id)[:6]
    unknown_run = pb.IngestRequest(
        seq=1, client_id=uuid.uuid4().hex, metrics=metric_batch("no-such-run", 0, POINTS)
    ).SerializeToString()
    nested = pb.IngestRequest(seq=1, client_id="x", packed=[inner[0]]).SerializeToString()
    messages = [*inner[:2], b"\xff\xff\xff", *inner[2:4], unknown_run, nested, *inner[4:]]
    answers = ingest(stub_for(server), [pb.IngestRequest(seq=3, packed=messages)])
    answer = answers[3]
    assert not answer.ok and "3 of the 9 packed requests were refused" in answer.message
    refused = {r.index: r for r in answer.packed_refused}
    assert sorted(refused) == [2, 5, 6]
    assert status_code(refused[2].code) == grpc.StatusCode.INVALID_ARGUMENT and "decode" in refused[2].message
    assert status_code(refused[5].code) in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
    assert "nested" in refused[6].message
    assert answer.points_accepted == 6 * POINTS
    assert _stored(api, run_id) == (6 * POINTS, 6 * POINTS)


def test_a_packed_message_with_a_body_of_its_own_is_refused_whole(server, api):
    run_id = _started_run(server)
    inner = _clients_requests(run_id)[:2]
    message = pb.IngestRequest(seq=4, client_id="c", metrics=metric_batch(run_id, 0, POINTS), packed=inner)
    answer = ingest(stub_for(server), [message])[4]
    assert not answer.ok and status_code(answer.code) == grpc.StatusCode.INVALID_ARGUMENT
    assert "both a body and packed requests" in answer.message
    assert _stored(api, run_id) == (0, 0)


def test_packed_messages_on_a_batched_acks_stream_are_acked_by_their_own_seqs(server, api):
    run_id = _started_run(server)
    inner = _clients_requests(run_id)
    messages = [pb.IngestRequest(seq=10 + k, packed=inner[k * 10 : (k + 1) * 10]) for k in range(5)]
    stub = stub_for(server)
    acked = []
    for response in stub.Ingest(iter(messages), metadata=(("x-runstream-acks", "batched"),), timeout=60):
        assert response.ok, response.message
        acked += [response.seq, *response.also_ok]
    assert sorted(acked) == [10, 11, 12, 13, 14]
    expected = N_CLIENTS * PER_CLIENT * POINTS
    assert _stored(api, run_id) == (expected, expected)


def test_whole_runs_in_one_packed_message_are_applied_in_each_clients_order(server, api):
    """run_start, metrics and run_finish of several clients interleaved in one message: each
    client's requests apply in its order (the metrics are admitted behind their run_start)."""
    prefix = f"whole-{uuid.uuid4().hex[:6]}"
    per_client = []
    for c in range(8):
        client_id, run_id = uuid.uuid4().hex, f"{prefix}-{c}"
        finish = pb.RunFinish(project=PROJECT, run_id=run_id, state=types_pb2.RUN_STATE_FINISHED)
        per_client.append(
            [
                run_start(1, client_id, run_id).SerializeToString(),
                pb.IngestRequest(
                    seq=2, client_id=client_id, metrics=metric_batch(run_id, 0, POINTS)
                ).SerializeToString(),
                pb.IngestRequest(seq=3, client_id=client_id, run_finish=finish).SerializeToString(),
            ]
        )
    interleaved = [reqs[i] for i in range(3) for reqs in per_client]
    answer = ingest(stub_for(server), [pb.IngestRequest(seq=1, packed=interleaved)])[1]
    assert answer.ok, answer.message
    runs = api.runs(project=PROJECT)
    mine = runs[runs["run_id"].str.startswith(prefix)]
    assert len(mine) == 8 and set(mine["state"]) == {"finished"}
    for c in range(8):
        assert _stored(api, f"{prefix}-{c}") == (POINTS, POINTS)
