"""Shared by the importer tests: `runstream import ...` as a child process (as a user runs it), and
reading back what a run holds on the server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import runstream
from tests import ROOT

SUMMARY = re.compile(
    r"runs: (\d+) imported, (\d+) resumed, (\d+) skipped, (\d+) failed; ([\d,]+) points sent"
)


def import_env(tmp_path: Path) -> dict:
    return {**os.environ, "RUNSTREAM_SPOOL_DIR": str(tmp_path / "import-spool"), "PYTHONPATH": str(ROOT)}


def import_command(endpoint: str, source: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "runstream_services.cli", "import", source, *args, "--endpoint", endpoint,
            "--no-progress"]  # fmt: skip


def run_import(endpoint: str, tmp_path: Path, source: str, *args: str, timeout_s: float = 300) -> dict:
    """Runs the import to its end; returns the counts of its summary line and its output."""
    done = subprocess.run(
        import_command(endpoint, source, *args), capture_output=True, text=True, timeout=timeout_s,
        env=import_env(tmp_path),
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    match = SUMMARY.search(done.stdout)
    assert match, out
    imported, resumed, skipped, failed, points = match.groups()
    return {
        "imported": int(imported), "resumed": int(resumed), "skipped": int(skipped), "failed": int(failed),
        "points": int(points.replace(",", "")), "out": out,
    }  # fmt: skip


def kill_after_first_run(
    endpoint: str, tmp_path: Path, source: str, *args: str, timeout_s: float = 300
) -> str:
    """Starts the import and SIGKILLs it as soon as it reports its first run done (the import of the
    next run is then under way). Returns what it printed."""
    proc = subprocess.Popen(
        import_command(endpoint, source, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=import_env(tmp_path),
    )  # fmt: skip
    lines = []
    deadline = time.monotonic() + timeout_s
    try:
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"\[1/\d+\]", line):
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the import ended before it could be killed:\n" + "".join(
        lines
    )
    return "".join(lines)


def history_points(api: runstream.Api, project: str, run_id: str) -> dict[str, list]:
    """{key: [(step, time ms, value or None for NaN)]} of every point the server holds for the run."""
    frame = api.history(run_id, project=project)
    out: dict[str, list] = {}
    for step, key, value, when in zip(frame.step, frame.key, frame.value, frame.time, strict=True):
        out.setdefault(key, []).append(
            (int(step), round(when.timestamp() * 1000), None if value != value else float(value))
        )
    return {k: sorted(v) for k, v in out.items()}


def artifact_files(run: dict) -> dict[str, str]:
    """{"name/path": sha256} of the run's artifacts; asserts each name has one version."""
    versions: dict[str, set] = {}
    files = {}
    for a in run["artifacts"]:
        versions.setdefault(a["name"], set()).add(a["version"])
        files[f"{a['name']}/{a['path']}"] = a["sha256"]
    assert all(len(v) == 1 for v in versions.values()), versions
    return files
