"""The runs of one process share one Ingest stream (packed messages) into a real embedded
`runstream server`, as a sweep or a notebook starts them: many runs started, logged and finished
by a few threads, and a server killed (SIGKILL) and restarted while several runs are attached.
What got stored is read from the stopped server's chDB folder, without FINAL: every point and
every run state exactly once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import runstream
from tests.chdb_inspect import STORED_SEQS, stored
from tests.sdk_options import quick_sdk_options

PROJECT = "sdk-shared"


def _points_per_run(server, run_ids) -> dict:
    listed = ", ".join(f"'{r}'" for r in run_ids)
    rows = stored(
        server,
        f"SELECT run_id, count(), uniqExact(key, step) FROM DB.metrics WHERE run_id IN ({listed}) "
        "AND kind = 'user' GROUP BY run_id",
    )
    return {run_id: (count, distinct) for run_id, count, distinct in rows}


def test_a_sweep_of_runs_over_one_shared_stream_stores_every_run_exactly_once(embedded_server, tmp_path):
    runs, steps = 40, 20

    def one(i: int):
        run = runstream.init(
            PROJECT, name=f"trial-{i}", config={"lr": 0.1 * i, "seed": i},
            **quick_sdk_options(embedded_server.endpoint, tmp_path, console="off"),
        )  # fmt: skip
        for step in range(steps):
            run.log({"loss": 1.0 / (step + 1), "acc": float(i)}, step=step)
        assert run.finish(timeout_s=60) is True
        assert run.stats["acked"] == run.stats["submitted"] and run.stats["refused"] == 0
        return run

    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(one, range(runs)))
    embedded_server.stop()
    run_ids = [r.id for r in done]
    assert _points_per_run(embedded_server, run_ids) == {r: (2 * steps, 2 * steps) for r in run_ids}
    listed = ", ".join(f"'{r}'" for r in run_ids)
    states = stored(
        embedded_server, f"SELECT state, count() FROM DB.runs FINAL WHERE run_id IN ({listed}) GROUP BY state"
    )
    assert states == [["finished", runs]]
    seqs = stored(
        embedded_server,
        f"SELECT {STORED_SEQS} FROM DB.client_seqs FINAL WHERE client_id IN "
        f"({', '.join(repr(r.client_id) for r in done)})",
    )
    assert seqs == [[sum(r.stats["submitted"] for r in done)]], "every request recorded once"


def test_runs_attached_to_the_shared_stream_survive_a_killed_server(embedded_server, tmp_path):
    """Three runs log while the server is killed with SIGKILL and started again: each resends
    what was not acked on the next shared call; nothing is lost and nothing doubled."""
    runs = [
        runstream.init(PROJECT, name=f"k{i}", **quick_sdk_options(embedded_server.endpoint, tmp_path))
        for i in range(3)
    ]
    for run in runs:
        for step in range(500):
            run.log({"x": float(step)}, step=step)
        assert run.flush(timeout_s=60)
    embedded_server.kill()
    for run in runs:
        for step in range(500, 1000):
            run.log({"x": float(step)}, step=step)
    restarted = threading.Thread(target=embedded_server.start, daemon=True)
    restarted.start()
    restarted.join(120)
    for run in runs:
        assert run.finish(timeout_s=60) is True
        assert run.stats["reconnects"] >= 1 and run.stats["acked"] == run.stats["submitted"]
    embedded_server.stop()
    run_ids = [r.id for r in runs]
    assert _points_per_run(embedded_server, run_ids) == {r: (1000, 1000) for r in run_ids}
    listed = ", ".join(f"'{r}'" for r in run_ids)
    states = stored(
        embedded_server, f"SELECT state, count() FROM DB.runs FINAL WHERE run_id IN ({listed}) GROUP BY state"
    )
    assert states == [["finished", 3]]


def test_ranks_of_one_run_hosted_by_one_process_store_every_point_once(embedded_server, tmp_path):
    """The shape of bench/sdk_ranks.py: many ranks of one run in one process (one shared stream,
    one system-sampler thread), logged step by step across the ranks, finished side by side."""
    world, steps, keys = 24, 150, [f"m{k}" for k in range(5)]
    opts = quick_sdk_options(
        embedded_server.endpoint, tmp_path, console="off", system_metrics_interval_s=0.05
    )
    ranks = [
        runstream.init(PROJECT, id="hosted-ranks", rank=r, world_size=world, **opts) for r in range(world)
    ]
    for step in range(steps):
        values = {key: step + k / 10 for k, key in enumerate(keys)}
        for run in ranks:
            run.log(values, step=step)
    with ThreadPoolExecutor(world) as pool:
        assert all(pool.map(lambda run: run.finish(timeout_s=60), ranks))
    assert all(r.stats["acked"] == r.stats["submitted"] and r.stats["refused"] == 0 for r in ranks)
    embedded_server.stop()
    per_rank = stored(
        embedded_server,
        "SELECT rank, count(), uniqExact(key, step) FROM DB.metrics "
        "WHERE run_id = 'hosted-ranks' AND kind = 'user' GROUP BY rank ORDER BY rank",
    )
    assert per_rank == [[r, steps * len(keys), steps * len(keys)] for r in range(world)]
    samples = stored(  # each rank's own numbering, from 0, no sample twice, at least its last one
        embedded_server,
        "SELECT rank, count(), uniqExact(step), min(step), max(step) FROM DB.metrics "
        "WHERE run_id = 'hosted-ranks' AND kind = 'system' AND key = 'system/proc_rss_mb' "
        "GROUP BY rank ORDER BY rank",
    )
    assert [row[0] for row in samples] == list(range(world))
    assert all(n >= 1 and distinct == n and lo == 0 and hi == n - 1 for _, n, distinct, lo, hi in samples)
    assert stored(embedded_server, "SELECT state FROM DB.runs FINAL WHERE run_id = 'hosted-ranks'") == [
        ["finished"]
    ]
