"""Regression tests for the SDK part of issue 10 (reliability defects found by review): values that
cannot travel are refused on the caller's thread, a bad entry never takes good ones down with it,
artifacts are never lost or followed out of their folder, and a server that is down or never
reached, or a spool that cannot be written, never makes finish() raise or exit hang. Each test
names the issue item it covers. The server here is the stand-in ingest server
(tests/unit/sdk_fake_ingest.py, a unit test has no real one); tests/integration/test_sdk_* use the
real `runstream server`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import grpc
import numpy as np
import pytest

import runstream
from runstream import InvalidValueError, RefusedWarning
from runstream._internal import start
from runstream._internal.buffer import SYSTEM
from runstream._internal.spool import read_records
from runstream.v1 import ingest_pb2
from tests.server_process import free_port
from tests.unit.sdk_fake_ingest import FakeIngest

REPO = Path(__file__).resolve().parents[2]


def _init(endpoint, tmp_path, **kw):
    opts = dict(
        endpoint=endpoint,
        spool_dir=str(tmp_path / "spool"),
        flush_interval_s=0.05,
        system_metrics_interval_s=0,
        capture_packages=False,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.3,
    )
    opts.update(kw)
    return runstream.init("unit", **opts)


def _spooled(run_dir: Path) -> list[ingest_pb2.IngestRequest]:
    return [
        ingest_pb2.IngestRequest.FromString(data)
        for path in sorted(run_dir.glob("*.spool"))
        for data in read_records(path)
    ]


# ---- item 1: what cannot travel is refused on the caller's thread -------------------------


def test_log_refuses_unpackable_values_steps_and_keys_and_keeps_the_good_points(fake, tmp_path):
    run = _init(fake.endpoint, tmp_path)
    for i in range(300):
        run.log({"loss": float(i)}, step=i)
    with pytest.raises(InvalidValueError, match="float64"):
        run.log({"loss": 1.0, "huge": 10**400})
    with pytest.raises(InvalidValueError, match="int64"):
        run.log({"loss": 1.0}, step=2**63)
    with pytest.raises(InvalidValueError, match="surrogate"):
        run.log({"bad\ud800": 1.0})
    with pytest.raises(InvalidValueError, match="float64"):
        run.log_system({"huge": 10**400})
    with pytest.raises(InvalidValueError):
        run.log_arrays("a", np.array([2**63], dtype=np.uint64), np.array([1.0]))
    with pytest.raises(InvalidValueError):
        run.log_arrays("a", [1], [10**400])
    with pytest.raises(InvalidValueError, match="surrogate"):
        run.log_arrays("bad\ud800", [1], [1.0])
    for i in range(300, 600):
        run.log({"loss": float(i)}, step=i)
    run.log({"big_but_fine": 2**62}, step=600)  # an int within float range is a fine metric
    assert run.finish() is True
    points = fake.points(run.id)
    assert sorted(s for k, s, _, _ in points if k == "loss") == list(range(600))
    assert ("big_but_fine", 600, float(2**62), 0) in points
    assert run.refused_count == 0
    assert len(fake.bodies("run_finish")) == 1


def test_config_summary_tags_and_names_with_lone_surrogates_are_refused_clearly(fake, tmp_path):
    with pytest.raises(InvalidValueError, match="surrogate"):
        _init(fake.endpoint, tmp_path, name="run\ud800")
    with pytest.raises(InvalidValueError, match="surrogate"):
        _init(fake.endpoint, tmp_path, tags={"t": "v\ud800"})
    run = _init(fake.endpoint, tmp_path)
    with pytest.raises(InvalidValueError, match="surrogate"):
        run.config["text"] = "bad\ud800"
    with pytest.raises(InvalidValueError, match="surrogate"):
        run.summary["bad\ud800"] = 1
    with pytest.raises(InvalidValueError, match="surrogate"):
        run.tags = ["ok", "bad\ud800"]
    with pytest.raises(InvalidValueError, match="surrogate"):
        run.name = "bad\ud800"
    with pytest.raises(InvalidValueError, match="surrogate"):
        run.use_dataset("train", "v\ud800")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InvalidValueError, match="surrogate"):
        run.log_artifact(tmp_path / "f.txt", type="model\ud800")
    run.config["fine"] = 1
    assert run.finish() is True
    assert [u.config["fine"].number for u in fake.bodies("run_update") if "fine" in u.config] == [1.0]


def test_an_entry_that_still_fails_to_pack_is_refused_alone(fake, tmp_path):
    """The worker's packer is defensive too: entries that slipped past the caller's checks (here
    put straight into the buffer) are refused and counted, the points around them are sent, and
    finish() neither raises nor loses the run_finish."""
    run = _init(fake.endpoint, tmp_path)
    now = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(200):
            run.log({"loss": float(i)}, step=i)
        run._entries.append((200, now, {"loss": 10**400}))
        run._entries.append((201, now, {"bad\ud800": 1.0, "loss": 201.0}))
        run._entries.append((2**63, now, {"loss": 1.0}))
        run._entries.append((5, now, {"sys": 10**400}, SYSTEM))
        for i in range(202, 400):
            run.log({"loss": float(i)}, step=i)
        run._entries.append((400, now, {"loss": 10**400}))  # in the very last batch
        assert run.finish() is True
    steps = sorted(s for k, s, _, _ in fake.points(run.id) if k == "loss")
    assert steps == [*range(200), 201, *range(202, 400)]
    assert run.refused_count == 5
    assert any(issubclass(w.category, RefusedWarning) for w in caught)
    assert len(fake.bodies("run_finish")) == 1


# ---- item 16: big ints travel exactly; set_seed never poisons later inits ------------------


def test_big_config_ints_travel_exactly_and_set_seed_accepts_any_int(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(start, "_seeds", {})
    run = _init(fake.endpoint, tmp_path, config={"big": 2**64 + 5, "small": 7})
    run.config["neg"] = -(2**70)
    assert runstream.set_seed(2**64 + 5) == 2**64 + 5
    assert run.finish() is True
    values = {}
    for body in [*fake.bodies("run_start"), *fake.bodies("run_update")]:
        values.update(body.config)
    assert values["big"].json == str(2**64 + 5)
    assert values["neg"].json == str(-(2**70))
    assert values["small"].number == 7.0
    assert values["seeds.seed"].json == str(2**64 + 5)
    for _ in range(2):  # later runs start fine and record the seed exactly
        later = _init(fake.endpoint, tmp_path)
        assert later.finish() is True
        starts = [b for b in fake.bodies("run_start") if b.run_id == later.id]
        assert starts[0].config["seeds.seed"].json == str(2**64 + 5)
    runstream.set_seed(-3, name="neg")  # random.seed takes negatives too
    assert start._seeds["neg"] == -3


# ---- item 17: symlinks out of an artifact folder are not followed --------------------------


def test_artifact_folder_symlinks_leading_outside_are_skipped_with_a_warning(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"weights")
    (folder / "inside_link").symlink_to(folder / "model.bin")
    (folder / "sub" / "outside_link").symlink_to(secret)
    (folder / "passwd").symlink_to("/etc/passwd")
    run = runstream.init(
        "unit", mode="offline", spool_dir=str(tmp_path / "spool"), system_metrics_interval_s=0,
        capture_packages=False,
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="outside") as caught:
        described = run.log_artifact(folder)
    message = str(caught[0].message)
    assert "passwd" in message and "sub/outside_link" in message
    assert [f["path"] for f in described["files"]] == ["inside_link", "model.bin"]
    run.finish()
    inline = [r.artifact.inline_data for r in _spooled(run.run_dir) if r.WhichOneof("body") == "artifact"]
    assert b"do not upload" not in inline and inline.count(b"weights") == 2


# ---- items 2 and 18: large artifacts are never lost, refusals are final --------------------


def test_artifact_upload_cancelled_during_backoff_is_spooled(tmp_path):
    """Server down: the upload is mostly sleeping between retries when finish() cancels it."""
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    data = os.urandom(2 << 20)
    (tmp_path / "ckpt.bin").write_bytes(data)
    run = _init(endpoint, tmp_path, reconnect_initial_s=1.0, reconnect_max_s=2.0)
    described = run.log_artifact(tmp_path / "ckpt.bin")
    time.sleep(0.5)
    with pytest.warns(RuntimeWarning, match="runstream sync"):
        assert run.finish(timeout_s=3) is False
    sha = described["files"][0]["sha256"]
    assert (run.run_dir / "blobs" / sha).read_bytes() == data
    events = [r.artifact for r in _spooled(run.run_dir) if r.WhichOneof("body") == "artifact"]
    assert [e.sha256 for e in events] == [sha]


class RefusingUploads(FakeIngest):
    """Answers every upload with INVALID_ARGUMENT, as the server does for bytes that do not match
    their declared sha256 (an artifact file changed after log_artifact)."""

    def __init__(self):
        self.uploads = 0
        super().__init__()

    def UploadArtifact(self, request_iterator, context):
        for _ in request_iterator:
            pass
        self.uploads += 1
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch")


def test_invalid_argument_from_upload_is_final_counted_and_kept(tmp_path):
    server = RefusingUploads()
    try:
        (tmp_path / "ckpt.bin").write_bytes(os.urandom(2 << 20))
        run = _init(server.endpoint, tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.log_artifact(tmp_path / "ckpt.bin")
            run.log({"loss": 1.0})
            assert run.flush(10)
            time.sleep(0.5)  # retries, if any, would happen now
            assert run.finish(timeout_s=5) is True
        assert server.uploads == 1
        assert run.refused_count == 1
        assert any(
            issubclass(w.category, RefusedWarning) and "INVALID_ARGUMENT" in str(w.message) for w in caught
        )
        refused = list(read_records(tmp_path / "spool" / run.id / f"{run.client_id}.refused"))
        assert [ingest_pb2.IngestRequest.FromString(r).artifact.path for r in refused] == ["ckpt.bin"]
        assert server.bodies("artifact") == []
    finally:
        server.stop()


# ---- item 11: a spool that cannot be written ------------------------------------------------


def test_unwritable_spool_with_memory_over_the_limit_keeps_data_and_finish_returns_false(tmp_path):
    not_a_dir = tmp_path / "spool_is_a_file"
    not_a_dir.write_text("")
    endpoint = f"127.0.0.1:{free_port()}"
    run = _init(endpoint, tmp_path, spool_dir=str(not_a_dir), max_memory_bytes=1 << 20, max_batch_points=4096)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = {f"k{i}": float(i) for i in range(10)}
        for step in range(10_000):  # ~2.6 MB packed: over the 1 MiB limit, under the 4 MiB hard cap
            run.log(row, step=step)
        assert run.flush(2) is False
        assert run.finish(timeout_s=1) is False  # never NotADirectoryError
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    at_risk = [m for m in messages if "cannot write the spool" in m]
    assert len(at_risk) == 1 and str(not_a_dir) in at_risk[0] and "points are at risk" in at_risk[0]
    assert any("could not be delivered" in m and "100000 points" in m for m in messages)
    assert run.stats["dropped"] == 0


def test_a_pipeline_that_fails_to_start_is_reported_at_finish_not_hung(tmp_path, monkeypatch):
    """init no longer waits for the worker to set the run's pipeline up (one thread hop less per
    run); a failure there must still reach the caller: finish warns and returns False."""
    from runstream._internal import pipeline

    def broken(**_):
        raise RuntimeError("stream setup broke")

    monkeypatch.setattr(pipeline, "IngestStream", broken)
    run = _init(f"127.0.0.1:{free_port()}", tmp_path)
    run.log({"loss": 1.0}, step=0)
    with pytest.raises(RuntimeError, match="stream setup broke"):
        run.stats  # noqa: B018 (the property waits for the setup and raises its error)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run.finish(timeout_s=2) is False
    assert any("stream setup broke" in str(w.message) for w in caught)
    # finish alone (nothing asked for the stream first): its coroutine raises the setup's error
    # instead of running on a pipeline that has no stream
    other = _init(f"127.0.0.1:{free_port()}", tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert other.finish(timeout_s=2) is False
    assert any("stream setup broke" in str(w.message) for w in caught), [str(w.message) for w in caught]


# ---- item 19: interpreter exit with a server never reached ----------------------------------


def test_exit_with_a_server_never_reached_spools_at_once(tmp_path):
    script = textwrap.dedent(
        f"""
        import runstream
        run = runstream.init("unit", endpoint="127.0.0.1:{free_port()}", spool_dir={str(tmp_path / "spool")!r},
                             system_metrics_interval_s=0, capture_packages=False)
        for i in range(1000):
            run.log({{"loss": float(i)}}, step=i)
        print(run.run_dir, flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50, env=env)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 15, f"exit took {elapsed:.1f}s"
    assert "never reached" in proc.stderr and "runstream sync" in proc.stderr
    requests = _spooled(Path(proc.stdout.strip()))
    assert sum(len(r.metrics.values) // 8 for r in requests) == 1000
    assert [r.WhichOneof("body") for r in requests].count("run_finish") == 1


# ---- item 11: the caller -> worker hand-off is bounded by bytes ---------------------------------


def test_tight_log_loop_keeps_the_hand_off_within_max_memory_bytes(fake, tmp_path):
    """The deque between run.log and the worker used to grow without bound (680 MB RSS with
    max_memory_bytes=1 MiB); now run.log waits briefly for the worker when it is full. Measured as
    accounted bytes (entries x the accounted size of a 10-key entry, buffer.entry_bytes)."""
    limit = 1 << 20
    run = _init(fake.endpoint, tmp_path, max_memory_bytes=limit)
    row = {f"k{i}": float(i) for i in range(10)}
    entry_bytes = 160 + 64 * len(row)
    peak = 0
    for step in range(150_000):
        run.log(row, step=step)
        if step % 64 == 0:
            peak = max(peak, len(run._entries) * entry_bytes)
    assert peak <= 2 * limit, f"{peak / limit:.1f} MiB queued for the worker"
    assert run.finish(timeout_s=60) is True
    assert len(fake.points(run.id)) == 150_000 * 10
    assert run.stats["handoff_wait_s"] >= 0


class UploadsNeedAKnownRun(FakeIngest):
    """As the real server does since artifacts are scoped per project: UploadArtifact answers
    NOT_FOUND for a run whose run_start it has not stored yet."""

    def __init__(self):
        self.not_found = 0
        super().__init__()

    def UploadArtifact(self, request_iterator, context):
        parts = list(request_iterator)
        header = parts[0].header
        if not any(b.run_id == header.run_id for b in self.bodies("run_start")):
            self.not_found += 1
            context.abort(grpc.StatusCode.NOT_FOUND, f"run {header.run_id} does not exist")
        return super().UploadArtifact(iter(parts), context)


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_large_artifact_reaches_a_server_that_needs_the_run_first(tmp_path, mode):
    """Online, the upload waits for the run_start's ack; `runstream sync` of an offline run sends
    what precedes an artifact (the run_start) before uploading its file."""
    server = UploadsNeedAKnownRun()
    try:
        data = os.urandom(2 << 20)
        (tmp_path / "ckpt.bin").write_bytes(data)
        run = _init(server.endpoint, tmp_path, mode=mode)
        sha = run.log_artifact(tmp_path / "ckpt.bin")["files"][0]["sha256"]
        assert run.finish(timeout_s=20) is True
        if mode == "offline":
            from runstream.sync import sync_paths

            sync_paths([tmp_path / "spool" / run.id], endpoint=server.endpoint, progress=False)
        assert server.blobs.get(sha) == data
        assert [e.sha256 for e in server.bodies("artifact")] == [sha]
        assert server.not_found == 0
    finally:
        server.stop()


def test_artifact_file_changed_after_log_artifact_is_refused_not_spooled(tmp_path):
    """Saving a large file into the spool (offline, or an upload cut short at finish) checks it
    against the hash log_artifact recorded: a changed file is refused and reported, never kept
    under a digest it does not have (sync would retry it forever)."""
    from runstream._internal.artifacts import artifact_entries, collect_artifact

    run = runstream.init(
        "unit", mode="offline", spool_dir=str(tmp_path / "spool"), system_metrics_interval_s=0,
        capture_packages=False,
    )  # fmt: skip
    path = tmp_path / "ckpt.bin"
    path.write_bytes(os.urandom(2 << 20))
    (up,) = [e.body for e in artifact_entries("unit", run.id, collect_artifact(path, None), None)]
    path.write_bytes(os.urandom(2 << 20))  # training goes on writing the checkpoint

    async def save():
        run._pipeline._park_blob(up)

    with pytest.warns(RefusedWarning, match="changed"):
        run._pipeline.worker.call(save())
    assert run.refused_count == 1
    assert not (run.run_dir / "blobs" / up.event.sha256).exists()
    refused = list(read_records(run.run_dir / f"{run.client_id}.refused"))
    assert [ingest_pb2.IngestRequest.FromString(r).artifact.sha256 for r in refused] == [up.event.sha256]
    run.finish()


def test_importing_runstream_first_turns_grpc_fork_support_off_unless_chosen():
    """gRPC core's fork handlers are skipped while the worker thread polls (always, during a run)
    and forked children then crashed now and then; the SDK's children never use gRPC."""
    code = "import os, runstream, grpc; print(os.environ.get('GRPC_ENABLE_FORK_SUPPORT'))"
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "false", out.stderr
    env["GRPC_ENABLE_FORK_SUPPORT"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "1", out.stderr
