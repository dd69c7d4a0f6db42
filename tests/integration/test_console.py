"""Console capture end to end on real servers: training scripts in child processes (two ranks of
one run) print on stdout and stderr; their terminals still get every line, and the lines land in
console_lines once, in print order, with the right rank and stream; GetConsole searches them on the
server (runstream.Api.console); an opted-out run stores nothing; replayed ConsoleBatch requests are
stored once on both buses; a key of another project cannot read them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import grpc
import pytest

import runstream
from runstream.errors import ServerError
from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2
from tests import ROOT
from tests.chdb_inspect import stored
from tests.ingest_client import ingest, run_start, stub_for
from tests.server_process import ServerProcess

PROJECT = "console-it"
STEPS = 120

TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys, runstream
    endpoint, spool, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run = runstream.init(project="console-it", endpoint=endpoint, spool_dir=spool,
                         flush_interval_s=0.05, system_metrics_interval_s=0, capture_packages=False)
    print("RUN", run.id, run.rank, flush=True)
    for step in range(steps):
        print(f"rank {run.rank} step {step} loss {1.0 / (step + 1):.4f}")
        if step % 40 == 0:
            print(f"rank {run.rank} warning at step {step}", file=sys.stderr)
        if run.rank == 1 and step == 77:
            print("rank 1 found a NaN in the gradients")
        run.log({"loss": 1.0 / (step + 1)}, step=step)
    sys.stdout.write(f"rank {run.rank} done without newline")
    assert run.finish(), run.stats
    """
)


def train(server: ServerProcess, tmp_path, job: str, ranks: int, env: dict | None = None) -> list[str]:
    """Runs the script as `ranks` processes of one torchrun-style job; returns each one's stdout."""
    base = {
        **os.environ, "WORLD_SIZE": str(ranks), "TORCHELASTIC_RUN_ID": job, "PYTHONPATH": str(ROOT),
        **(env or {}),
    }  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                TRAIN_SCRIPT,
                server.endpoint,
                str(tmp_path / f"spool-{job}-{r}"),
                str(STEPS),
            ],
            env={**base, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(ranks)
    ]
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0] * ranks, results
    for r, (out, err) in enumerate(results):  # the terminal still sees everything (the tee)
        assert out.count(f"rank {r} step ") == STEPS
        assert out.endswith(f"rank {r} done without newline")
        assert err.count(f"rank {r} warning at step") == 3
    return [out for out, _ in results]


def expected_lines(rank: int) -> list[tuple[str, str]]:
    """(stream, text) of one rank's captured lines, in print order."""
    lines = []
    for step in range(STEPS):
        lines.append(("stdout", f"rank {rank} step {step} loss {1.0 / (step + 1):.4f}"))
        if step % 40 == 0:
            lines.append(("stderr", f"rank {rank} warning at step {step}"))
        if rank == 1 and step == 77:
            lines.append(("stdout", "rank 1 found a NaN in the gradients"))
    lines.append(("stdout", f"rank {rank} done without newline"))
    return lines


JOB = "consolejob"


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(tmp_path / "server").start()
    yield process
    process.stop()


def test_two_ranks_lines_land_once_in_order_and_are_searchable(server, tmp_path):
    train(server, tmp_path, JOB, ranks=2)
    run_id = f"torch-{JOB}"
    with runstream.Api(endpoint=server.endpoint) as api:
        every = list(api.iter_console(PROJECT, run_id, page_size=50))  # paged forward
        for rank in (0, 1):
            mine = [line for line in every if line.rank == rank]
            got = [(line.stream, line.text) for line in mine]
            assert got[0] == ("stdout", f"RUN {run_id} {rank}")
            assert got[1:] == expected_lines(rank)
            assert [line.line for line in mine] == list(range(len(mine)))  # print order, none missing
        assert api.console(PROJECT, run_id, rank=1) == [line for line in every if line.rank == 1]

        found = api.console(PROJECT, run_id, search="nan IN THE")  # case-insensitive substring
        assert [(f.rank, f.stream, f.text) for f in found] == [
            (1, "stdout", "rank 1 found a NaN in the gradients")
        ]
        warnings = api.console(PROJECT, run_id, search="warning", stream="stderr", rank=0)
        assert [w.text for w in warnings] == [f"rank 0 warning at step {s}" for s in (0, 40, 80)]
        assert api.console(PROJECT, run_id, search="100%_") == []  # no pattern characters
        tail = api.console(PROJECT, run_id, rank=0, tail=True, limit=3)
        assert [t.text for t in tail] == [
            f"rank 0 step {STEPS - 2} loss {1.0 / (STEPS - 1):.4f}",
            f"rank 0 step {STEPS - 1} loss {1.0 / STEPS:.4f}",
            "rank 0 done without newline",
        ]
        lines, more = api.console_page(PROJECT, run_id, limit=10)
        assert len(lines) == 10 and more
        with pytest.raises(ServerError, match="NOT_FOUND"):
            api.console(PROJECT, "no-such-run")
        with pytest.raises(ServerError, match="limit 20000 is over 10000"):
            api.console(PROJECT, run_id, limit=20_000)

    server.stop()
    per_rank = stored(
        server,
        f"SELECT rank, count(), uniqExact(client_id, line) FROM DB.console_lines WHERE run_id = '{run_id}' "
        "GROUP BY rank ORDER BY rank",
    )
    assert per_rank == [[r, 1 + len(expected_lines(r)), 1 + len(expected_lines(r))] for r in (0, 1)]


def test_an_opted_out_run_stores_no_console(server, tmp_path):
    (out,) = train(server, tmp_path, "quietjob", ranks=1, env={"RUNSTREAM_CONSOLE": "off"})
    run_id = out.split()[1]  # "RUN <id> <rank>"
    with runstream.Api(endpoint=server.endpoint) as api:
        assert api.console(PROJECT, run_id) == []
        assert api.run(PROJECT, run_id)["state"] == "finished"
    server.stop()
    assert stored(server, "SELECT count() FROM DB.console_lines") == [[0]]


