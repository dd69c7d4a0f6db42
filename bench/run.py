"""Runstream against MLflow on the same workloads, in one invocation.

    .venv/bin/python bench/run.py                      # full run, writes BENCHMARKS.md
    .venv/bin/python bench/run.py --smoke --no-write   # tiny sizes, 1 repetition, prints only
    .venv/bin/python bench/run.py --repeat 5 --only W1,W3

Workload groups for --only: W1 W2 W3 W4 W5 (Runstream embedded vs MLflow), E (sustained ingest
and log->visible latency, embedded vs MLflow), K (the same on the Kafka bus; MLflow n/a), M (many
small writers, bench/many_writers.py: 1,000 ranks raw and through the SDK, 10,000 runs by 16
clients, freshness under load).
See bench/README.md for what each one measures. Over 400 lines on purpose: the table of rows,
their targets and the BENCHMARKS.md writer are one report and read best together.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import (
    RESULTS_DIR,
    ROOT,
    Measure,
    Row,
    Sizes,
    Target,
    dump_json,
    free_port,
    load_average,
    log,
    machine_info,
)

GROUPS = ("W1", "W2", "W3", "W4", "W5", "E", "K", "M")
LOGGING_X = Target("≥ 1,000× MLflow", ratio=1000)
QUERY_X = Target("≥ 10× MLflow", ratio=10)
INGEST_ABS = Target("≥ 1 M points/s", at_least=1_000_000)
LATENCY_ABS = Target("p99 < 1 s", at_most=1000)


def define_rows(sizes: Sizes, groups: set[str]) -> list[Row]:
    """Every row of the table, in print order, with its DESIGN.md targets."""
    s = sizes
    rows = [
        Row("W1", f"W1 per-step logging: 1 run, {s.w1_steps:,} steps × {s.w1_keys} metrics, one call per step, until queryable",
            "points/s", True, (LOGGING_X,)),
        Row("W2", f"W2 bulk logging: {s.w2_points:,} points into 1 run, fastest batch API, until queryable",
            "points/s", True, (LOGGING_X,)),
        Row("W3-setup", f"W3 setup: {s.w3_runs:,} runs × {s.w3_params} params × {s.w3_metrics} metrics × {s.w3_steps} steps, logged and queryable",
            "s", False, ()),
        Row("W3a-p50", f"W3a runs filtered on a param, sorted by a metric, top {s.w3_top}: p50", "ms", False, (QUERY_X,)),
        Row("W3a-p95", f"W3a runs filtered on a param, sorted by a metric, top {s.w3_top}: p95", "ms", False,
            (QUERY_X, Target("p95 < 100 ms (DESIGN: 10,000 runs)", at_most=100))),
        Row("W3b-p50", f"W3b all {s.w3_runs:,} runs listed: p50", "ms", False, (QUERY_X,)),
        Row("W3b-p95", f"W3b all {s.w3_runs:,} runs listed: p95", "ms", False, (QUERY_X,)),
        Row("W4", f"W4 history: 1 metric with {s.w2_steps:,} steps fetched whole: p50", "ms", False, (QUERY_X,)),
        Row("W5", f"W5 compare: 1 metric's full history for {s.w5_runs} runs ({s.w3_steps} steps each): total", "ms",
            False, (QUERY_X,)),
        Row("W5-loop", f"W5 loop: 1 metric's history for {s.w5_runs} runs, one history call per run (Api.history / get_metric_history): total",
            "ms", False, (Target("≥ 20× MLflow", ratio=20),)),
        Row("W5ds-p50", f"W5 at DESIGN scale: {s.w5ds_runs} runs × {s.w5ds_steps:,} steps, 1 metric, downsampled to {s.w5ds_points:,} points each: p50",
            "ms", False, (), mlflow_na="n/a (no server-side downsampling)"),
        Row("W5ds-p95", f"W5 at DESIGN scale: {s.w5ds_runs} runs × {s.w5ds_steps:,} steps, 1 metric, downsampled to {s.w5ds_points:,} points each: p95",
            "ms", False, (Target("p95 < 300 ms", at_most=300),), mlflow_na="n/a (no server-side downsampling)"),
        Row("E-ingest", "Sustained end-to-end ingest, embedded (MLflow: log_batch threads)", "points/s", True,
            (INGEST_ABS,)),
        Row("E-lat-p50", "log → visible latency, embedded: p50", "ms", False, ()),
        Row("E-lat-p99", "log → visible latency, embedded: p99", "ms", False, (LATENCY_ABS,)),
        Row("K-ingest", "Sustained end-to-end ingest, Kafka bus", "points/s", True, (INGEST_ABS,),
            mlflow_na="n/a (no Kafka mode)"),
        Row("K-lat-p50", "log → visible latency, Kafka bus: p50", "ms", False, (), mlflow_na="n/a (no Kafka mode)"),
        Row("K-lat-p99", "log → visible latency, Kafka bus: p99", "ms", False, (LATENCY_ABS,),
            mlflow_na="n/a (no Kafka mode)"),
        Row("M-ranks", "M 1,000 ranks of one run (10 metrics per request), highest rate held with every ack ≤ 2 s after the last send",
            "requests/s", True, (Target("≥ 20,000 requests/s", at_least=20_000),)),
        Row("M-floor", "M the same 1,000 ranks against a bare grpc.aio server that only decodes and acks (bench/ingest_floor_server.py): highest rate held, the ceiling of the row above on this machine",
            "requests/s", True, (), mlflow_na=M_NA),
        Row("M-packed", "M the same 1,000 ranks, up to 64 requests packed per message (IngestRequest.packed, as a relay would send them): highest rate held",
            "requests/s", True, (Target("≥ 20,000 requests/s", at_least=20_000),), mlflow_na=M_NA),
        Row("M-sdk", "M 1,000 ranks of one run through the SDK (runstream.init per rank, default settings, hosted by 4 processes), one run.log of 10 metrics per step: highest rate held with every rank's finish() ≤ 2 s after the last log",
            "points/s", True, (Target("≥ 1 M points/s", at_least=1_000_000),)),
        Row("M-repro", "M the issue's measurement through the SDK: 64 ranks (4 processes × 16), 10 metrics at 5 steps/s for 20 s, finish() of every rank (issue 11 measured up to 85 s)",
            "s", False, (Target("< 2 s", at_most=2),)),
        Row("M-runs", f"M {s.m_runs:,} runs (20 params, 10 metrics × 10 steps) created by 16 concurrent clients, until visible",
            "s", False, (Target("< 10 s for 10,000", at_most=10),)),
        Row("M-fresh-p99", "M log → visible (raw gRPC log, runstream.Api.history), idle: p99", "ms", False,
            (Target("p99 < 100 ms", at_most=100),)),
        Row("M-load-p99", "M log → visible at 50 % of the held ranks rate (each side its own): p99", "ms", False,
            (Target("p99 < 100 ms", at_most=100),)),
        Row("M-poll-p99", "M log → visible, idle, read from the send on (every 2 ms): p99", "ms", False,
            (Target("p99 < 100 ms", at_most=100),), mlflow_na=M_NA),
        Row("M-load-poll-p99", "M log → visible at the load of the 50 % row, read from the send on (every 2 ms): p99",
            "ms", False, (Target("p99 < 100 ms", at_most=100),), mlflow_na=M_NA),
        Row("M-kafka-fresh-p99", "M log → visible on the Kafka bus (ack: in Kafka; visible: taken in by the writer), idle: p99",
            "ms", False, (Target("p99 < 500 ms", at_most=500),), mlflow_na=M_NA),
        Row("M-kafka-load-p99", "M log → visible on the Kafka bus at the load of the 50 % row: p99", "ms", False,
            (Target("p99 < 500 ms", at_most=500),), mlflow_na=M_NA),
    ]  # fmt: skip
    return [r for r in rows if group_of(r.id) in groups]


M_NA = "n/a (a variant of Runstream's protocol or bus; MLflow's figure is in the row it varies)"


def run_many_writers(rows: dict[str, Row], sizes: Sizes, workdir: Path) -> None:
    """bench/many_writers.py in child processes (each starts its own server): every row on the
    embedded bus; then, at the load of its half-load row, the fresh probe read from the send on
    (a point may show before its ack: the read cache gets a logged block before its insert), and
    the fresh row on the Kafka bus."""
    embedded = _many_writers(rows, sizes, workdir, "embedded", [], M_EMBEDDED)
    if embedded is None:
        return
    _put(rows, embedded, {
        "M-ranks": embedded.get("ranks", {}).get("held_requests_per_s"),
        "M-floor": embedded.get("ranks_floor", {}).get("held_requests_per_s"),
        "M-packed": embedded.get("ranks_packed", {}).get("held_requests_per_s"),
        "M-sdk": embedded.get("sdk_ranks", {}).get("held_points_per_s"),
        "M-repro": embedded.get("sdk_repro", {}).get("finish_s"),
        "M-runs": embedded.get("runs", {}).get("visible_s"),
        "M-fresh-p99": embedded.get("fresh_idle", {}).get("p99_ms"),
        "M-load-p99": embedded.get("fresh_half_load", {}).get("p99_ms"),
    })  # fmt: skip
    load = str(embedded.get("fresh_half_load", {}).get("load_rps", 0))
    for name, extra, (idle_row, load_row) in (
        (
            "embedded-poll",
            ["--fresh-probe", "poll", "--read-every-ms", "2"],
            ("M-poll-p99", "M-load-poll-p99"),
        ),
        ("kafka", ["--bus", "kafka"], ("M-kafka-fresh-p99", "M-kafka-load-p99")),
    ):
        if not {idle_row, load_row} & set(rows):
            continue
        args = [*extra, "--only", "fresh", "--fresh-load-rps", load]
        result = _many_writers(rows, sizes, workdir, name, args, (idle_row, load_row))
        if result is not None:
            _put(rows, result, {
                idle_row: result.get("fresh_idle", {}).get("p99_ms"),
                load_row: result.get("fresh_half_load", {}).get("p99_ms"),
            })  # fmt: skip


#: the rows of the first many_writers call: when it fails, the later calls (which take its load) do not run
M_EMBEDDED = (
    "M-ranks", "M-floor", "M-packed", "M-sdk", "M-repro", "M-runs", "M-fresh-p99", "M-load-p99",
    "M-poll-p99", "M-load-poll-p99", "M-kafka-fresh-p99", "M-kafka-load-p99",
)  # fmt: skip


def _many_writers(
    rows: dict[str, Row], sizes: Sizes, workdir: Path, name: str, extra: list[str], fills: tuple[str, ...]
) -> dict | None:
    """One many_writers.py call: its JSON, or None after the rows it `fills` were marked with the error."""
    import subprocess

    out = workdir / f"many_writers-{name}.json"
    args = [
        sys.executable,
        str(ROOT / "bench" / "many_writers.py"),
        "--json",
        str(out),
        "--runs",
        str(sizes.m_runs),
    ]
    if sizes.m_runs < 10_000:
        args.append("--quick")
    log(f"Runstream ({name}): many writers")
    try:
        subprocess.run([*args, *extra], check=True, timeout=1800, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())
    except Exception as exc:
        for row_id in fills:
            if row_id in rows:
                rows[row_id].errors["runstream"] = f"many_writers ({name}): {type(exc).__name__}: {exc}"[:300]
        return None


def _put(rows: dict[str, Row], result: dict, values: dict[str, float | None]) -> None:
    for row_id, value in values.items():
        if row_id in rows and value is not None:
            rows[row_id].runstream = Measure(samples=[float(value)], detail=result)


def group_of(row_id: str) -> str:
    return row_id.split("-")[0][:2] if row_id.startswith("W") else row_id[0]


# Which rows a workload's result fills: workload -> [(row id, result part or None)].
FILLS = {
    "W1": [("W1", None)],
    "W2": [("W2", None)],
    "W3": [("W3a-p50", "a_p50"), ("W3a-p95", "a_p95"), ("W3b-p50", "b_p50"), ("W3b-p95", "b_p95")],
    "W4": [("W4", None)],
    "W5": [("W5", None)],
    "W5LOOP": [("W5-loop", None)],
    "W5DS": [("W5ds-p50", "p50"), ("W5ds-p95", "p95")],
    "SUSTAINED": [("{m}-ingest", None)],
    "LATENCY": [("{m}-lat-p50", "p50"), ("{m}-lat-p99", "p99")],
    "MANY": [  # MLflow only (bench/mlflow_many_writers.py); Runstream's M rows: run_many_writers
        ("M-ranks", "ranks_rps"),
        ("M-sdk", "ranks_pps"),
        ("M-repro", "repro_finish_s"),
        ("M-runs", "runs_s"),
        ("M-fresh-p99", "idle_p99"),
        ("M-load-p99", "load_p99"),
    ],
}


def _fill(rows: dict[str, Row], side: str, workload: str, result: dict, mode: str = "E") -> None:
    for row_id, part in FILLS[workload]:
        row = rows.get(row_id.format(m=mode))
        if row is None:
            continue
        samples = result["parts"][part] if part else result["samples"]
        detail = result.get("detail", {})
        note = detail.get("notes", {}).get(part)
        setattr(
            row, side, Measure(samples=list(samples), detail={**detail, "note": note} if note else detail)
        )
    if workload == "W5" and side == "mlflow" and "W5-loop" in rows:  # MLflow's W5 is that loop
        rows["W5-loop"].mlflow = Measure(samples=list(result["samples"]), detail=result.get("detail", {}))
    if workload == "W3" and "W3-setup" in rows and "setup_s" in result.get("detail", {}):
        setattr(rows["W3-setup"], side, Measure(samples=[result["detail"]["setup_s"]]))


def _fail(rows: dict[str, Row], side: str, workload: str, exc: BaseException, mode: str = "E") -> None:
    message = f"{side} {workload}: {type(exc).__name__}: {exc}".splitlines()[0][:300]
    log(message)
    traceback.print_exception(exc, file=sys.stderr)
    for row_id, _ in FILLS[workload]:
        row = rows.get(row_id.format(m=mode))
        if row is not None:
            row.errors[side] = message


def _workloads(groups: set[str], mode: str) -> list[str]:
    order = []
    if mode == "E":
        order += [w for w in ("W1", "W2", "W3", "W4", "W5") if w in groups]
        if "W5" in groups:
            order += ["W5LOOP", "W5DS"]
        if "W3" not in groups and "W3-setup" in groups:
            order.append("W3")
    if mode in groups:
        order += ["SUSTAINED", "LATENCY"]
    return order


def run_runstream(rows: dict[str, Row], sizes: Sizes, repeat: int, groups: set[str], workdir: Path) -> None:
    from runstream_side import RunstreamSide

    for mode, bus in (("E", "embedded"), ("K", "kafka")):
        workloads = _workloads(groups, mode)
        if not workloads:
            continue
        log(f"Runstream ({bus}): starting the server")
        try:
            side = RunstreamSide(workdir / f"runstream-{bus}", bus=bus, sizes=sizes).start()
        except Exception as exc:  # the table still prints, with the reason
            for w in workloads:
                _fail(rows, "runstream", w, exc, mode)
            continue
        try:
            for w in workloads:
                log(f"Runstream ({bus}): {w}")
                t0 = time.monotonic()
                try:
                    _fill(rows, "runstream", w, side.run(w, repeat), mode)
                except Exception as exc:
                    _fail(rows, "runstream", w, exc, mode)
                log(f"Runstream ({bus}): {w} took {time.monotonic() - t0:.1f}s")
        finally:
            side.stop()


def run_mlflow(
    rows: dict[str, Row], sizes: Sizes, repeat: int, groups: set[str], workdir: Path
) -> str | None:
    import mlflow_side

    workloads = [w for w in _workloads(groups, "E") if w in mlflow_side.WORKLOADS]
    if "M" in groups:
        workloads.append("MANY")
    if not workloads:
        return None
    try:
        version = mlflow_side.ensure_venv(log)
        log(f"MLflow {version}: starting mlflow server (SQLite)")
        server = mlflow_side.MLflowServer(
            free_port(), workdir / "mlflow", workers=sizes.mlflow_server_workers
        ).start()
    except Exception as exc:
        for w in workloads:
            _fail(rows, "mlflow", w, exc)
        return None
    state = workdir / "mlflow-state.json"
    try:
        t0 = time.monotonic()
        log(f"MLflow: {workloads[0]}")
        results = mlflow_side.run_workloads(workloads, server.uri, asdict(sizes), repeat, state)
        for w, result in results:
            if isinstance(result, Exception):
                _fail(rows, "mlflow", w, result)
            else:
                _fill(rows, "mlflow", w, result)
            log(f"MLflow: {w} took {time.monotonic() - t0:.1f}s")
            t0 = time.monotonic()
    finally:
        server.stop()
    return version


# --------------------------------------------------------------------------- rendering


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("points/s", "requests/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f} M"
        if value >= 1e3:
            return f"{value / 1e3:.1f} k"
        return f"{value:.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_measure(m: Measure | None, unit: str) -> str:
    if m is None:
        return "—"
    if len(m.samples) == 1:
        return fmt(m.median, unit)
    return f"{fmt(m.median, unit)} ({fmt(m.min, unit)}–{fmt(m.max, unit)})"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 1 else f"{x:.2f}×"


def _cell(row: Row, side: str, repeat: int) -> str:
    if side in row.errors:
        return "error"
    if side in row.not_run:
        return "not run"
    measure = getattr(row, side)
    text = fmt_measure(measure, row.unit)
    if measure is not None and 1 < len(measure.samples) < repeat:
        text += f" n={len(measure.samples)}"
    if measure is not None and measure.detail.get("note"):
        text += f" ({measure.detail['note']})"
    return text


def target_cell(row: Row) -> tuple[str, str]:
    texts, verdicts = [], []
    for target, attained in row.attainments():
        texts.append(target.text)
        if attained is None:
            verdicts.append("—")
        elif attained >= 1:
            verdicts.append("yes")
        else:
            verdicts.append(
                f"no ({attained:.0%} of it)" if attained >= 0.01 else f"no ({attained:.1e} of it)"
            )
    return ("; ".join(texts) or "—", "; ".join(verdicts) or "—")


def slowest(rows: list[Row]) -> tuple[Row, Target, float] | None:
    """The row furthest below (or least above) one of its targets."""
    worst = None
    for row in rows:
        for target, attained in row.attainments():
            if attained is not None and (worst is None or attained < worst[2]):
                worst = (row, target, attained)
    return worst


_RANKS_PARTS = {"M-ranks": "ranks", "M-floor": "ranks_floor", "M-packed": "ranks_packed"}


def ranks_cpu(steps: list[dict]) -> str:
    """Where a ranks ladder's CPU went: the server's and the load generator's CPU per request at
    the highest held step and at the first step not held. Both share the machine's cores, so
    together they bound the rate a row can sustain here (a step may hold a little more: its
    backlog drains after the step, within the 2 s allowed; the server's CPU counts the drain)."""
    cores = os.cpu_count() or 1
    held = [s for s in steps if s["held"]]
    shown = held[-1:] + [s for s in steps if not s["held"]][:1]
    parts = []
    for s in shown:
        server, load = s.get("server_cpu_ms_per_request"), s.get("load_cpu_ms_per_request")
        if server is None or load is None:
            continue
        ceiling = cores * 1000 / (server + load)
        parts.append(
            f"at {s['offered_rps']:,.0f} requests/s ({'held' if s['held'] else 'not held'}; ack p99"
            f" {s['ack_p99_ms']:,.0f} ms) the server used {server:.3f} ms and the load generator {load:.3f} ms"
            f" of CPU per request: at that cost {cores} cores sustain at most {ceiling:,.0f} requests/s"
        )
    return "; ".join(parts) or "no step recorded its CPU"


def details(rows: list[Row]) -> list[str]:
    """Lines explaining Runstream's figures from what the workloads recorded."""
    import statistics

    out = []
    for r in rows:
        d = r.runstream.detail if r.runstream else {}
        if d.get("phases_s"):
            split = {k: statistics.median(p[k] for p in d["phases_s"]) for k in d["phases_s"][0]}
            text = ", ".join(f"{k} {v:.3f} s" for k, v in split.items())
            out.append(f"- {r.id}: {text} (of {sum(split.values()):.3f} s for {d.get('points', 0):,} points)")
        if r.id == "W5ds-p95" and "setup_points_per_s" in d:
            out.append(
                f"- W5ds data: {d['points_logged']:,} points logged through the SDK (log_arrays, parallel runs)"
                f" and visible in {d['setup_s']:.1f} s = {fmt(d['setup_points_per_s'], 'points/s')} points/s"
            )
        if r.id in _RANKS_PARTS and d.get(_RANKS_PARTS[r.id], {}).get("steps"):
            out.append(f"- {r.id}: {ranks_cpu(d[_RANKS_PARTS[r.id]]['steps'])}")
        if r.id == "W3a-p50" and "via" in d:
            out.append(
                f"- W3 queries via {d['via']}; W4 via runstream.Api.history; W5 via runstream.Api.series"
            )
    return out


def render(rows: list[Row], info: dict, sizes: Sizes, repeat: int, smoke: bool, elapsed_s: float) -> str:
    lines = [
        "# Benchmarks: Runstream against MLflow",
        "",
        "Generated by `.venv/bin/python bench/run.py` — do not edit by hand; rerun the script.",
        f"Run at {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, {repeat} repetition(s) per workload"
        + (" (SMOKE sizes: not meaningful)" if smoke else "")
        + f", {elapsed_s / 60:.1f} min in all.",
        "",
        "Each cell: median of the repetitions (min–max; `n=` when a slow workload ran fewer within its"
        f" {sizes.rep_budget_s:.0f} s budget). The speed-up column is oriented so that"
        " **> 1 means Runstream is better**: Runstream/MLflow for throughputs, MLflow/Runstream for times.",
        "Both sides run on this machine, one after the other, each with its own server in a child process:"
        " `runstream server` (embedded: chDB + local artifacts; Kafka row: the Kafka bus) and a real"
        " `mlflow server` (SQLite backend, local artifact root, its own virtualenv). Clients are the"
        " public SDKs (`runstream`, `mlflow`).",
        "",
        "| Workload | Unit | Runstream | MLflow | Speed-up (> 1: Runstream better) | DESIGN.md target | Met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target_text, verdict = target_cell(r)
        mlflow_cell = r.mlflow_na or _cell(r, "mlflow", repeat)
        rs_cell = _cell(r, "runstream", repeat)
        lines.append(
            f"| {r.title} | {r.unit} | {rs_cell} | {mlflow_cell} | {fmt_ratio(r.speedup)} | {target_text} | {verdict} |"
        )
    errors = [r for r in rows if r.error]
    if errors:
        lines += ["", "Errors (the row's cell reads `error`):", ""]
        lines += [f"- {r.id}: {r.error}" for r in errors]
    worst = slowest(rows)
    if worst:
        row, target, attained = worst
        lines += [
            "",
            f"**Furthest from its target:** {row.id} ({row.title}) — target {target.text}, reached"
            f" {attained:.1%} of it.",
        ]
    notes = details(rows)
    if notes:
        lines += ["", "## Where the time went (Runstream, medians over repetitions)", ""] + notes
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "## Sizes", "", "```", json.dumps(asdict(sizes), indent=1), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes and 1 repetition (checks the code paths)")
    p.add_argument("--repeat", type=int, help="repetitions per workload (default 3; --smoke: 1)")
    p.add_argument("--only", help=f"comma list of groups among {','.join(GROUPS)} (default: all)")
    p.add_argument("--no-write", action="store_true", help="print the table; leave BENCHMARKS.md alone")
    p.add_argument(
        "--mlflow",
        choices=["on", "off", "if-installed"],
        default="on",
        help="on: make MLflow's venv when missing (default); if-installed: only when it exists; off: skip",
    )
    p.add_argument("--skip-runstream", action="store_true", help="run the MLflow side only")
    p.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="Markdown file to write")
    p.add_argument("--json", type=Path, help="JSON results file (default bench/.results/<time>.json)")
    return p.parse_args(argv)


def run_benchmark(argv: list[str] | None = None) -> dict:
    """Runs the selected workloads and returns the JSON report (also written to disk)."""
    import mlflow_side

    args = parse_args(argv)
    sizes = Sizes.smoke() if args.smoke else Sizes.full()
    repeat = args.repeat or (1 if args.smoke else 3)
    groups = set(GROUPS) if not args.only else {g.strip().upper() for g in args.only.split(",") if g.strip()}
    unknown = groups - set(GROUPS)
    if unknown:
        raise SystemExit(f"unknown workload group(s) {sorted(unknown)}; choose among {','.join(GROUPS)}")
    row_list = define_rows(sizes, groups)
    rows = {r.id: r for r in row_list}
    started = time.monotonic()
    load_at_start = load_average()
    log(f"load average at start: {load_at_start} on {os.cpu_count()} cores")
    mlflow_version = None
    with tempfile.TemporaryDirectory(prefix="runstream-bench-") as tmp:
        workdir = Path(tmp)
        if args.skip_runstream:
            for r in row_list:
                r.not_run.add("runstream")
        else:
            run_runstream(rows, sizes, repeat, groups, workdir)
            if "M" in groups:
                run_many_writers(rows, sizes, workdir)
        use_mlflow = args.mlflow == "on" or (args.mlflow == "if-installed" and mlflow_side.venv_ready())
        if use_mlflow:
            mlflow_version = run_mlflow(rows, sizes, repeat, groups, workdir)
        else:
            for r in row_list:
                r.not_run.add("mlflow")
    elapsed = time.monotonic() - started
    info = machine_info(mlflow_version, load_at_start)
    markdown = render(row_list, info, sizes, repeat, args.smoke, elapsed)
    report = {
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "smoke": args.smoke,
        "repeat": repeat,
        "groups": sorted(groups),
        "elapsed_s": elapsed,
        "machine": info,
        "sizes": asdict(sizes),
        "rows": [r.to_json() for r in row_list],
        "markdown": markdown,
    }
    json_path = args.json or RESULTS_DIR / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    dump_json(json_path, report)
    print(markdown)
    if not args.no_write:
        args.output.write_text(markdown)
        log(f"wrote {args.output} and {json_path}")
    return report


def main(argv: list[str] | None = None) -> int:
    import signal

    def stop(signum, frame):  # SIGTERM unwinds like Ctrl-C, so the servers are stopped
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    report = run_benchmark(argv)
    return 1 if any(r["error"] for r in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
