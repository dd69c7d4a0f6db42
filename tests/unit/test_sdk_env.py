"""Launcher environments, settings resolution and context capture."""

from __future__ import annotations

import subprocess

import pytest

import runstream
from runstream._internal import context, distributed
from runstream.config import resolve


@pytest.mark.parametrize(
    ("env", "run_id", "rank", "world"),
    [
        ({}, None, 0, 1),
        (
            {"SLURM_JOB_ID": "77", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
            None,
            0,
            1,
        ),  # one task: no sharing
        ({"RANK": "2", "WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "abc"}, "torch-abc", 2, 4),
        ({"RANK": "1", "WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "none"}, None, 1, 4),
        (
            {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "3", "SLURM_PROCID": "5", "SLURM_NTASKS": "8"},
            "slurm-77.3",
            5,
            8,
        ),
        (
            {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_ess_base_jobid": "9"},
            "mpi-9",
            1,
            2,
        ),
        ({"PMI_RANK": "3", "PMI_SIZE": "4", "PMI_KVSNAME": "kvs_1"}, "pmi-kvs_1", 3, 4),
        ({"RUNSTREAM_RUN_ID": "my run/1"}, "my-run-1", 0, 1),
    ],
)
def test_launcher_environment(env, run_id, rank, world):
    assert distributed.launcher_run_id(env) == run_id
    assert distributed.rank(env) == rank
    assert distributed.world_size(env) == world


def test_ranks_share_a_group_run_and_only_rank0_owns_config(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNSTREAM_RUN_ID", raising=False)
    runs = [
        runstream.init("p", group="sweep-1", mode="disabled", rank=r, world_size=2, spool_dir=str(tmp_path))
        for r in (0, 1)
    ]
    assert {r.id for r in runs} == {"sweep-1"}
    assert [r.owns_config for r in runs] == [True, False]
    for r in runs:
        r.finish()


def test_settings_precedence_and_errors(monkeypatch):
    monkeypatch.setenv("RUNSTREAM_ENDPOINT", "10.0.0.1:9000")
    monkeypatch.setenv("RUNSTREAM_FLUSH_INTERVAL_S", "0.5")
    s = resolve()
    assert s.endpoint == "10.0.0.1:9000" and s.flush_interval_s == 0.5
    assert resolve(endpoint="h:1").endpoint == "h:1"
    monkeypatch.delenv("RUNSTREAM_ENDPOINT")
    assert resolve().endpoint == "127.0.0.1:7777"
    with pytest.raises(runstream.ConfigError, match="host:port"):
        resolve(endpoint="nohost")
    with pytest.raises(runstream.ConfigError, match="mode"):
        resolve(mode="fast")
    with pytest.raises(runstream.ConfigError, match="unknown setting"):
        resolve(flush_interval=1)
    monkeypatch.setenv("RUNSTREAM_CAPTURE_CONTEXT", "maybe")
    with pytest.raises(runstream.ConfigError, match="RUNSTREAM_CAPTURE_CONTEXT"):
        resolve()


GIT = ["git", "-c", "user.email=a@b", "-c", "user.name=a"]


def _git_repo(tmp_path):
    """A repository with one commit of f.txt ("one")."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=repo, check=True)
    (repo / "f.txt").write_text("one\n")
    subprocess.run([*GIT, "add", "."], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "c"], cwd=repo, check=True)
    return repo


def test_context_capture_in_a_git_repo(tmp_path, monkeypatch):
    repo = _git_repo(tmp_path)
    subprocess.run(
        ["git", "remote", "add", "origin", "https://user:s3cret@example.com/r.git"], cwd=repo, check=True
    )
    (repo / "f.txt").write_text("two\n")
    monkeypatch.chdir(repo)
    ctx = context.capture(
        full=True, with_packages=True, max_diff_bytes=1 << 20, world_size=1, seeds={"seed": 7}
    )
    assert len(ctx.git_commit) == 40 and ctx.git_branch == "main" and ctx.git_dirty
    assert "+two" in ctx.git_diff
    assert ctx.git_remote == "https://example.com/r.git"
    assert ctx.packages["grpcio"] and ctx.python_version and ctx.host and ctx.command
    assert ctx.seeds["seed"] == 7


def test_git_context_is_cached_briefly_and_a_commit_or_add_is_seen_at_once(tmp_path, monkeypatch):
    repo = _git_repo(tmp_path)
    monkeypatch.chdir(repo)
    context._GIT_CACHE.clear()
    calls = []
    real_run = context._run
    monkeypatch.setattr(context, "_run", lambda cmd, *a, **k: calls.append(cmd) or real_run(cmd, *a, **k))

    first = context.git_info()
    forks = len(calls)
    assert forks >= 2 and not first["git_dirty"]
    assert context.git_info() == first and len(calls) == forks  # a second run: no git process

    subprocess.run([*GIT, "commit", "-q", "--allow-empty", "-m", "d"], cwd=repo, check=True)
    after_commit = context.git_info()
    assert after_commit["git_commit"] != first["git_commit"] and len(calls) > forks

    subprocess.run([*GIT, "checkout", "-q", "-b", "feature"], cwd=repo, check=True)  # HEAD rewritten
    assert context.git_info()["git_branch"] == "feature"  # HEAD is read again, not taken from its cache

    (repo / "f.txt").write_text("two\n")
    subprocess.run([*GIT, "add", "f.txt"], cwd=repo, check=True)  # the index changes
    staged = context.git_info()
    assert staged["git_dirty"] and "+two" in staged["git_diff"]

    (repo / "f.txt").write_text("three\n")  # not staged: seen once the cache entry is old
    assert "+three" not in context.git_info().get("git_diff", "")
    monkeypatch.setattr(context, "GIT_CACHE_S", 0.0)
    assert "+three" in context.git_info()["git_diff"]


def test_packages_equal_what_the_metadata_parser_reads():
    """packages() reads only each distribution's header; the answer is importlib's own."""
    from importlib import metadata

    expected = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            expected[name] = dist.version or ""
    assert context.packages() == expected and "grpcio" in expected


def test_threads_starting_runs_at_once_run_each_probe_once(tmp_path, monkeypatch):
    """The first inits of several threads share one package scan and one set of git processes
    (each thread ran them before: ~0.45 s for four threads)."""
    import threading
    import time

    calls = []

    @context._once
    def probe():
        calls.append(1)
        time.sleep(0.05)  # long enough for every thread to miss
        return {"x": 1}

    repo = _git_repo(tmp_path)
    monkeypatch.chdir(repo)
    context._GIT_CACHE.clear()
    forks = []
    real_run = context._run

    def counted(cmd, *a, **k):
        forks.append(cmd)
        time.sleep(0.02)
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(context, "_run", counted)
    answers, gits = [], []
    threads = [
        threading.Thread(target=lambda: (answers.append(probe()), gits.append(context.git_info())))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [{"x": 1}] * 4 and len(calls) == 1
    assert len(gits) == 4 and all(g == gits[0] for g in gits) and len(gits[0]["git_commit"]) == 40
    assert len(forks) == len(set(map(tuple, forks)))  # each git command ran once, not once per thread


def test_set_seed_seeds_and_records(tmp_path):
    import random

    import numpy as np

    runstream.set_seed(123)
    a, na = random.random(), np.random.rand()
    run = runstream.init("p", mode="disabled", spool_dir=str(tmp_path))
    runstream.set_seed(123, name="data_seed")
    assert (random.random(), np.random.rand()) == (a, na)
    assert run.config["seeds.data_seed"] == 123
    run.finish()


def test_the_sdks_environ_reads_what_os_environ_holds_now(monkeypatch):
    """init reads its ~60 variables through ENVIRON (os.environ's store, without its per-lookup
    encoding): a variable set, changed or removed a moment ago must read the same as os.environ."""
    import os

    from runstream._internal.environ import ENVIRON

    monkeypatch.setenv("RUNSTREAM_FLUSH_INTERVAL_S", "0.5")
    monkeypatch.setenv("RS_TEST_TEXT", "héllo wörld")
    assert ENVIRON.get("RS_TEST_TEXT") == os.environ["RS_TEST_TEXT"] == "héllo wörld"
    assert resolve().flush_interval_s == 0.5
    monkeypatch.setenv("RUNSTREAM_FLUSH_INTERVAL_S", "0.25")
    assert resolve().flush_interval_s == 0.25
    monkeypatch.delenv("RUNSTREAM_FLUSH_INTERVAL_S")
    assert ENVIRON.get("RUNSTREAM_FLUSH_INTERVAL_S") is None and "RUNSTREAM_FLUSH_INTERVAL_S" not in ENVIRON
    assert resolve().flush_interval_s == 0.2  # the default again
    with pytest.raises(KeyError):
        ENVIRON["RUNSTREAM_FLUSH_INTERVAL_S"]  # noqa: B018
    monkeypatch.setenv("RANK", "3")
    assert distributed.rank() == 3
