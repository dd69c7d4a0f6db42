"""`runstream import wandb` against runs written by the real wandb SDK in offline mode (a child
process with WANDB_MODE=offline: no W&B server, nothing leaves the machine) and a real embedded
Runstream server: config, summary, tags, notes, group, every history point with its step and
time, the run's files and a logged artifact with their sha256, the exit state; a second import
adds nothing; a corrupt log is refused with the file and offset named while the other runs go on."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import runstream
from tests.integration.import_helpers import (
    artifact_files,
    history_points,
    import_command,
    import_env,
    run_import,
)

pytest.importorskip("wandb", reason="wandb is in the dev extra")

WRITER = textwrap.dedent(
    """
    import json, sys, wandb
    out = {}
    for i, (name, fail) in enumerate((("first", False), ("second", True))):
        run = wandb.init(project="wb proj", name=name, group="sweep-1", job_type="train", notes=f"notes {i}",
                         tags=["baseline", f"t{i}"], config={"lr": 0.1 * (i + 1), "opt": {"name": "adam"}})
        for step in range(200):
            run.log({"loss": 1.0 / (step + 1) + i, "acc": step / 200, "val/loss": 0.5 + i}, step=step)
        run.log({"loss": 0.001, "caption": "not a number"}, step=200)
        run.summary["best_acc"] = 0.99 - i
        with open(f"weights-{i}.bin", "wb") as f:
            f.write(bytes(range(256)) * (4096 + i))
        run.save(f"weights-{i}.bin", policy="now")
        art = wandb.Artifact(f"dataset-{i}", type="dataset")
        with open(f"data-{i}.csv", "w") as f:
            f.write("a,b\\n1,2\\n")
        art.add_file(f"data-{i}.csv")
        run.log_artifact(art)
        out[run.id] = {"name": name, "fail": fail}
        run.finish(exit_code=1 if fail else 0)
    json.dump(out, open(sys.argv[1], "w"))
    """
)


def write_offline_runs(tmp_path) -> dict:
    work = tmp_path / "wandb-work"
    work.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(work),
           "WANDB_CACHE_DIR": str(work / "cache"), "WANDB_CONFIG_DIR": str(work / "config"),
           "WANDB_DATA_DIR": str(work / "data")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(work / "truth.json")], cwd=work, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "truth.json").read_text()) | {"_dir": str(work / "wandb")}


def test_wandb_offline_runs_import_once(embedded_server, tmp_path):
    truth = write_offline_runs(tmp_path)
    folder = truth.pop("_dir")
    first = run_import(embedded_server.endpoint, tmp_path, "wandb", folder)
    assert (first["imported"], first["failed"]) == (2, 0), first["out"]
    with runstream.Api(embedded_server.endpoint) as api:
        for i, (wid, src) in enumerate(truth.items()):
            run = api.run("wb-proj", f"wandb-{wid}")
            assert run["name"] == src["name"] and run["group"] == "sweep-1" and run["notes"] == f"notes {i}"
            assert run["state"] == ("failed" if src["fail"] else "finished")
            assert {"baseline", f"t{i}"} <= set(run["tags"]) and run["tags"]["wandb.job_type"] == "train"
            assert run["config"] == {"lr": 0.1 * (i + 1), "opt.name": "adam"}
            assert run["summary"] == {
                "best_acc": 0.99 - i
            }  # history keys' last values are metrics, not summary
            got = history_points(api, "wb-proj", f"wandb-{wid}")
            assert sorted(got) == ["acc", "loss", "val/loss"]  # the caption is text: not a metric
            assert [(s, v) for s, _, v in got["loss"]] == [(s, 1.0 / (s + 1) + i) for s in range(200)] + [
                (200, 0.001)
            ]
            assert [s for s, _, _ in got["acc"]] == list(range(200))
            times = [t for _, t, _ in got["loss"]]
            assert times == sorted(times) and run["start_ms"] <= times[0] <= run["end_ms"]
            files = artifact_files(run)
            weights = bytes(range(256)) * (4096 + i)
            assert files[f"weights-{i}.bin/weights-{i}.bin"] == hashlib.sha256(weights).hexdigest()
            assert files[f"dataset-{i}/data-{i}.csv"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
        again = run_import(embedded_server.endpoint, tmp_path, "wandb", folder)
        assert (again["skipped"], again["points"]) == (2, 0), again["out"]
        for wid in truth:
            artifact_files(api.run("wb-proj", f"wandb-{wid}"))  # still one version of each artifact


def test_a_corrupt_wandb_log_is_refused_and_the_other_runs_go_on(embedded_server, tmp_path):
    truth = write_offline_runs(tmp_path)
    folder = truth.pop("_dir")
    logs = sorted(p for p in Path(folder).glob("offline-run-*/run-*.wandb"))
    data = bytearray(logs[0].read_bytes())
    # a byte of the first record's data (after the 7-byte file header and its 7-byte record
    # header): a byte in a block's unchecked tail or zero padding (the middle of the file, before)
    # went unnoticed now and then, depending on the run ids' lengths
    data[7 + 7 + 1] ^= 0xFF
    logs[0].write_bytes(bytes(data))
    done = subprocess.run(
        import_command(embedded_server.endpoint, "wandb", folder), capture_output=True, text=True, timeout=300,
        env=import_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "CRC mismatch" in done.stderr and str(logs[0]) in done.stderr
    assert "1 imported" in done.stdout and "1 failed" in done.stdout
