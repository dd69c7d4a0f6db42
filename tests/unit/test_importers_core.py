"""The importers' pure pieces: derived run ids and names, param parsing, one point per step, and
the two record framings (TFRecord's CRC32C, the .wandb log's CRC-32) on bytes built here."""

from __future__ import annotations

import struct
import zlib

import pytest

from runstream.importers.core import (
    Series,
    artifact_name,
    held_prefix,
    normalize,
    parse_param,
    project_name,
    run_id_for,
)
from runstream.importers.tensorboard_source import crc32c, masked_crc, records
from runstream.importers.wandb_source import BLOCK, FULL, HEADER, ImportFailed, log_records


def test_run_ids_are_stable_valid_and_distinct():
    assert run_id_for("mlflow", "0a1b2c") == "mlflow-0a1b2c"
    long_or_odd = [run_id_for("neptune", "acme/vision/VIS-1"), run_id_for("neptune", "acme-vision/VIS-1")]
    assert long_or_odd[0] != long_or_odd[1] and long_or_odd[0] == run_id_for("neptune", "acme/vision/VIS-1")
    assert all(len(r) <= 64 for r in long_or_odd + [run_id_for("tensorboard", "x" * 80)])
    assert project_name("vision exp") == "vision-exp" and project_name("///") == "imported"
    assert artifact_name("files/model") == "files.model" and artifact_name("..") == "artifact"


@pytest.mark.parametrize(
    "text, value",
    [
        ("0.01", 0.01),
        ("3", 3),
        ("True", True),
        ("adam", "adam"),
        ("1e-3", 1e-3),
        ("inf", float("inf")),
        ("Infinity", "Infinity"),
    ],
)
def test_params_become_numbers_and_flags_where_the_text_is_one(text, value):
    got = parse_param(text)
    assert got == value and type(got) is type(value)


def test_one_point_per_step():
    same = normalize(Series("t", [0, 0, 0], [3.0, 1.0, 2.0], [30.0, 10.0, 20.0]))
    assert same == (Series("t", [0, 1, 2], [1.0, 2.0, 3.0], [10.0, 20.0, 30.0]), 0)  # numbered in time order
    mixed, dropped = normalize(Series("m", [0, 1, 1, 2], [1.0, 2.0, 5.0, 3.0], [1.0, 2.0, 9.0, 3.0]))
    assert (mixed.steps, mixed.values, dropped) == (
        [0, 1, 2],
        [1.0, 5.0, 3.0],
        1,
    )  # the latest of step 1 kept


def test_what_an_interrupted_import_stored_is_recognized_as_a_prefix():
    series = Series("k", list(range(10)), [float(i) for i in range(10)])
    assert held_prefix(series, None) == 0
    assert held_prefix(series, (5, 4)) == 5  # steps 0-4 stored: send 5-9
    assert held_prefix(series, (10, 9)) == 10  # all there
    assert held_prefix(series, (3, 4)) == 0  # not a prefix (points missing before step 4): send all
    assert held_prefix(Series("k", [0, 2, 4, 6], [0.0] * 4), (3, 5)) == 0  # last step not a source step


def _tfrecord(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc(length)) + payload + struct.pack("<I", masked_crc(payload))


def test_tfrecord_framing_checks_both_crcs(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(_tfrecord(b"first") + _tfrecord(b"second") + _tfrecord(b"cut")[:-3])
    assert list(records(path)) == [b"first", b"second"]  # a record cut short ends the file
    broken = bytearray(_tfrecord(b"first"))
    broken[14] ^= 1
    path.write_bytes(bytes(broken))
    with pytest.raises(ImportFailed, match="corrupt record data at byte 0"):
        list(records(path))


def test_wandb_log_framing_reassembles_chunks_and_checks_crcs(tmp_path):
    def chunk(kind: int, data: bytes) -> bytes:
        return (
            struct.pack("<IHB", zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF, len(data), kind)
            + data
        )

    big = bytes(range(256)) * 200  # 51,200 bytes: FIRST + LAST chunks across a block boundary
    first_len = BLOCK - len(HEADER) - 7 - (7 + 5) - 7
    body = HEADER + chunk(FULL, b"small") + chunk(2, big[:first_len]) + chunk(4, big[first_len:])
    path = tmp_path / "run-x.wandb"
    path.write_bytes(body)
    assert list(log_records(path)) == [b"small", big]
    damaged = bytearray(body)
    damaged[len(HEADER) + 8] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(ImportFailed, match="CRC mismatch"):
        list(log_records(path))