def console_request(seq: int, client_id: str, run_id: str, first_line: int, n: int) -> pb.IngestRequest:
    return pb.IngestRequest(
        seq=seq,
        client_id=client_id,
        console=pb.ConsoleBatch(
            project=PROJECT, run_id=run_id, rank=0,
            streams=[types_pb2.CONSOLE_STREAM_STDOUT] * n,
            line_numbers=list(range(first_line, first_line + n)),
            times_ms=[1_700_000_000_000 + i for i in range(first_line, first_line + n)],
            texts=[f"line {i}" for i in range(first_line, first_line + n)],
        ),
    )  # fmt: skip


def test_replayed_console_requests_are_stored_once_and_bad_ones_refused(bus_server):
    cid = uuid.uuid4().hex
    requests = [run_start(1, cid, "replayed", project=PROJECT)] + [
        console_request(2 + i, cid, "replayed", i * 100, 100) for i in range(3)
    ]
    assert all(a.ok for a in ingest(stub_for(bus_server), requests).values())
    assert all(a.ok for a in ingest(stub_for(bus_server), requests).values())  # a reconnecting SDK resends
    bad = console_request(9, cid, "replayed", 0, 2)
    del bad.console.times_ms[1:]
    unknown_run = console_request(10, cid, "never-started", 0, 1)
    answers = ingest(stub_for(bus_server), [bad, unknown_run])
    assert not answers[9].ok and "2 texts but 1 times_ms" in answers[9].message
    assert not answers[10].ok and "unknown" in answers[10].message
    bus_server.wait_stored()
    with runstream.Api(endpoint=bus_server.writer.endpoint) as api:  # the query service's process
        texts = [line.text for line in api.iter_console(PROJECT, "replayed")]
    assert texts == [f"line {i}" for i in range(300)]
    bus_server.stop_after_stored()
    assert bus_server.stored("SELECT count(), uniqExact(line) FROM DB.console_lines") == [[300, 300]]


KEYS = {"read-a": {"project": PROJECT, "role": "read"}, "read-b": {"project": "other", "role": "read"}}


def test_only_keys_of_the_project_read_its_console(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({**KEYS, "write-a": {"project": PROJECT, "role": "write"}}))
    server = ServerProcess(
        tmp_path / "server", env={"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys)}
    ).start()
    try:
        cid = uuid.uuid4().hex
        requests = [run_start(1, cid, "secret", project=PROJECT), console_request(2, cid, "secret", 0, 2)]
        answers = stub_for(server).Ingest(
            iter(requests), metadata=[("authorization", "Bearer write-a")], timeout=60
        )
        assert all(a.ok for a in answers)
        stub = query_pb2_grpc.QueryServiceStub(grpc.insecure_channel(server.endpoint))
        request = query_pb2.GetConsoleRequest(project=PROJECT, run_id="secret")

        def read(key):
            metadata = [("authorization", f"Bearer {key}")] if key else []
            return stub.GetConsole(request, metadata=metadata, timeout=30)

        assert list(read("read-a").texts) == ["line 0", "line 1"]
        for key, code in (
            ("read-b", grpc.StatusCode.PERMISSION_DENIED),
            (None, grpc.StatusCode.UNAUTHENTICATED),
        ):
            with pytest.raises(grpc.RpcError) as info:
                read(key)
            assert info.value.code() == code
    finally:
        server.stop()


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, runstream
    run = runstream.init(project="console-it", id="crashed", endpoint=sys.argv[1], spool_dir=sys.argv[2],
                         flush_interval_s=0.05, system_metrics_interval_s=0, capture_packages=False)
    print("about to divide")
    1 / 0
    """
)


def test_the_traceback_of_a_crash_is_in_the_console(server, tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, server.endpoint, str(tmp_path / "spool")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 1 and "ZeroDivisionError" in child.stderr  # the terminal still has it
    with runstream.Api(endpoint=server.endpoint) as api:
        assert api.run(PROJECT, "crashed")["state"] == "failed"
        lines = api.console(PROJECT, "crashed")
    assert lines[0].text == "about to divide"
    stderr = [line.text for line in lines if line.stream == "stderr"]
    assert stderr[0] == "Traceback (most recent call last):"
    assert stderr[-1] == "ZeroDivisionError: division by zero"


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import sys, runstream
    run = runstream.init(project="console-it", id="offline-1", mode="offline", spool_dir=sys.argv[1],
                         flush_interval_s=0.05, system_metrics_interval_s=0, capture_packages=False)
    for i in range(50):
        print(f"offline line {i}")
    assert run.finish()
    print("CLIENT", run.client_id, flush=True)
    """
)


def test_an_offline_runs_console_is_synced_once(server, tmp_path):
    spool = tmp_path / "spool"
    child = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(spool)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    client_id = child.stdout.split("CLIENT ")[1].split()[0]

    def sync() -> None:
        subprocess.run(
            [sys.executable, "-m", "runstream_services.cli", "sync", str(spool / "offline-1"), "--endpoint",
             server.endpoint, "--no-progress"],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip

    sync()
    (spool / "offline-1" / f"{client_id}.synced").unlink()  # a full replay: same (client_id, seq)
    sync()
    with runstream.Api(endpoint=server.endpoint) as api:
        assert [line.text for line in api.console(PROJECT, "offline-1")] == [
            f"offline line {i}" for i in range(50)
        ]
    server.stop()
    assert stored(server, "SELECT count() FROM DB.console_lines WHERE run_id = 'offline-1'") == [[50]]
