"""Exactly once across a Kafka broker restart (README, Guarantees): a `runstream server` on the Kafka
bus streams acked batches; the broker is stopped (SIGTERM) mid-stream and started again on the
same ports and data folder; the client resends whatever was not acked (then, as a client that lost
its acks, everything); every point is stored exactly once (count() = count() FINAL = the points
sent, and every request recorded once).

The broker is this test's own (PrivateKafka: free ports, a data folder under tmp_path), started the
way scripts/services.sh starts the shared one (the same jars from ~/.cache/runstream, KRaft format,
then kafka.Kafka): the shared broker other tests use is never restarted."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from tests import ROOT
from tests.chdb_inspect import stored_counts
from tests.deployments import kafka_env, new_prefix
from tests.ingest_client import OpenStream, ingest, stub_for, workload
from tests.server_process import ServerProcess, free_port, wait_writer_caught_up

N_BATCHES, PER_BATCH = 40, 10_000
STOP_AT = 8  # acks before the broker is stopped
WINDOW = 4  # requests in flight on the stream
RESEND_DEADLINE_S = 240.0


def kafka_libs() -> Path:
    """The Kafka jars scripts/services.sh installed (the same version it reads from kafka-pom.xml)."""
    pom = (ROOT / "scripts/kafka-pom.xml").read_text()
    version = re.search(r"<kafka.version>(.+)</kafka.version>", pom).group(1)
    cache = Path(os.environ.get("RUNSTREAM_CACHE_DIR", Path.home() / ".cache/runstream"))
    return cache / f"kafka-{version}" / "libs"


class PrivateKafka:
    """A single-node KRaft broker for one test: its own ports and data folder, stoppable and
    restartable on both (what scripts/services.sh's start_kafka does, for a folder of our own)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port, self.controller_port = free_port(), free_port()
        self.properties = folder / "server.properties"
        self.log_path = folder / "kafka.log"
        self.proc: subprocess.Popen | None = None
        libs = kafka_libs()
        if not (libs / f"kafka_2.13-{libs.parent.name.removeprefix('kafka-')}.jar").exists():
            raise FileNotFoundError(f"no Kafka jars in {libs}: run `bash scripts/services.sh install`")
        log4j = f"-Dlog4j2.configurationFile={ROOT / 'scripts/kafka-log4j2.properties'}"
        self.java = ["java", "-Xms128m", "-Xmx512m", "-XX:+UseG1GC", log4j, "-cp", f"{libs}/*"]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def format(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(
            "process.roles=broker,controller\nnode.id=1\n"
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}\n"
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}\n"
            "controller.listener.names=CONTROLLER\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
            f"log.dirs={self.folder / 'data'}\nnum.partitions=4\n"
            "offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n"
            "auto.create.topics.enable=true\n"
        )
        cluster_id = subprocess.run(
            [*self.java, "kafka.tools.StorageTool", "random-uuid"], check=True, capture_output=True, text=True
        ).stdout.split()[-1]
        subprocess.run(
            [*self.java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.properties)],
            check=True,
            capture_output=True,
        )

    def start(self, timeout_s: float = 120) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            [*self.java, "kafka.Kafka", str(self.properties)], stdout=log, stderr=log
        )
        self.wait_answering(timeout_s)

    def wait_answering(self, timeout_s: float) -> None:
        """Until the broker lists topics (its controller is elected)."""
        from aiokafka.admin import AIOKafkaAdminClient

        async def answers() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            try:
                await admin.start()
                await admin.list_topics()
                return True
            except Exception:
                return False
            finally:
                await admin.close()

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kafka exited with {self.proc.returncode}:\n{self.log_tail()}")
            if asyncio.run(answers()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"kafka not answering after {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM: the broker's controlled shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture
def private_kafka(tmp_path):
    try:
        broker = PrivateKafka(tmp_path / "kafka")
    except FileNotFoundError as exc:
        pytest.fail(str(exc))  # the jars come with the services every integration run needs
    broker.format()
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_bus_server(tmp_path, private_kafka):
    """Ingest and the Kafka writer in one `runstream server` process, on the private broker."""
    server = ServerProcess(
        tmp_path / "server",
        extra_args=["--bus", "kafka", "--kafka-bootstrap", private_kafka.bootstrap],
        env=kafka_env(new_prefix(), RUNSTREAM_WRITER_FLUSH_INTERVAL_S="0.1"),
    ).start()
    yield server
    server.stop()


def test_broker_restart_mid_stream_then_resend_unacked_stores_every_point_once(
    private_kafka, kafka_bus_server
):
    server = kafka_bus_server
    requests = workload("restart", N_BATCHES, PER_BATCH)
    by_seq = {r.seq: r for r in requests}
    acked: set[int] = set()
    refused: dict[int, str] = {}  # seq -> why (Kafka was away): resent below
    stream = OpenStream(server, requests[:WINDOW], timeout=180)
    sent = WINDOW
    restarter: threading.Thread | None = None
    acked_before_stop = 0
    try:
        for answer in stream.responses:
            if answer.ok:
                acked.add(answer.seq)
            else:
                refused[answer.seq] = answer.message
            if restarter is None and len(acked) == STOP_AT:
                acked_before_stop = len(acked)
                private_kafka.stop()  # SIGTERM; returns once the broker exited
                # the next requests reach ingest while no broker answers; it comes back meanwhile
                for r in requests[sent : sent + WINDOW]:
                    stream.outbox.put(r)
                sent = min(sent + WINDOW, len(requests))
                restarter = threading.Thread(target=private_kafka.start)
                restarter.start()
            elif sent < len(requests):
                stream.outbox.put(requests[sent])
                sent += 1
            if len(acked) + len(refused) == sent == len(requests):
                break
    except grpc.RpcError:
        pass  # the stream may end while Kafka is away: what it did not ack is resent below
    finally:
        stream.close()
    assert restarter is not None, "the broker was stopped mid-stream"
    restarter.join()
    assert STOP_AT <= acked_before_stop < len(requests)

    # A reconnecting client resends what was not acked, on a new stream, until everything is.
    deadline = time.monotonic() + RESEND_DEADLINE_S
    while len(acked) < len(requests):
        unacked = [by_seq[s] for s in sorted(set(by_seq) - acked)]
        try:
            answers = ingest(stub_for(server), unacked, timeout=120)
            acked |= {seq for seq, a in answers.items() if a.ok}
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, (
            f"{len(requests) - len(acked)} requests never acked:\n{server.log_tail()}"
        )
        if len(acked) < len(requests):
            time.sleep(1)

    # a client that lost its acks resends everything, from before and after the restart: no-ops
    answers = ingest(stub_for(server), requests, timeout=120)
    assert all(a.ok for a in answers.values()), [a.message for a in answers.values() if not a.ok]

    wait_writer_caught_up(server, timeout_s=180)
    assert server.stop() == 0, server.log_tail()
    counts = stored_counts(server)
    total = N_BATCHES * PER_BATCH
    assert (counts.rows, counts.rows_final, counts.distinct_points, counts.summary_count) == (total,) * 4
    assert counts.requests_recorded == len(requests)
