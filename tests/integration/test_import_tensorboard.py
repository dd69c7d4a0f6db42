"""`runstream import tensorboard` against event files written by a real writer (tensorboardX's
SummaryWriter: no TensorFlow, no torch) and a real embedded Runstream server: every scalar point
lands with its step and wall time, a second import adds nothing, a corrupt record is refused with
the file and offset named."""

from __future__ import annotations

import pytest

import runstream
from tests.integration.import_helpers import history_points, run_import

tensorboardX = pytest.importorskip("tensorboardX", reason="tensorboardX is in the dev extra")
T0 = 1_750_000_000.0


def write_events(logdir) -> dict:
    """Two runs (one nested), simple_value scalars and one TF2-style tensor scalar; returns
    {run path: {tag: [(step, time ms, value)]}}."""
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboardX.proto.tensor_pb2 import TensorProto

    truth: dict = {}
    for rel, steps in (("baseline", 400), ("sweep/lr_0.1", 250)):
        writer = tensorboardX.SummaryWriter(str(logdir / rel))
        points = truth.setdefault(rel, {"loss/train": [], "acc": [], "tf2/loss": []})
        for step in range(steps):
            wall = T0 + step * 0.5
            loss, acc = 1.0 / (step + 1), step / steps
            writer.add_scalar("loss/train", loss, step, walltime=wall)
            writer.add_scalar("acc", acc, step, walltime=wall + 0.001)
            # float32 on disk: the expected values are what float32 holds
            points["loss/train"].append((step, round(wall * 1000), float(_f32(loss))))
            points["acc"].append((step, round((wall + 0.001) * 1000), float(_f32(acc))))
            if step % 10 == 0:  # tf.summary.scalar's form: a float tensor tagged with the scalars plugin
                value = Summary.Value(
                    tag="tf2/loss",
                    tensor=TensorProto(dtype=1, float_val=[loss * 2]),
                    metadata=SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars")),
                )
                writer._get_file_writer().add_summary(Summary(value=[value]), step, walltime=wall + 0.002)
                points["tf2/loss"].append((step, round((wall + 0.002) * 1000), float(_f32(loss * 2))))
        writer.add_text("notes", "not a scalar", 0)
        writer.close()
    return truth


def _f32(x: float) -> float:
    import numpy as np

    return float(np.float32(x))


def test_tensorboard_scalars_import_once_with_steps_and_wall_times(module_embedded_server, tmp_path):
    logdir = tmp_path / "tb"
    truth = write_events(logdir)
    args = ("--project", "tb-proj")
    first = run_import(module_embedded_server.endpoint, tmp_path, "tensorboard", str(logdir), *args)
    assert (first["imported"], first["failed"]) == (2, 0), first["out"]
    assert first["points"] == sum(len(p) for run in truth.values() for p in run.values())
    with runstream.Api(module_embedded_server.endpoint) as api:
        runs = api.runs("tb-proj")
        assert sorted(runs["name"]) == ["baseline", "sweep/lr_0.1"]
        for _, row in runs.iterrows():
            got = history_points(api, "tb-proj", row["run_id"])
            assert got == truth[row["name"]], row["name"]  # text summaries are not scalars: not imported
            run = api.run("tb-proj", row["run_id"])
            assert run["group"] == "tb" and run["state"] == "finished"
            times = [t for series in truth[row["name"]].values() for _, t, _ in series]
            assert (run["start_ms"], run["end_ms"]) == (min(times), max(times))  # first and last scalar
        again = run_import(module_embedded_server.endpoint, tmp_path, "tensorboard", str(logdir), *args)
        assert (again["skipped"], again["points"]) == (2, 0), again["out"]
        assert len(api.runs("tb-proj")) == 2


def test_a_run_left_half_imported_is_continued_after_its_last_stored_point(module_embedded_server, tmp_path):
    """What an interrupted import leaves: the run's first 150 points of "acc" stored, no
    fingerprint. The next import sends only the rest of that series (and the other series)."""
    from runstream.importers.core import run_id_for

    logdir = tmp_path / "tb"
    truth = write_events(logdir)
    acc = truth["baseline"]["acc"][:150]
    run = runstream.init(
        project="tb-resume", id=run_id_for("tensorboard", "baseline"), endpoint=module_embedded_server.endpoint,
        spool_dir=str(tmp_path / "spool"), system_metrics_interval_s=0, capture_packages=False,
    )  # fmt: skip
    run.log_arrays("acc", [s for s, _, _ in acc], [v for _, _, v in acc], times=[t / 1000 for _, t, _ in acc])
    assert run.finish(timeout_s=60)
    done = run_import(
        module_embedded_server.endpoint, tmp_path, "tensorboard", str(logdir), "--project", "tb-resume"
    )
    assert (done["resumed"], done["imported"], done["failed"]) == (1, 1, 0), done["out"]
    every = sum(len(p) for r in truth.values() for p in r.values())
    assert done["points"] == every - 150, done["out"]  # the 150 stored points were not sent again
    with runstream.Api(module_embedded_server.endpoint) as api:
        got = history_points(api, "tb-resume", run_id_for("tensorboard", "baseline"))
        assert got == truth["baseline"]


def test_a_corrupt_event_record_is_refused_with_file_and_offset(module_embedded_server, tmp_path):
    logdir = tmp_path / "tb"
    write_events(logdir)
    (events,) = (logdir / "baseline").glob("*tfevents*")
    data = bytearray(events.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of some record
    events.write_bytes(bytes(data))
    import subprocess

    from tests.integration.import_helpers import import_command, import_env

    done = subprocess.run(
        import_command(module_embedded_server.endpoint, "tensorboard", str(logdir), "--project", "tb-bad"),
        capture_output=True, text=True, timeout=300, env=import_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "CRC32C mismatch" in done.stderr and str(events) in done.stderr
    assert "1 imported" in done.stdout and "1 failed" in done.stdout  # the other run went on
