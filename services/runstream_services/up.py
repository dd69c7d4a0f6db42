"""`runstream up` and `runstream dashboard`.

`up` starts the embedded server as a child process (chDB belongs to exactly one process, so the
dashboard never opens it: it talks to the server over gRPC), waits until it answers Health,
optionally logs the demo sweep through the real SDK, then starts the Streamlit dashboard as a
second child, prints the URLs and supervises both. Ctrl-C / SIGTERM stops the dashboard first,
then the server (which drains what is in flight). Children get SIGTERM if this process dies."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc

from runstream_services.config import ServerSettings, load_settings
from runstream_services.errors import ConfigError

DEFAULT_ENDPOINT = "127.0.0.1:7777"
SERVER_START_TIMEOUT_S = 120
DASHBOARD_START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30


class _Stop(Exception):
    """Raised in the main thread by SIGTERM / SIGINT to unwind into the shutdown path."""


def _raise_stop(signum, _frame):
    raise _Stop(signal.Signals(signum).name)


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when this process dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _spawn(
    cmd: list[str], log_path: Path | None, *, env: dict[str, str] | None = None, cwd: Path | None = None
):
    """Starts a child whose output goes to `log_path` (None: this process's stdout/stderr)."""
    log = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
    return subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def _tail(path: Path | None, lines: int = 25) -> str:
    if path is None:
        return "(see the output above)"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"runstream: {name} did not stop in {STOP_TIMEOUT_S}s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def client_endpoint(settings: ServerSettings) -> str:
    """Where local clients reach a server listening on settings.host (a wildcard means loopback)."""
    host = settings.host
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{settings.port}"


def wait_for_server(
    endpoint: str, proc: subprocess.Popen | None, log_path: Path | None, timeout_s: float
) -> None:
    from runstream.tls import Tls
    from runstream.tls import channel as tls_channel
    from runstream.v1 import ingest_pb2, ingest_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with tls_channel(endpoint, Tls.resolve()) as channel:  # TLS as $RUNSTREAM_TLS* say, like the SDK
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with code {proc.returncode} before it was ready; its log "
                    f"({log_path}):\n{_tail(log_path) if log_path else ''}"
                )
            try:
                stub.Health(ingest_pb2.HealthRequest(), timeout=2)
                return
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no healthy server at {endpoint} after {timeout_s:.0f}s ({exc.code().name})"
                    ) from None
                time.sleep(0.25)


def dashboard_command(port: int, address: str) -> list[str]:
    from runstream_dashboard import APP_PATH

    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.port", str(port),
        "--server.address", address,
    ]  # fmt: skip


def start_dashboard(endpoint: str, port: int, log_path: Path | None) -> tuple[subprocess.Popen, str]:
    """Starts Streamlit with RUNSTREAM_ENDPOINT set. The address is loopback unless
    STREAMLIT_SERVER_ADDRESS says otherwise (the Helm chart sets 0.0.0.0 in the pod)."""
    from runstream_dashboard import APP_PATH

    address = os.environ.get("STREAMLIT_SERVER_ADDRESS") or "127.0.0.1"
    env = {**os.environ, "RUNSTREAM_ENDPOINT": endpoint, "PYTHONUNBUFFERED": "1"}
    proc = _spawn(dashboard_command(port, address), log_path, env=env, cwd=APP_PATH.parent)
    shown = "127.0.0.1" if address in ("0.0.0.0", "::") else address
    return proc, f"http://{shown}:{port}"


def wait_for_dashboard(url: str, proc: subprocess.Popen, log_path: Path | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the dashboard exited with code {proc.returncode}; its log ({log_path}):\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the dashboard did not answer on {url} after {timeout_s:.0f}s:\n{_tail(log_path)}"
            )
        time.sleep(0.3)


def _server_command(args: argparse.Namespace, overrides: dict) -> list[str]:
    cmd = [sys.executable, "-m", "runstream_services.cli", "server"]
    if getattr(args, "config", None):
        cmd += ["--config", args.config]
    for key, value in overrides.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd + ["--log-level", getattr(args, "log_level", None) or "INFO"]


