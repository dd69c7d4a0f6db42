"""`runstream up --demo` as a user runs it: one command starts the embedded server, logs the demo
sweep through the SDK, starts the dashboard and prints the URLs; SIGTERM stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc

from tests.server_process import free_port


def _reader(stream, lines: list[str]) -> threading.Thread:
    def run():
        for line in stream:
            lines.append(line)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for_line(proc, lines: list[str], text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(text in line for line in lines):
            return
        assert proc.poll() is None, "runstream up exited early:\n" + "".join(lines)
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} line after {timeout_s}s:\n" + "".join(lines))


def test_up_demo_serves_the_sweep_and_stops_on_sigterm(tmp_path):
    from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2

    port, dash_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "runstream_services.cli", "up", "--demo",
        "--data-dir", str(tmp_path / "data"), "--port", str(port), "--metrics-port", "0",
        "--dashboard-port", str(dash_port),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RUNSTREAM_SPOOL_DIR": str(tmp_path / "spool")}
    env.pop("STREAMLIT_SERVER_ADDRESS", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    _reader(proc.stdout, lines)
    try:
        _wait_for_line(proc, lines, "Dashboard", 300)
        output = "".join(lines)
        assert f"http://127.0.0.1:{dash_port}" in output
        assert "demo sweep logged (2 failed, 21 finished, 1 killed)" in output
        with urllib.request.urlopen(f"http://127.0.0.1:{dash_port}/_stcore/health", timeout=10) as resp:
            assert resp.status == 200

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            projects = {
                p.name: p.run_count for p in stub.ListProjects(query_pb2.ListProjectsRequest()).projects
            }
            assert projects["mnist-baselines"] == 3
            assert projects["demo"] in (24, 25)  # + the live run once its start is stored
            finished = stub.SearchRuns(
                query_pb2.SearchRunsRequest(project="demo", filter='state = "finished" and group = "grid-1"')
            )
            assert finished.total == 21
            run = stub.GetRun(query_pb2.GetRunRequest(project="demo", run_id=finished.runs[0].run_id)).run
            assert run.config["optimizer.name"].text in ("adam", "sgd")
            image = next(a for a in run.artifacts if a.path.endswith(".png"))
            data = b"".join(
                c.chunk
                for c in stub.DownloadArtifact(
                    query_pb2.DownloadArtifactRequest(project="demo", run_id=run.run_id, sha256=image.sha256)
                )
            )
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) == image.size

            # the live run keeps logging while `up` runs
            deadline = time.monotonic() + 60
            live = []
            while time.monotonic() < deadline and not live:
                live = stub.SearchRuns(
                    query_pb2.SearchRunsRequest(project="demo", filter='group = "live"')
                ).runs
                time.sleep(1)
            assert live and live[0].state == types_pb2.RUN_STATE_RUNNING
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, "".join(lines)
    assert "stopping" in "".join(lines)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=2)
            raise AssertionError("the server still listens after runstream up stopped")
        except grpc.FutureTimeoutError:
            pass
