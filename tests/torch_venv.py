"""The PyTorch virtualenv of the Lightning and Transformers integration tests (made by
scripts/torch_venv.sh; torch on PyPI is the CUDA build, ~3.5 GB, so it is not in the dev extra):
where it is, and running a script in it against a test's server, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import ROOT

STAMP = ".runstream-torch-venv"  # written by scripts/torch_venv.sh once the install succeeded


def venv_dir() -> Path:
    explicit = os.environ.get("RUNSTREAM_TORCH_VENV")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("RUNSTREAM_CACHE_DIR") or Path.home() / ".cache" / "runstream")
    return cache / "torch-venv"


def missing_reason() -> str | None:
    """Why the tests cannot run (naming the script that makes the venv), or None when it is there."""
    venv = venv_dir()
    if (venv / "bin" / "python").exists() and (venv / STAMP).exists():
        return None
    return (
        f"no PyTorch venv at {venv}: make it with `bash scripts/torch_venv.sh` (~4.5 min, 5.7 GB; "
        "scripts/test.sh makes it when RUNSTREAM_TORCH_TESTS=1)"
    )


#: for a test module's pytestmark: skips before any fixture starts a server
needs_torch_venv = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


def python_or_skip() -> Path:
    """The venv's python; skips the test when there is none."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    return venv_dir() / "bin" / "python"


def run_script(
    script: Path, args: list[str], endpoint: str, tmp_path: Path, timeout: float = 240, **env: str
) -> subprocess.CompletedProcess:
    """Runs `script` with the venv's python in tmp_path, the server named by RUNSTREAM_ENDPOINT and
    this checkout's SDK first on the path (the venv's editable install may point at another one)."""
    python = python_or_skip()
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "client"),
        "RUNSTREAM_ENDPOINT": endpoint,
        "RUNSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
        "RUNSTREAM_SYSTEM_METRICS_INTERVAL_S": "0",
        "RUNSTREAM_CAPTURE_PACKAGES": "false",
        "OMP_NUM_THREADS": "1",  # tiny models; the test machine's cores are shared
        **env,
    }
    return subprocess.run(
        [str(python), str(script), *args], cwd=tmp_path, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def last_json(done: subprocess.CompletedProcess) -> dict:
    """The JSON object a child script printed last, after checking that it succeeded."""
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
