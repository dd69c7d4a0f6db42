"""Saved views and per-rank series on a real embedded server (issue 16, item 4).

Saved views (a server with API keys): save, list, save again under the same name (replaced, the
first save's who/when kept), delete (a tombstone: gone from the list, a second delete is
NOT_FOUND), bad names and states refused with INVALID_ARGUMENT, read keys may list but not save,
another project's key sees nothing; every save and delete is in the audit log.

Per-rank series: a run whose 4 ranks log a step time and a system metric; GetMetricSeries with
all_ranks answers one series per rank (user and system kinds), rank 0 alone otherwise, and the
dashboard's straggler table computed from those real series names the slow rank."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import runstream
from runstream.errors import ServerError
from runstream_dashboard import stragglers
from runstream_services.cli import main as cli_main
from tests.integration.test_run_edits import audit_rows
from tests.rank_data import RANKS, SLOW_RANK, STEPS, log_multi_rank_run
from tests.server_process import ServerProcess

PROJECT = "team-a"
KEYS = {
    "write-a": {"project": PROJECT, "role": "write"},
    "read-a": {"project": PROJECT, "role": "read"},
    "write-b": {"project": "team-b", "role": "write"},
}


@pytest.fixture
def keyed_server(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    process = ServerProcess(
        tmp_path / "server", env={"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys)}
    ).start()
    yield process
    process.stop()


def refused(api, call, *args) -> str:
    with pytest.raises(ServerError) as info:
        getattr(api, call)(*args)
    return info.value.code


def test_save_list_overwrite_delete_and_access(keyed_server, capsys):
    endpoint = keyed_server.endpoint
    first = {"filter": "params.lr > 0.01", "curves": ["val_loss"], "runs": ["r1", "r2"], "group": "group"}
    with runstream.Api(endpoint=endpoint, api_key="write-a") as api:
        assert api.saved_views(PROJECT) == []
        before_ms = int(time.time() * 1000)
        saved = api.save_view(PROJECT, "  lr sweep ", first)
        assert saved.name == "lr sweep" and saved.state == first  # the name as stored: trimmed
        assert saved.saved_by.startswith("key:") and saved.saved_ms >= before_ms
        api.save_view(PROJECT, "baseline", {"sort": "metrics.val_loss", "desc": False})
        assert [v.name for v in api.saved_views(PROJECT)] == ["baseline", "lr sweep"]

        time.sleep(0.01)
        second = {"filter": "params.lr > 0.1", "curves": ["val_loss", "train_loss"]}
        again = api.save_view(PROJECT, "lr sweep", second)
        views = {v.name: v for v in api.saved_views(PROJECT)}
        assert len(views) == 2 and views["lr sweep"].state == second  # replaced, not added
        assert (
            views["lr sweep"].created_ms == saved.created_ms and views["lr sweep"].saved_ms > saved.saved_ms
        )
        assert again.created_ms == saved.created_ms

        api.delete_view(PROJECT, "lr sweep")
        assert [v.name for v in api.saved_views(PROJECT)] == ["baseline"]
        assert refused(api, "delete_view", PROJECT, "lr sweep") == "NOT_FOUND"
        api.save_view(PROJECT, "lr sweep", first)  # a deleted name can be saved again, as new
        assert {v.name: v.state for v in api.saved_views(PROJECT)}["lr sweep"] == first

        assert refused(api, "save_view", PROJECT, " ", {}) == "INVALID_ARGUMENT"
        assert refused(api, "save_view", PROJECT, "two\nlines", {}) == "INVALID_ARGUMENT"
        assert refused(api, "save_view", PROJECT, "x" * 201, {}) == "INVALID_ARGUMENT"
        assert refused(api, "save_view", PROJECT, "huge", {"filter": "x" * 70_000}) == "INVALID_ARGUMENT"

    with runstream.Api(endpoint=endpoint, api_key="read-a") as api:
        assert [v.name for v in api.saved_views(PROJECT)] == ["baseline", "lr sweep"]  # read may list
        assert refused(api, "save_view", PROJECT, "mine", {}) == "PERMISSION_DENIED"
        assert refused(api, "delete_view", PROJECT, "baseline") == "PERMISSION_DENIED"
    with runstream.Api(endpoint=endpoint, api_key="write-b") as api:
        assert refused(api, "saved_views", PROJECT) == "PERMISSION_DENIED"
        assert refused(api, "save_view", PROJECT, "theirs", {}) == "PERMISSION_DENIED"
        assert api.saved_views("team-b") == []
    with runstream.Api(endpoint=endpoint) as api:
        assert refused(api, "saved_views", PROJECT) == "UNAUTHENTICATED"

    # the CLI over the same calls
    cli = ["--endpoint", endpoint, "--api-key"]
    assert cli_main(["views", "ls", PROJECT, *cli, "read-a"]) == 0
    out = capsys.readouterr().out
    assert "'baseline'  saved by key:" in out and "'lr sweep'" in out
    assert cli_main(["views", "show", PROJECT, "lr sweep", *cli, "read-a"]) == 0
    out = capsys.readouterr().out
    assert '"group": "group"' in out and "&runs=r1&runs=r2" in out
    assert cli_main(["views", "rm", PROJECT, "baseline", *cli, "read-a"]) == 2
    assert capsys.readouterr().err.startswith("error: ")  # a read key may not remove
    assert cli_main(["views", "rm", PROJECT, "baseline", *cli, "write-a"]) == 0
    assert cli_main(["views", "rm", PROJECT, "baseline", *cli, "write-a"]) == 2
    assert "no saved view 'baseline'" in capsys.readouterr().err

    keyed_server.stop()
    actions = [r["action"] for r in audit_rows(keyed_server.data_dir, "lr sweep")]
    assert actions == ["view.saved", "view.saved", "view.deleted", "view.saved"]


def test_per_rank_series_and_the_straggler_table(embedded_server):
    project = "ranks"
    run_id = log_multi_rank_run(embedded_server, project)

    with runstream.Api(endpoint=embedded_server.endpoint) as api:
        per_rank = api.series(project, [run_id], ["step_time_s"], downsampling="none", all_ranks=True)
        assert sorted(per_rank["rank"].unique()) == list(range(RANKS))
        assert per_rank.groupby("rank").size().tolist() == [STEPS] * RANKS
        rank0 = api.series(project, [run_id], ["step_time_s"], downsampling="none")
        assert set(rank0["rank"]) == {0} and len(rank0) == STEPS
        system = api.series(project, [run_id], ["cpu_percent"], kind="system", all_ranks=True)
        assert system.groupby("rank")["y"].mean().to_dict() == {r: 10.0 * r for r in range(RANKS)}

    table = stragglers.slowest_ranks(per_rank)
    assert len(table) == STEPS and (table["ranks"] == RANKS).all()
    slow_steps = table[table["step"] % 5 == 0]
    assert (slow_steps["slowest_rank"] == SLOW_RANK).all()
    assert slow_steps["behind"].to_numpy() == pytest.approx(
        np.full(len(slow_steps), 0.202 - 0.102)
    )  # the median of 4: (0.101 + 0.103) / 2
    others = table[table["step"] % 5 != 0]
    assert (others["slowest_rank"] == RANKS - 1).all()  # otherwise the last rank, 1 ms slower
    counts = stragglers.straggler_counts(table)
    assert counts.set_index("rank")["times_slowest"].to_dict() == {RANKS - 1: 40, SLOW_RANK: 10}
    assert counts["rank"].iloc[0] == SLOW_RANK  # far behind on 10 steps outweighs 1 ms on 40
