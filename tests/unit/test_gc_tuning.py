"""gc_tuning: the server's collector thresholds, the frozen start-up heap, and the pauses it
reports on /metrics."""

from __future__ import annotations

import gc
import weakref

import pytest

from runstream_services.gc_tuning import GC_THRESHOLDS, tune_gc
from runstream_services.metrics_http import Metrics


@pytest.fixture
def restored_gc():
    """tune_gc changes the process's collector: this test process gets its own back afterwards."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks


def test_tune_gc_freezes_start_up_sets_the_thresholds_and_counts_every_collection(restored_gc):
    assert gc.get_threshold() != GC_THRESHOLDS  # Python's default, so the test shows a change
    metrics = Metrics()
    pauses = tune_gc(metrics)
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 1_000  # what this process allocated before: out of every pass
    before = list(pauses.collections)
    gc.collect(0)
    gc.collect(0)
    gc.collect(2)
    assert pauses.collections[0] == before[0] + 2
    assert pauses.collections[2] == before[2] + 1
    assert all(s > 0 for s in (pauses.seconds[0], pauses.seconds[2]))
    text = metrics.render()
    assert "# TYPE runstream_gc_collections_total counter" in text
    assert f'runstream_gc_collections_total{{generation="2"}} {pauses.collections[2]}' in text
    assert 'runstream_gc_pause_seconds_total{generation="0"}' in text


def test_cycles_are_still_freed_without_a_manual_collect(restored_gc):
    """Higher thresholds mean fewer passes, not none: once more than GC_THRESHOLDS[0] objects were
    allocated, the collector has freed the cycles made before."""
    tune_gc()

    class Node:
        pass

    def cycle() -> Node:
        a, b = Node(), Node()
        a.other, b.other = b, a  # only the cyclic collector frees these
        return a

    made = 100_000  # two objects each: past the threshold at least four times over
    assert GC_THRESHOLDS[0] <= made // 2
    first = weakref.ref(cycle())
    assert first() is not None
    for _ in range(made):
        cycle()
    assert first() is None
