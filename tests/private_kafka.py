"""Kafka clusters of a test's own: 1..N KRaft nodes (each broker + controller) on free loopback
ports with data folders under tmp_path, started the way scripts/services.sh starts the shared
broker (the same jars from ~/.cache/runstream, `StorageTool format`, then `kafka.Kafka`). A test
may stop, kill or restart them; the shared broker other tests use is never touched."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests import ROOT
from tests.server_process import free_port


def kafka_libs() -> Path:
    """The Kafka jars scripts/services.sh installed (the same version it reads from kafka-pom.xml)."""
    pom = (ROOT / "scripts/kafka-pom.xml").read_text()
    version = re.search(r"<kafka.version>(.+)</kafka.version>", pom).group(1)
    cache = Path(os.environ.get("RUNSTREAM_CACHE_DIR", Path.home() / ".cache/runstream"))
    libs = cache / f"kafka-{version}" / "libs"
    if not (libs / f"kafka_2.13-{version}.jar").exists():
        raise FileNotFoundError(f"no Kafka jars in {libs}: run `bash scripts/services.sh install`")
    return libs


def java_command(heap: str = "512m") -> list[str]:
    log4j = f"-Dlog4j2.configurationFile={ROOT / 'scripts/kafka-log4j2.properties'}"
    return ["java", "-Xms128m", f"-Xmx{heap}", "-XX:+UseG1GC", log4j, "-cp", f"{kafka_libs()}/*"]


class KafkaNode:
    """One KRaft node of a PrivateKafka cluster."""

    def __init__(self, folder: Path, node_id: int, java: list[str]):
        self.folder, self.node_id, self.java = folder, node_id, java
        self.port, self.controller_port = free_port(), free_port()
        self.properties = folder / "server.properties"
        self.log_path = folder / "kafka.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            [*self.java, "kafka.Kafka", str(self.properties)], stdout=log, stderr=log
        )

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM: the broker's controlled shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """kill -9: no controlled shutdown, no leadership handed over first."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class PrivateKafka:
    """A KRaft cluster of `nodes` combined broker+controller nodes. Internal topics get
    replication min(3, nodes), so a 3-node cluster survives one lost node like a production one."""

    def __init__(self, folder: Path, nodes: int = 1):
        self.folder = folder
        self.java = java_command()
        self.nodes = [KafkaNode(folder / f"node{i}", i, self.java) for i in range(1, nodes + 1)]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def format(self) -> None:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        internal_rf = min(3, len(self.nodes))
        # what `StorageTool random-uuid` prints: a random UUID, URL-safe base64 without padding
        # (one that starts with "-" would read as an option to StorageTool's argument parser)
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        formats = []
        for n in self.nodes:
            n.folder.mkdir(parents=True, exist_ok=True)
            n.properties.write_text(
                f"process.roles=broker,controller\nnode.id={n.node_id}\n"
                f"controller.quorum.voters={voters}\n"
                f"listeners=PLAINTEXT://127.0.0.1:{n.port},CONTROLLER://127.0.0.1:{n.controller_port}\n"
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{n.port}\n"
                "controller.listener.names=CONTROLLER\n"
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
                f"log.dirs={n.folder / 'data'}\nnum.partitions=4\n"
                f"offsets.topic.replication.factor={internal_rf}\n"
                f"transaction.state.log.replication.factor={internal_rf}\n"
                f"transaction.state.log.min.isr={max(1, internal_rf - 1)}\n"
                "group.initial.rebalance.delay.ms=0\nauto.create.topics.enable=true\n"
            )
            formats.append(
                subprocess.Popen(
                    [
                        *self.java,
                        "kafka.tools.StorageTool",
                        "format",
                        "-t",
                        cluster_id,
                        "-c",
                        str(n.properties),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        for n, proc in zip(self.nodes, formats, strict=True):  # one JVM each, in parallel
            out, _ = proc.communicate(timeout=120)
            if proc.returncode:
                raise RuntimeError(
                    f"formatting kafka node {n.node_id} failed:\n{out.decode(errors='replace')}"
                )

    def start(self, timeout_s: float = 150) -> None:
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                n.start()
        self.wait_answering(timeout_s)

    def wait_answering(self, timeout_s: float) -> None:
        """Until the cluster lists topics and every running node is registered as a broker."""
        from aiokafka.admin import AIOKafkaAdminClient

        running = sum(1 for n in self.nodes if n.proc and n.proc.poll() is None)

        async def answers() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            try:
                await admin.start()
                await admin.list_topics()
                return len((await admin.describe_cluster()).get("brokers", [])) >= running
            except Exception:
                return False
            finally:
                await admin.close()

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for n in self.nodes:
                if n.proc and n.proc.poll() is not None and n.proc.returncode not in (0, -9, -15, 137, 143):
                    raise RuntimeError(
                        f"kafka node {n.node_id} exited with {n.proc.returncode}:\n{n.log_tail()}"
                    )
            if asyncio.run(answers()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"kafka not answering after {timeout_s}s:\n{self.nodes[0].log_tail()}")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- node {n.node_id}\n{n.log_tail(lines)}" for n in self.nodes)
