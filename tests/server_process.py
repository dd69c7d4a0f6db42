"""Runs `runstream server` as a child process for tests: its own data folder and free ports, a
health wait, stop / kill -9 / restart, and its Prometheus /metrics. A child process (not a thread)
because chDB holds one data folder per process, and because the crash tests need a real SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_metrics(metrics_port: int) -> dict[str, float]:
    """Every sample of a /metrics page by its name with labels, e.g.
    `runstream_ingest_requests_total{status="OK"}`."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


class ServerProcess:
    def __init__(self, data_dir: Path, extra_args: list[str] | None = None, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.metrics_port = free_port()
        self.extra_args = list(extra_args or [])
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "server.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "runstream_services.cli", "server",
            "--port", str(self.port), "--metrics-port", str(self.metrics_port),
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s: float) -> None:
        from runstream.v1 import ingest_pb2, ingest_pb2_grpc

        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with grpc.insecure_channel(self.endpoint) as ch:
                    ingest_pb2_grpc.IngestServiceStub(ch).Health(ingest_pb2.HealthRequest(), timeout=2)
                    return
            except grpc.RpcError as exc:
                last = exc
                time.sleep(0.2)
        raise TimeoutError(f"server not healthy after {timeout_s}s ({last}):\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """Its /metrics now (see scrape_metrics)."""
        return scrape_metrics(self.metrics_port)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30) -> int | None:
        """Graceful: SIGTERM, wait for the drain."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        """kill -9: nothing is drained."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout_s: float = 60) -> ServerProcess:
        self.stop()
        return self.start(timeout_s)


class WriterProcess(ServerProcess):
    """A `runstream server` without ingest (no Health RPC): healthy once /metrics answers."""

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"writer exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"writer not up after {timeout_s}s:\n{self.log_tail()}")


def wait_writer_caught_up(writer: ServerProcess, timeout_s: float = 120) -> None:
    """Until the Kafka writer in `writer` has every partition assigned, knows their ends, and has
    stored and committed up to them (three times in a row: the high watermark comes with the
    fetches)."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    m: dict[str, float] = {}
    while time.monotonic() < deadline:
        m = writer.metrics()
        assigned = m.get('runstream_kafka_writer_partitions{state="assigned"}', 0)
        known = m.get('runstream_kafka_writer_partitions{state="lag_known"}', -1)
        lag = m.get("runstream_kafka_writer_lag_records_total", -1)
        streak = streak + 1 if assigned > 0 and known == assigned and lag == 0 else 0
        if streak >= 3:
            return
        time.sleep(0.5)
    raise TimeoutError(f"writer did not catch up: {m}\n{writer.log_tail()}")
