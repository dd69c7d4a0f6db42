"""Request validation: every refusal is InvalidArgument with a message that says what to fix."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument
from runstream_services.ingest.validation import check_artifact_path, validate_request

SETTINGS = ServerSettings(max_batch_points=1000, max_inline_artifact_bytes=64)


def batch(n=4, keys=("loss", "acc"), **over) -> pb.MetricBatch:
    fields = {
        "project": "proj",
        "run_id": "run-1",
        "keys": list(keys),
        "key_index": (np.arange(n) % max(len(keys), 1)).astype("<u2").tobytes(),
        "steps": np.arange(n, dtype="<i8").tobytes(),
        "values": np.linspace(0, 1, n).astype("<f8").tobytes(),
        "times_ms": np.full(n, 1_700_000_000_000, "<i8").tobytes(),
    }
    fields.update(over)
    return pb.MetricBatch(**fields)


def request(**body) -> pb.IngestRequest:
    return pb.IngestRequest(seq=7, client_id="c-1", **body)


def refused(req: pb.IngestRequest, *words: str) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate_request(req, SETTINGS)
    for word in words:
        assert word in info.value.message, info.value.message
    return info.value.message


def test_valid_batch_counts_points_and_accepts_nan_and_inf():
    values = np.array([math.nan, math.inf, -math.inf, 1.5], "<f8").tobytes()
    accepted = validate_request(request(metrics=batch(values=values)), SETTINGS)
    assert (accepted.kind, accepted.project, accepted.run_id, accepted.points) == (
        "metrics",
        "proj",
        "run-1",
        4,
    )


def test_single_key_batch_may_omit_key_index_and_times():
    accepted = validate_request(request(metrics=batch(keys=["loss"], key_index=b"", times_ms=b"")), SETTINGS)
    assert accepted.points == 4


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"steps": b"\x00" * 7}, ["steps", "multiple of 8"]),
        ({"values": np.zeros(3, "<f8").tobytes()}, ["4 steps but 3 values"]),
        ({"key_index": np.array([0, 1, 2, 0], "<u2").tobytes()}, ["key 2", "only 2 keys"]),
        ({"key_index": np.arange(4, dtype="<u2").tobytes()}, ["key 3", "only 2 keys"]),  # each index once
        ({"key_index": np.zeros(3, "<u2").tobytes()}, ["3 key indexes"]),
        (  # 100 rows of both keys but the last index: no grid, the large batch's max finds it
            {
                "steps": np.arange(200, dtype="<i8").tobytes(),
                "values": np.zeros(200).tobytes(),
                "times_ms": b"",
                "key_index": np.array([0, 1] * 99 + [0, 2], "<u2").tobytes(),
            },
            ["key 2", "only 2 keys"],
        ),  # fmt: skip
        ({"times_ms": np.zeros(2, "<i8").tobytes()}, ["2 times"]),
        ({"keys": []}, ["no keys"]),
        ({"keys": ["loss", ""]}, ["empty key"]),
        ({"keys": ["loss", "x" * 300]}, ["300 characters"]),
        ({"keys": ["loss", "a\nb"]}, ["control characters"]),
        ({"key_index": b""}, ["no key_index"]),
        ({"steps": b"", "values": b"", "key_index": b"", "times_ms": b""}, ["no points"]),
        ({"rank": 70_000}, ["rank 70000"]),
        ({"kind": 9}, ["kind 9"]),
        ({"project": "my project"}, ["project", "A-Z a-z 0-9"]),
        ({"project": ""}, ["project is empty"]),
        ({"run_id": "../x"}, ["run_id"]),
        ({"run_id": "r" * 65}, ["run_id"]),
    ],
)
def test_bad_batches_are_refused_with_the_fix(over, words):
    refused(request(metrics=batch(**over)), *words)


def test_a_bad_client_id_is_refused_every_time_and_a_good_one_passes():
    """validate_request remembers client ids that passed: a bad one must never be remembered."""
    good = pb.IngestRequest(seq=1, client_id="c-good", metrics=batch())
    bad = pb.IngestRequest(seq=1, client_id="c\nbad", metrics=batch())
    for _ in range(2):
        assert validate_request(good, SETTINGS).points == 4
        refused(bad, "client_id", "printable")
    refused(pb.IngestRequest(seq=1, client_id="c" * 129, metrics=batch()), "at most 128")


def test_batch_over_the_point_limit_says_split_it():
    n = SETTINGS.max_batch_points + 1
    refused(request(metrics=batch(n=n)), "1001 points", "split")


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../secret",
        "a/../../b",
        "a\\b",
        "C:/x",
        "a\x00b",
        "",
        "a//b",
        "./a",
        "a/\nb",
    ],
)
def test_hostile_artifact_paths_are_refused(path):
    with pytest.raises(InvalidArgument):
        check_artifact_path(path)


@pytest.mark.parametrize("path", ["model.pt", "checkpoints/epoch-1/weights.bin", "a b/c..d", "..hidden"])
def test_ordinary_artifact_paths_pass(path):
    check_artifact_path(path)


def artifact(**over) -> pb.ArtifactEvent:
    data = b"hello"
    fields = {
        "project": "proj",
        "run_id": "run-1",
        "name": "model",
        "path": "weights.bin",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "inline_data": data,
    }
    fields.update(over)
    return pb.ArtifactEvent(**fields)


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"sha256": "xyz"}, ["64 hex"]),
        ({"size": 6}, ["size 6", "5 bytes"]),
        ({"inline_data": b"x" * 65, "size": 65}, ["65 bytes", "UploadArtifact"]),
        ({"name": "../model"}, ["artifact name"]),
        ({"name": ""}, ["artifact name is empty"]),
        ({"path": "/abs"}, ["absolute"]),
    ],
)
def test_bad_artifact_events_are_refused(over, words):
    refused(request(artifact=artifact(**over)), *words)


def test_valid_artifact_passes():
    assert validate_request(request(artifact=artifact()), SETTINGS).kind == "artifact"


def test_run_start_config_values_are_checked():
    ok = pb.RunStart(project="p", run_id="r", config={"lr": types_pb2.Value(number=0.1)})
    assert validate_request(request(run_start=ok), SETTINGS).kind == "run_start"
    refused(
        request(run_start=pb.RunStart(project="p", run_id="r", config={"lr": types_pb2.Value()})), "no value"
    )
    bad_json = pb.RunStart(project="p", run_id="r", config={"layers": types_pb2.Value(json="[1, 2")})
    refused(request(run_start=bad_json), "not valid JSON", "json.dumps")
    refused(
        request(run_start=pb.RunStart(project="p", run_id="r", config={"": types_pb2.Value(number=1)})),
        "empty key",
    )


def test_run_finish_needs_a_final_state():
    finish = pb.RunFinish(project="p", run_id="r", state=types_pb2.RUN_STATE_RUNNING)
    refused(request(run_finish=finish), "RUN_STATE_RUNNING", "RUN_STATE_FINISHED")
    finish.state = types_pb2.RUN_STATE_FAILED
    assert validate_request(request(run_finish=finish), SETTINGS).kind == "run_finish"


def test_request_without_body_or_client_id():
    refused(pb.IngestRequest(seq=1, client_id="c"), "no body")
    refused(pb.IngestRequest(seq=1, metrics=batch()), "client_id")


def test_a_remembered_good_context_does_not_let_a_bad_one_through():
    """check_context remembers contexts that passed (a process's runs repeat theirs); one that
    differs in a single package line is still checked, and refused every time it comes."""
    good = types_pb2.RunContext(host="node0", packages={"numpy": "2.1.0", "torch": "2.5.1"})
    start = pb.RunStart(project="p", run_id="r", context=good)
    for _ in range(2):
        assert validate_request(request(run_start=start), SETTINGS).kind == "run_start"
    bad = types_pb2.RunContext(host="node0", packages={"numpy": "2.1.0", "torch": "2.5.1\nINJECTED"})
    for _ in range(2):
        refused(request(run_start=pb.RunStart(project="p", run_id="r", context=bad)), "torch")
