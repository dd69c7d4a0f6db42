"""The server process's cyclic garbage collector: fewer collections, and their pauses on /metrics.

Python's defaults (700, 10, 10) collect the youngest objects every 700 net allocations and all of
them whenever the objects that survived grew by a quarter. A server keeps what it learns about
every run it writes (run rows, params, client seqs, read-cache entries), so its heap grows with
each new run and full collections come again and again, each over the whole heap with the GIL
held: 16 clients creating 10,000 runs (bench/many_writers.py --only runs) met 14 of them, up to
~110 ms each over 250,000 objects, 1.15 s of collections in a 7.4 s row. With GC_THRESHOLDS none
was full, collections took ~0.24 s, and the row 6.2-6.7 s. What start-up allocated and keeps
(modules, settings, schema) is frozen out of every collection. A frozen object is still freed when
its last reference goes; only a cycle among frozen objects would stay, and start-up's cycles are
collected just before the freeze.

Nothing here changes what is freed: objects without cycles go when their last reference does,
and cycles still go, in fewer, larger passes. Only the server calls tune_gc; the SDK leaves the
collector of the process it runs in alone.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

from runstream_services.metrics_http import Metrics

#: (allocations between collections of the youngest generation, collections of each generation
#: between collections of the next): see the module docstring
GC_THRESHOLDS = (50_000, 20, 100)


class GcPauses:
    """A gc callback that counts each generation's collections and the time they held the process.
    Collections never overlap (the collector runs under the GIL, one at a time)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += time.perf_counter() - self._started

    def collect(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Metrics.add_collector's samples."""
        for generation in range(3):
            labels = {"generation": str(generation)}
            yield "runstream_gc_collections_total", labels, self.collections[generation]
            yield "runstream_gc_pause_seconds_total", labels, self.seconds[generation]


def tune_gc(metrics: Metrics | None = None) -> GcPauses:
    """Call once, when the server has started: freezes what is allocated so far, sets
    GC_THRESHOLDS, and reports the collections from now on to `metrics`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    if metrics is not None:
        metrics.add_collector(pauses.collect)
    return pauses
