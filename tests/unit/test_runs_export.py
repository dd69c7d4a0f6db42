"""The runs export's pieces without a server: the format from the suffix, a column of mixed
values written to Parquet as text (pyarrow cannot store it as it is), the file replaced whole, and
the `runstream runs ls` column picker. The export end to end: integration/test_runs_export.py."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from runstream import runs_export
from runstream.runs_commands import LS_COLUMNS, pick_columns
from runstream_services.cli import build_parser


@pytest.mark.parametrize(
    ("path", "fmt", "expected"),
    [
        ("a.parquet", None, "parquet"),
        ("a.PQ", None, "parquet"),
        ("a.csv", None, "csv"),
        ("a.txt", "CSV", "csv"),
        ("a", "parquet", "parquet"),
    ],  # fmt: skip
)
def test_format_from_suffix_or_argument(path, fmt, expected):
    assert runs_export.export_format(path, fmt) == expected


def test_unknown_formats_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="name it .parquet or .csv"):
        runs_export.export_format("runs.xlsx", None)
    with pytest.raises(ValueError, match="use parquet or csv"):
        runs_export.export_format("runs.csv", "json")


def test_parquet_keeps_plain_columns_and_writes_mixed_ones_as_text(tmp_path):
    frame = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "params.x": [1.5, "text", math.nan],  # a number in one run, text in another
            "params.layers": [[1, 2], math.nan, [3]],
            "params.flag": [True, False, True],
            "metrics.acc": [0.5, math.nan, 0.75],
            "start": pd.to_datetime([1, 2, 3], unit="ms", utc=True),
        }
    )
    runs_export.write(frame, tmp_path / "r.parquet", "parquet")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert list(back.columns) == list(frame.columns)
    assert back["params.x"].tolist()[:2] == ["1.5", "text"] and pd.isna(back["params.x"][2])
    assert [list(v) if v is not None else None for v in back["params.layers"]] == [[1, 2], None, [3]]
    assert back["params.flag"].tolist() == [True, False, True]
    assert back["metrics.acc"].tolist()[0] == 0.5 and math.isnan(back["metrics.acc"].tolist()[1])
    assert (back.start == frame.start).all()
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]  # no temporary file left


def test_write_replaces_the_file_and_refuses_a_missing_folder(tmp_path):
    target = tmp_path / "r.csv"
    target.write_text("old")
    runs_export.write(pd.DataFrame({"run_id": ["a"]}), target, "csv")
    assert target.read_text().splitlines() == ["run_id", "a"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runs_export.write(pd.DataFrame({"run_id": ["a"]}), tmp_path / "nope" / "r.csv", "csv")


def test_ls_columns_default_then_wanted_with_prefixes():
    available = [*LS_COLUMNS, "metrics.acc", "metrics.loss", "params.lr", "datasets.imagenet"]
    assert pick_columns(available, "") == list(LS_COLUMNS)
    assert pick_columns(available, "params.lr, metrics.*") == [
        *LS_COLUMNS,
        "params.lr",
        "metrics.acc",
        "metrics.loss",
    ]
    with pytest.raises(ValueError, match="no column 'tags.x'; the runs have: run_id"):
        pick_columns(available, "tags.x")


def test_runs_commands_parse_and_name_their_handlers():
    parser = build_parser()
    args = parser.parse_args(["runs", "export", "p", "--out", "f.parquet", "--order-by", "metrics.a DESC",
                              "--order-by=-start", "--filter", "params.x = 'a'"])  # fmt: skip
    assert (args.run, args.project, args.out, args.order_by) == (
        "runstream.runs_commands:export",
        "p",
        "f.parquet",
        ["metrics.a DESC", "-start"],
    )
    args = parser.parse_args(["runs", "ls", "p"])
    assert (args.run, args.limit, args.order_by, args.filter) == ("runstream.runs_commands:ls", 50, [], "")
