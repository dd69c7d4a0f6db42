"""The bare install for real (README: `pip install runstream` is the SDK only, grpcio + protobuf):
this repository is pip-installed WITHOUT extras into a clean virtualenv; there, `import runstream`
works while numpy, pandas, psutil and tqdm are not importable, and an offline run writes its spool
files; then `runstream sync` from the full install (.venv) stores every point on an embedded server.

pip builds from a copy of the package sources under tmp_path (not the shared checkout, where a
build would leave build/ and egg-info behind) and uses its cache. The test is skipped only when the
install fails AND the package index does not answer, with the reason; any other install failure
fails it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import runstream
from tests import ROOT
from tests.server_process import ServerProcess

PROJECT = "bare"
STEPS = 50  # loss and acc per step
ARRAY_POINTS = 10
OPTIONAL = ("numpy", "pandas", "psutil", "tqdm")
SOURCES = ("pyproject.toml", "README.md", "client", "services", "dashboards")

OFFLINE_RUN = """
import importlib.util, json, sys
import runstream
run = runstream.init(project=sys.argv[1], mode="offline", spool_dir=sys.argv[2], config={"lr": 0.1})
for step in range(int(sys.argv[3])):
    run.log({"loss": 1.0 / (step + 1), "acc": step / 100}, step=step)
run.log_arrays("bulk", list(range(int(sys.argv[4]))), [0.5] * int(sys.argv[4]))
assert run.finish()
print(json.dumps({"run_id": run.id, "file": runstream.__file__,
                  "importable": [m for m in sys.argv[5].split(",") if importlib.util.find_spec(m)],
                  "loaded": [m for m in sys.argv[5].split(",") if m in sys.modules]}))
"""


def index_unreachable() -> str | None:
    """Why the package index cannot be reached, or None when it answers."""
    configured = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True
    ).stdout.strip()
    index = os.environ.get("PIP_INDEX_URL") or configured or "https://pypi.org/simple/"
    url = index.rstrip("/") + "/grpcio/"
    try:
        urllib.request.urlopen(url, timeout=15).close()
        return None
    except OSError as exc:
        return f"{url}: {exc}"


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A clean virtualenv with `pip install <this repo>` (no extras); its python."""
    tmp = tmp_path_factory.mktemp("bare")
    source = tmp / "src"
    source.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, source / name)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", str(source)], capture_output=True, text=True, timeout=900
    )
    if install.returncode != 0:
        why = index_unreachable()
        if why is not None:
            pytest.skip(f"cannot pip-install the bare SDK: the package index is unreachable ({why})")
        pytest.fail(
            f"pip install of the bare SDK failed:\n{install.stdout[-3000:]}\n{install.stderr[-3000:]}"
        )
    return python


def installed(python: Path) -> set[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"], check=True, capture_output=True, text=True
    ).stdout
    return {p["name"].lower().replace("_", "-") for p in json.loads(out)}


def test_the_bare_install_brings_only_grpcio_and_protobuf(bare_venv):
    # pip, setuptools: the venv's own; typing-extensions: grpcio's dependency
    assert installed(bare_venv) - {"pip", "setuptools", "wheel", "typing-extensions"} == {
        "grpcio",
        "protobuf",
        "runstream",
    }


def test_a_bare_install_logs_offline_and_the_full_install_syncs_it(bare_venv, tmp_path):
    spool = tmp_path / "spool"
    out = subprocess.run(
        [
            str(bare_venv),
            "-c",
            OFFLINE_RUN,
            PROJECT,
            str(spool),
            str(STEPS),
            str(ARRAY_POINTS),
            ",".join(OPTIONAL),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the checkout: `import runstream` must come from the venv
        env={k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RUNSTREAM_"))},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).is_relative_to(bare_venv.parent.parent), result["file"]
    assert result["importable"] == [] and result["loaded"] == []
    run_dir = spool / result["run_id"]
    spooled = [p for p in run_dir.rglob("*") if p.is_file()]
    assert spooled and any(p.stat().st_size > 0 for p in spooled), f"no spool files in {run_dir}"

    server = ServerProcess(tmp_path / "server").start()
    try:
        sync = subprocess.run(
            [str(Path(sys.executable).parent / "runstream"), "sync", "--endpoint", server.endpoint,
             "--no-progress", str(spool)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert sync.returncode == 0, sync.stdout + sync.stderr
        run = runstream.Api(server.endpoint).run(PROJECT, result["run_id"])
        assert run["state"] == "finished"
        counts = {key: m["count"] for key, m in run["metrics"].items()}
        assert counts == {"loss": STEPS, "acc": STEPS, "bulk": ARRAY_POINTS}
        assert run["config"] == {"lr": 0.1}
    finally:
        server.stop()
