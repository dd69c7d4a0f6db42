"""The committed generated code matches what scripts/gen_protos.sh makes from proto/ now."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path):
    copy = tmp_path / "repo"
    (copy / "client/runstream/v1").mkdir(parents=True)
    shutil.copytree(ROOT / "proto", copy / "proto")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    subprocess.run(
        ["bash", str(copy / "scripts/gen_protos.sh")],
        check=True,
        capture_output=True,
        env={"PYTHON": sys.executable, "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
    )
    fresh = copy / "client/runstream/v1"
    committed = ROOT / "client/runstream/v1"
    generated = sorted(p.name for p in fresh.glob("*_pb2*"))
    assert generated, "gen_protos.sh produced nothing"
    assert generated == sorted(p.name for p in committed.glob("*_pb2*")), "run scripts/gen_protos.sh"
    stale = [n for n in generated if not filecmp.cmp(fresh / n, committed / n, shallow=False)]
    assert not stale, f"stale generated code {stale}: run scripts/gen_protos.sh and commit"
