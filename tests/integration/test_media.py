"""Media per step on a real embedded server: the SDK logs images, audio, histograms, tables and
text over several steps next to metrics (one image over the inline limit, so it goes through the
upload path), runstream.Api reads every item back with its caption and facts and loads the bytes;
a resent request (same client and seq) and a replay from another client (as `runstream sync` of
another spool would) leave one row per item in the store; bad media is refused with a message;
another project's key reads nothing."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest

import runstream
from runstream.errors import ServerError
from runstream.v1 import ingest_pb2 as pb
from tests import deployments
from tests.chdb_inspect import stored
from tests.ingest_client import status_code, stub_for
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess

PROJECT = "vision"
STEPS = (0, 5, 10)
KEYS = {"w": {"project": PROJECT, "role": "write"}, "other": {"project": "other", "role": "read"}}


@pytest.fixture
def server(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    process = ServerProcess(
        tmp_path / "server", env={"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys)}
    ).start()
    yield process
    process.stop()


def image_at(step: int, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(step)
    return rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)


def test_every_kind_round_trips_and_replays_store_once(server, tmp_path):
    big = np.random.default_rng(7).integers(0, 256, (700, 700, 3), dtype=np.uint8)  # ~1.4 MB PNG
    tables = {}
    with runstream.init(
        project=PROJECT, name="media", api_key="w", **quick_sdk_options(server.endpoint, tmp_path)
    ) as run:
        for step in STEPS:
            t = np.linspace(0, 1, 8000, endpoint=False)
            tables[step] = pd.DataFrame(
                {"id": [1, 2, 3], "pred": ["cat", "dog", f"s{step}"], "p": [0.9, 0.5, 0.1]}
            )
            run.log(
                {
                    "loss": 1.0 / (step + 1),
                    "samples": [
                        runstream.Image(image_at(step), caption=f"first {step}"),
                        runstream.Image(
                            image_at(step + 100).astype(np.float32) / 255, caption=f"second {step}"
                        ),
                    ],
                    "speech": runstream.Audio(
                        0.5 * np.sin(2 * np.pi * (220 + step) * t), 8000, caption="tone"
                    ),
                    "weights": runstream.Histogram(
                        np.random.default_rng(step).normal(step, 1, 5000), bins=20
                    ),
                    "preds": runstream.Table(tables[step], caption=f"table {step}"),
                    "generated": runstream.Text(f"sample text at step {step}"),
                },
                step=step,
            )
        run.log({"big": runstream.Image(big, caption="large")}, step=10)
        run_id = run.id
    assert run.refused_count == 0

    api = runstream.Api(server.endpoint, api_key="w")
    keys = {k.key: k for k in api.media_keys(PROJECT, run_id)}
    assert set(keys) == {"samples", "speech", "weights", "preds", "generated", "big"}
    assert keys["samples"].kind == "image" and keys["samples"].count == 6
    assert (keys["weights"].min_step, keys["weights"].max_step) == (0, 10)

    samples = api.media(PROJECT, run_id, "samples")
    assert [(m.step, m.index) for m in samples] == [(s, i) for s in STEPS for i in (0, 1)]
    assert samples[2].caption == "first 5" and (samples[2].width, samples[2].height) == (20, 16)
    assert np.array_equal(samples[2].load(), image_at(5))
    assert np.array_equal(samples[3].load(), image_at(105))  # floats in [0, 1] scaled back exactly

    first4, truncated = api.media_page(PROJECT, run_id, "samples", limit=4)
    assert [(m.step, m.index) for m in first4] == [(0, 0), (0, 1), (5, 0), (5, 1)] and truncated
    assert api.media_page(PROJECT, run_id, "samples", limit=6)[1] is False
    for bad in ({"limit": 10_001}, {"steps": (5, 1)}):
        with pytest.raises(ServerError) as refused:
            api.media_page(PROJECT, run_id, "samples", **bad)
        assert refused.value.code == "INVALID_ARGUMENT"
    (big_item,) = api.media(PROJECT, run_id, "big")
    assert big_item.size > 1024 * 1024  # over the inline limit: uploaded first
    assert np.array_equal(big_item.load(), big)

    audio = api.media(PROJECT, run_id, "speech", steps=(5, 5))
    assert [m.step for m in audio] == [5]
    samples_5, rate = audio[0].load()
    assert rate == 8000 and samples_5.shape == (8000, 1) and audio[0].duration_s == 1.0
    assert abs(float(np.abs(samples_5).max()) - 0.5) < 1e-3

    hists = api.media(PROJECT, run_id, "weights")
    counts, edges = hists[-1].load()
    assert counts.sum() == 5000 and len(edges) == 21 and 8 < edges[counts.argmax()] < 12

    table = api.media(PROJECT, run_id, "preds", steps=(10, 10))[0]
    assert table.rows == 3 and table.columns == ("id", "pred", "p") and table.caption == "table 10"
    pd.testing.assert_frame_equal(table.load(), tables[10])
    assert [m.load() for m in api.media(PROJECT, run_id, "generated")] == [
        f"sample text at step {s}" for s in STEPS
    ]
    loss = api.history(run_id, keys=["loss"], project=PROJECT)  # numbers in the same log call: metrics
    assert loss["step"].tolist() == list(STEPS) and loss["value"].tolist() == [1.0, 1 / 6, 1 / 11]

    # a key of another project reads nothing
    with pytest.raises(ServerError) as denied:
        runstream.Api(server.endpoint, api_key="other").media(PROJECT, run_id, "samples")
    assert denied.value.code == "PERMISSION_DENIED"

    # replays: the same request resent, and the same item from another client; bad media refused
    item = pb.MediaEvent(
        project=PROJECT, run_id=run_id, key="generated", step=5, kind="text", text="replayed"
    )
    client = uuid.uuid4().hex
    auth = [("authorization", "Bearer w")]
    stub = stub_for(server)
    first = [pb.IngestRequest(seq=1, client_id=client, media=item)]
    bad = pb.IngestRequest(seq=2, client_id=client, media=pb.MediaEvent(
        project=PROJECT, run_id=run_id, key="h", step=1, kind="histogram", counts=[1, 2], bin_edges=[0, 1]))  # fmt: skip
    answers = {a.seq: a for a in stub.Ingest(iter([*first, bad]), metadata=auth, timeout=60)}
    assert answers[1].ok and not answers[2].ok
    assert status_code(answers[2].code).name == "INVALID_ARGUMENT" and "bin edges" in answers[2].message
    assert all(a.ok for a in stub.Ingest(iter(first), metadata=auth, timeout=60))  # resent
    other = [pb.IngestRequest(seq=7, client_id=uuid.uuid4().hex, media=item)]
    assert all(a.ok for a in stub.Ingest(iter(other), metadata=auth, timeout=60))
    texts = api.media(PROJECT, run_id, "generated")
    assert [m.text for m in texts] == ["sample text at step 0", "replayed", "sample text at step 10"]
    api.close()

    server.stop()
    (final,) = stored(server, f"SELECT count() FROM DB.media FINAL WHERE run_id = '{run_id}'")
    assert final[0] == 6 + 3 * 4 + 1  # every item once as read
    (replayed,) = stored(
        server,
        f"SELECT count() FROM DB.media WHERE run_id = '{run_id}' AND key = 'generated' AND text = 'replayed'",
    )
    # as stored, before any merge: the first send and the other client's copy; the resend of the
    # same (client, seq) was skipped by the writer (it would be a third row)
    assert replayed[0] in (1, 2)


def test_raw_media_requests_are_checked(server):
    client = uuid.uuid4().hex
    stub = stub_for(server)
    auth = [("authorization", "Bearer w")]
    run_id = "raw-media"
    png = runstream.Image(image_at(1)).data
    import hashlib

    reqs = [
        pb.IngestRequest(seq=1, client_id=client, run_start=pb.RunStart(project=PROJECT, run_id=run_id)),
        # declared digest without the bytes uploaded first
        pb.IngestRequest(seq=2, client_id=client, media=pb.MediaEvent(
            project=PROJECT, run_id=run_id, key="img", kind="image", format="png",
            sha256=hashlib.sha256(b"nothing").hexdigest(), size=7)),
        # inline bytes that are not what the digest says
        pb.IngestRequest(seq=3, client_id=client, media=pb.MediaEvent(
            project=PROJECT, run_id=run_id, key="img", kind="image", format="png",
            sha256="0" * 64, size=len(png), inline_data=png)),
        pb.IngestRequest(seq=4, client_id=client, media=pb.MediaEvent(
            project=PROJECT, run_id=run_id, key="img", kind="video", format="mp4")),
        pb.IngestRequest(seq=5, client_id=client, media=pb.MediaEvent(
            project=PROJECT, run_id=run_id, key="img", kind="image", format="png",
            sha256=hashlib.sha256(png).hexdigest(), size=len(png), inline_data=png, caption="ok")),
    ]  # fmt: skip
    answers = {a.seq: a for a in stub.Ingest(iter(reqs), metadata=auth, timeout=60)}
    assert answers[1].ok and answers[5].ok
    assert status_code(answers[2].code).name == "NOT_FOUND" and "upload them first" in answers[2].message
    assert status_code(answers[3].code).name == "INVALID_ARGUMENT" and "hash to" in answers[3].message
    assert status_code(answers[4].code).name == "INVALID_ARGUMENT" and "kind 'video'" in answers[4].message
    with runstream.Api(server.endpoint, api_key="w") as api:
        (item,) = api.media(PROJECT, run_id, "img")
        assert item.caption == "ok" and np.array_equal(item.load(), image_at(1))
        with pytest.raises(ServerError) as missing:
            api.media_bytes(PROJECT, run_id, "ab" * 32)
        assert missing.value.code == "NOT_FOUND"
        with pytest.raises(ServerError) as empty:
            api.media(PROJECT, [], "img")
        assert empty.value.code == "INVALID_ARGUMENT"
    with (
        runstream.Api(server.endpoint, api_key="other") as other,
        runstream.Api(server.endpoint, api_key="") as anon,
    ):
        for api, code in ((other, "PERMISSION_DENIED"), (anon, "UNAUTHENTICATED")):
            for call in (
                lambda api=api: api.media_keys(PROJECT, run_id),
                lambda api=api: api.media_bytes(PROJECT, run_id, item.sha256),
            ):
                with pytest.raises(ServerError) as denied:
                    call()
                assert denied.value.code == code


@pytest.fixture(params=deployments.BUS_MODES)
def bus_server(request, tmp_path):
    """Embedded, and Kafka with artifacts in MinIO (deployments.kafka_single: the bytes an ingest
    process receives must be where the writer and the query service look)."""
    if request.param == "embedded":
        deployment = deployments.embedded(tmp_path)
    else:
        deployment = deployments.kafka_single(tmp_path, request.getfixturevalue("services"))
    yield deployment
    deployment.close()


def test_media_through_each_bus_is_stored_once(bus_server, tmp_path):
    """Embedded and Kafka (the Kafka writer, artifacts in MinIO): inline and uploaded media reach
    the store and read back; a request sent twice on one client is one row as stored."""
    big = np.random.default_rng(3).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    with runstream.init(project="bus-media", **quick_sdk_options(bus_server.endpoint, tmp_path)) as run:
        for step in (1, 2):
            run.log(
                {"img": runstream.Image(image_at(step), caption=f"s{step}"), "acc": 0.5 * step}, step=step
            )
        run.log(
            {"big": runstream.Image(big), "h": runstream.Histogram(bin_edges=[0, 1, 2], counts=[3, 4])},
            step=3,
        )
    assert run.refused_count == 0
    client = uuid.uuid4().hex
    item = pb.MediaEvent(project="bus-media", run_id=run.id, key="note", step=3, kind="text", text="twice")
    request = pb.IngestRequest(seq=1, client_id=client, media=item)
    for _ in range(2):
        assert all(a.ok for a in stub_for(bus_server).Ingest(iter([request]), timeout=60))
    bus_server.wait_stored()
    with runstream.Api(bus_server.writer.endpoint) as api:
        keys = {k.key: k.count for k in api.media_keys("bus-media", run.id)}
        assert keys == {"img": 2, "big": 1, "h": 1, "note": 1}
        assert [m.caption for m in api.media("bus-media", run.id, "img")] == ["s1", "s2"]
        assert np.array_equal(api.media("bus-media", run.id, "big")[0].load(), big)
        assert api.media("bus-media", run.id, "h")[0].counts == (3.0, 4.0)
    bus_server.stop_after_stored()
    (rows,) = bus_server.stored(f"SELECT count() FROM DB.media WHERE run_id = '{run.id}' AND key = 'note'")
    assert rows[0] == 1


def test_offline_media_then_sync_twice_stores_once(tmp_path):
    """An offline run keeps media in its spool (an item over the inline limit as a blob);
    `runstream sync` uploads it, a second full replay adds nothing."""
    import subprocess
    import sys

    server = ServerProcess(tmp_path / "server").start()
    try:
        big = np.random.default_rng(9).integers(0, 256, (700, 700, 3), dtype=np.uint8)
        opts = quick_sdk_options(server.endpoint, tmp_path, mode="offline")
        run = runstream.init(project="offline-media", **opts)
        for step in (1, 2):
            run.log(
                {"img": runstream.Image(image_at(step), caption=f"s{step}"), "t": runstream.Text(str(step))},
                step,
            )
        run.log({"big": runstream.Image(big)}, step=3)
        assert run.finish()
        run_dir = tmp_path / "spool" / run.id
        assert len(list((run_dir / "blobs").iterdir())) == 1  # the large image's bytes

        def sync():
            out = subprocess.run(
                [sys.executable, "-m", "runstream_services.cli", "sync", str(run_dir), "--endpoint", server.endpoint, "--no-progress"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr

        sync()
        (run_dir / f"{run.client_id}.synced").unlink()  # a full replay: the same (client_id, seq)
        sync()
        with runstream.Api(server.endpoint) as api:
            assert {k.key: k.count for k in api.media_keys("offline-media", run.id)} == {
                "img": 2,
                "t": 2,
                "big": 1,
            }
            assert np.array_equal(api.media("offline-media", run.id, "big")[0].load(), big)
            assert [m.caption for m in api.media("offline-media", run.id, "img")] == ["s1", "s2"]
        server.stop()
        (rows,) = stored(server, f"SELECT count() FROM DB.media WHERE run_id = '{run.id}'")
        assert rows[0] == 5  # as stored, without FINAL: the replay added no row
    finally:
        server.stop()


def test_answers_stay_within_the_message_limit_and_api_media_pages(tmp_path):
    """With a 1 MiB message limit, 60 text samples of 40,000 characters (2.4 MB) need several
    ListMedia answers: each is truncated within the limit, and Api.media reads them all, in order."""
    server = ServerProcess(tmp_path / "server", env={"RUNSTREAM_MAX_MESSAGE_BYTES": str(1 << 20)}).start()
    try:
        with runstream.init(project="paged", **quick_sdk_options(server.endpoint, tmp_path)) as run:
            for step in range(30):
                run.log({"t": [runstream.Text(f"{step}-{i}" + "x" * 40_000) for i in range(2)]}, step=step)
        assert run.refused_count == 0
        with runstream.Api(server.endpoint) as api:
            page, truncated = api.media_page("paged", run.id, "t")
            assert truncated and 0 < len(page) < 60
            items = api.media("paged", run.id, "t")
            assert [m.text.split("x")[0] for m in items] == [f"{s}-{i}" for s in range(30) for i in range(2)]
            assert len(api.media("paged", run.id, "t", steps=(10, 29), limit=7)) == 7
    finally:
        server.stop()
