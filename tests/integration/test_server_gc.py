"""`runstream server` tunes its collector once started (gc_tuning.py) and reports the pauses."""

from __future__ import annotations

from runstream_services.gc_tuning import GC_THRESHOLDS


def test_the_server_reports_its_collections_on_metrics(embedded_server):
    metrics = embedded_server.metrics()
    for generation in range(3):
        assert f'runstream_gc_collections_total{{generation="{generation}"}}' in metrics
        assert f'runstream_gc_pause_seconds_total{{generation="{generation}"}}' in metrics
    # tuned: a full pass needs GC_THRESHOLDS[0] * [1] * [2] allocations; an idle server made none
    assert metrics['runstream_gc_collections_total{generation="2"}'] == 0, GC_THRESHOLDS
