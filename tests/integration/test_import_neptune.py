"""`runstream import neptune` against a neptune-exporter export and a real embedded server.

The export is written here with pyarrow in the exporter's documented layout (its README, "Data
layout on disk" and "Parquet schema": <data>/<project dir>/<run>_part_<n>.parquet with the columns
project_id, run_id, attribute_path, attribute_type, step decimal(18,6), timestamp(ms, UTC), the
typed *_value columns, file_value{path} relative to the files folder). The exporter itself cannot
run here: it needs a Neptune server, and Neptune's servers are gone. What landed is read back:
config, tags, group, every metric point (steps and times), files with their sha256.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from decimal import Decimal

import pytest

import runstream
from tests.integration.import_helpers import (
    artifact_files,
    history_points,
    import_command,
    import_env,
    run_import,
)

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SCHEMA = pa.schema(
    [
        ("project_id", pa.string()), ("run_id", pa.string()), ("attribute_path", pa.string()),
        ("attribute_type", pa.string()), ("step", pa.decimal128(18, 6)), ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("int_value", pa.int64()), ("float_value", pa.float64()), ("string_value", pa.string()),
        ("bool_value", pa.bool_()), ("datetime_value", pa.timestamp("ms", tz="UTC")),
        ("string_set_value", pa.list_(pa.string())), ("file_value", pa.struct([("path", pa.string())])),
        ("histogram_value", pa.struct([("type", pa.string()), ("edges", pa.list_(pa.float64())),
                                       ("values", pa.list_(pa.float64()))])),
    ]
)  # fmt: skip
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PROJECT_ID = "acme/vision"


def row(run: str, path: str, kind: str, **values) -> dict:
    base = {name: None for name in SCHEMA.names}
    return (
        base
        | {"project_id": PROJECT_ID, "run_id": run, "attribute_path": path, "attribute_type": kind}
        | values
    )


def write_export(root, step_unit: Decimal = Decimal(1)) -> dict:
    """Two complete runs and one still being exported (no part_0); returns what each run holds."""
    data, files = root / "data", root / "files"
    project_dir = "acme_vision-1a2b"
    (files / project_dir).mkdir(parents=True)
    truth = {}
    for i, run in enumerate(("VIS-1", "VIS-2")):
        blob = bytes([i]) * 5000
        (files / project_dir / f"model-{i}.pt").write_bytes(blob)
        (files / project_dir / f"sample-{i}-0.png").write_bytes(b"png0" * (i + 1))
        rows = [
            row(run, "sys/name", "string", string_value="baseline"),
            row(run, "sys/tags", "string_set", string_set_value=["cnn", f"seed-{i}"]),
            row(run, "sys/creation_time", "datetime", datetime_value=T0),
            row(run, "sys/modification_time", "datetime", datetime_value=T0.replace(hour=13)),
            row(run, "sys/failed", "bool", bool_value=i == 1),
            row(run, "sys/owner", "string", string_value="ana"),
            row(run, "parameters/lr", "float", float_value=0.001 * (i + 1)),
            row(run, "parameters/epochs", "int", int_value=10 + i),
            row(run, "parameters/optimizer", "string", string_value="adam"),
            row(run, "parameters/augment", "bool", bool_value=True),
            row(run, "parameters/classes", "string_set", string_set_value=["cat", "dog"]),
            row(run, "model", "file", file_value={"path": f"{project_dir}/model-{i}.pt"}),
            row(run, "samples", "file_series", step=Decimal(0), file_value={"path": f"{project_dir}/sample-{i}-0.png"}),
        ]  # fmt: skip
        points = {"metrics/loss": [], "metrics/acc": []}
        part_rows = [[], []]
        for k in range(300):
            when = datetime.fromtimestamp(T0.timestamp() + k, UTC)
            for key, value in (("metrics/loss", 1.0 / (k + 1) + i), ("metrics/acc", k / 300)):
                part_rows[k >= 150].append(
                    row(run, key, "float_series", step=k * step_unit, timestamp=when, float_value=value)
                )
                points[key].append((k, round(when.timestamp() * 1000), value))
            if k % 100 == 0:
                part_rows[0].append(row(run, "logs/stdout", "string_series", step=k * step_unit, timestamp=when,
                                        string_value=f"step {k}"))  # fmt: skip
        folder = data / project_dir
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist(rows + part_rows[0], schema=SCHEMA), folder / f"{run}_part_0.parquet"
        )
        pq.write_table(pa.Table.from_pylist(part_rows[1], schema=SCHEMA), folder / f"{run}_part_1.parquet")
        truth[run] = {"points": points, "model": hashlib.sha256(blob).hexdigest(), "failed": i == 1}
    # a run the exporter is still writing: part_1 only (part_0 is renamed into place last)
    pq.write_table(
        pa.Table.from_pylist([row("VIS-3", "parameters/lr", "float", float_value=0.5)], schema=SCHEMA),
        data / project_dir / "VIS-3_part_1.parquet",
    )
    return truth


def test_neptune_export_imports_once(module_embedded_server, tmp_path):
    truth = write_export(tmp_path)
    data = str(tmp_path / "data")
    first = run_import(module_embedded_server.endpoint, tmp_path, "neptune", data)
    assert (first["imported"], first["failed"]) == (2, 0), first["out"]  # VIS-3 is not complete yet
    with runstream.Api(module_embedded_server.endpoint) as api:
        runs = api.runs("acme-vision")
        assert sorted(runs["name"]) == ["VIS-1", "VIS-2"]
        for _, r in runs.iterrows():
            i, src = int(r["name"][-1]) - 1, truth[r["name"]]
            run = api.run("acme-vision", r["run_id"])
            assert run["group"] == "baseline" and run["state"] == ("failed" if src["failed"] else "finished")
            assert {"cnn", f"seed-{i}"} <= set(run["tags"]) and run["tags"]["neptune.sys/owner"] == "ana"
            assert run["config"] == {
                "parameters/lr": 0.001 * (i + 1), "parameters/epochs": 10 + i, "parameters/optimizer": "adam",
                "parameters/augment": True, "parameters/classes": ["cat", "dog"],
            }  # fmt: skip
            assert (run["start_ms"], run["end_ms"]) == (
                round(T0.timestamp() * 1000),
                round(T0.timestamp() * 1000) + 3_600_000,
            )
            assert history_points(api, "acme-vision", r["run_id"]) == src["points"]  # both parts
            files = artifact_files(run)
            assert files[f"model/model-{i}.pt"] == src["model"]
            assert files[f"samples/0/sample-{i}-0.png"] == hashlib.sha256(b"png0" * (i + 1)).hexdigest()
            assert set(files) == {
                f"model/model-{i}.pt",
                f"samples/0/sample-{i}-0.png",
                "logs.stdout/stdout.jsonl",
            }
            lines = "".join(
                json.dumps({"step": k, "time": T0.timestamp() + k, "value": f"step {k}"}) + "\n"
                for k in (0, 100, 200)
            )  # a string series: one JSON line per point, its artifact named after the path ('/' -> '.')
            assert files["logs.stdout/stdout.jsonl"] == hashlib.sha256(lines.encode()).hexdigest()
        again = run_import(module_embedded_server.endpoint, tmp_path, "neptune", data)
        assert (again["imported"], again["skipped"], again["points"]) == (0, 2, 0), again["out"]
        assert len(api.runs("acme-vision")) == 2


def test_decimal_steps_need_a_multiplier_that_makes_them_whole(module_embedded_server, tmp_path):
    truth = write_export(tmp_path, step_unit=Decimal("0.5"))
    data = str(tmp_path / "data")
    done = subprocess.run(
        import_command(module_embedded_server.endpoint, "neptune", data, "--project", "halves"),
        capture_output=True, text=True, timeout=300, env=import_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1 and "2 failed" in done.stdout, done.stdout + done.stderr
    assert "step 0.5 times --step-multiplier 1 is 0.5, not a whole number" in done.stderr
    ok = run_import(
        module_embedded_server.endpoint,
        tmp_path,
        "neptune",
        data,
        "--project",
        "halves",
        "--step-multiplier",
        "2",
    )
    assert (ok["imported"], ok["failed"]) == (2, 0), ok["out"]
    with runstream.Api(module_embedded_server.endpoint) as api:
        for _, r in api.runs("halves").iterrows():
            got = history_points(api, "halves", r["run_id"])["metrics/loss"]
            assert [s for s, _, _ in got] == [k for k, _, _ in truth[r["name"]]["points"]["metrics/loss"]]