def _supervise(children: dict[str, tuple[subprocess.Popen, Path | None]]) -> int:
    """Blocks until a child exits (returns its code) or a stop signal arrives (returns 0)."""
    try:
        while True:
            for name, (proc, log_path) in children.items():
                if proc.poll() is not None:
                    print(
                        f"runstream: the {name} exited with code {proc.returncode}; last lines of {log_path}:",
                        file=sys.stderr,
                    )
                    print(_tail(log_path), file=sys.stderr)
                    return proc.returncode or 1
            time.sleep(0.5)
    except (_Stop, KeyboardInterrupt):
        print("\nrunstream: stopping…", file=sys.stderr)
        return 0


def main(args: argparse.Namespace, overrides: dict) -> int:
    """`runstream up`: embedded server + (demo) + dashboard, until Ctrl-C / SIGTERM."""
    try:
        settings = load_settings(overrides, config_file=getattr(args, "config", None))
    except ConfigError as exc:
        print(f"runstream up: {exc}", file=sys.stderr)
        return 2
    logs = settings.data_path / "logs"
    endpoint = client_endpoint(settings)
    server = dashboard = live = None
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(
            f"runstream: starting the server on {settings.host}:{settings.port} (data in {settings.data_path})"
        )
        server = _spawn(
            _server_command(args, overrides), logs / "server.log", env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        wait_for_server(endpoint, server, logs / "server.log", SERVER_START_TIMEOUT_S)
        children = {"server": (server, logs / "server.log")}
        if getattr(args, "demo", False):
            from runstream_services.demo import LiveRun, log_demo_sweep

            counts = log_demo_sweep(endpoint)
            print(
                "runstream: demo sweep logged ("
                + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                + ")"
            )
            live = LiveRun(endpoint).start()
        url = None
        if not getattr(args, "no_dashboard", False):
            dashboard, url = start_dashboard(endpoint, args.dashboard_port, logs / "dashboard.log")
            wait_for_dashboard(url, dashboard, logs / "dashboard.log", DASHBOARD_START_TIMEOUT_S)
            children["dashboard"] = (dashboard, logs / "dashboard.log")
        print()
        print(f"  Runstream server   {endpoint}   (RUNSTREAM_ENDPOINT={endpoint})")
        if url:
            print(f"  Dashboard          {url}")
        print(f"  Logs               {logs}")
        print("\n  Press Ctrl-C to stop.\n", flush=True)
        return _supervise(children)
    except (_Stop, KeyboardInterrupt):
        print("\nrunstream: stopping…", file=sys.stderr)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"runstream up: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the drain short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(dashboard, "dashboard")
        if live is not None:
            live.stop()
        _stop(server, "server")
        for s, handler in previous.items():
            signal.signal(s, handler)


def dashboard_main(args: argparse.Namespace) -> int:
    """`runstream dashboard`: only the dashboard, against --endpoint / $RUNSTREAM_ENDPOINT."""
    endpoint = getattr(args, "endpoint", None) or os.environ.get("RUNSTREAM_ENDPOINT") or DEFAULT_ENDPOINT
    log_path = None  # the dashboard is this command's only job: its output is ours (container logs)
    try:
        wait_for_server(endpoint, None, None, 3)
    except TimeoutError:
        print(
            f"runstream dashboard: no server answers at {endpoint} yet; the dashboard will say so until one does",
            file=sys.stderr,
        )
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    proc = None
    try:
        proc, url = start_dashboard(endpoint, args.port, log_path)
        wait_for_dashboard(url, proc, log_path, DASHBOARD_START_TIMEOUT_S)
        print(f"  Dashboard  {url}   (server {endpoint})\n  Press Ctrl-C to stop.", flush=True)
        return _supervise({"dashboard": (proc, log_path)})
    except (_Stop, KeyboardInterrupt):
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"runstream dashboard: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(proc, "dashboard")
        for s, handler in previous.items():
            signal.signal(s, handler)
