"""The process's system sampler (client/runstream/_internal/system.py): one thread serves every run
of the process, each run's samples are numbered by its own counter, a run gets one sample at its
stop and none after it, and a forked child samples with a thread of its own."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque

import pytest

from runstream._internal.buffer import SYSTEM
from runstream._internal.system import SystemSampler


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "runstream-system"]


def _steps(entries: deque) -> list[int]:
    assert all(e[3] == SYSTEM for e in entries)
    return [e[0] for e in entries]


def test_one_thread_samples_every_run_and_nothing_follows_a_stop():
    fast, slow = deque(), deque()
    a = SystemSampler(fast, 0.02, itertools.count())
    b = SystemSampler(slow, 0.06, itertools.count())
    time.sleep(0.4)
    assert len(_sampler_threads()) == 1  # not one per run
    a.stop()
    at_stop = len(fast)
    time.sleep(0.15)
    assert len(fast) == at_stop  # stopped: nothing appended after stop() returned
    b.stop()
    assert _steps(fast) == list(range(len(fast))) and len(fast) >= 6
    assert _steps(slow) == list(range(len(slow))) and 3 <= len(slow) < len(fast)
    assert all("system/proc_rss_mb" in e[2] for e in list(fast) + list(slow))
    times = [e[1] for e in fast]
    assert times == sorted(times)


def test_a_run_stopped_at_once_still_has_one_sample_taken_at_its_stop():
    entries = deque()
    before = time.time()
    sampler = SystemSampler(entries, 60.0, itertools.count(5))  # numbering continues log_system's
    sampler.stop()
    assert len(entries) == 1
    step, when, data, kind = entries[0]
    assert (step, kind) == (5, SYSTEM) and before <= when <= time.time()
    assert data["system/proc_rss_mb"] > 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_samples_with_a_thread_of_its_own():
    parent = SystemSampler(deque(), 0.02, itertools.count())  # the parent's thread is running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report how many samples a run of its own got, then leave at once
        try:
            entries = deque()
            child = SystemSampler(entries, 0.02, itertools.count())
            time.sleep(0.3)
            child.stop()
            os.write(write, str(len(entries)).encode())
        finally:
            os._exit(0)
    os.close(write)
    got = os.read(read, 32)
    os.waitpid(pid, 0)
    parent.stop()
    assert int(got) >= 5  # a thread sampled in the child (the parent's does not exist there)


def test_a_host_that_refuses_the_probe_costs_the_samples_not_the_finish(monkeypatch):
    from runstream._internal import system

    def refuse():
        raise PermissionError("/proc/meminfo: permission denied")

    monkeypatch.setattr(system, "sample_host", refuse)
    entries = deque()
    refused = SystemSampler(entries, 0.02, itertools.count())
    time.sleep(0.1)
    refused.stop()  # finish() takes this sample: it must not raise
    assert not entries
    monkeypatch.undo()
    after = deque()
    sampler = SystemSampler(after, 0.02, itertools.count())
    time.sleep(0.15)
    sampler.stop()
    assert len(after) >= 3  # the process's thread outlived the refusals
