"""Which runs and SDK clients exist, in memory, for a writer that is the only writer of its store
(embedded mode): "not there" is then answered without a query.

Why: every new run and every new client used to cost one lookup query (~10-20 ms on chDB) before
its first request could be stored (is this run_start a restart? was this seq stored before?),
which capped run creation at a few dozen runs per second. The index holds a 64-bit hash per key
(a sorted numpy array for what was loaded at start, a set for what was added since): a hash that
is absent proves the key is absent; a present one (or a collision) sends the caller to the table
as before. About 8 bytes per key loaded, ~70 per key added while running.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable

import numpy as np


class KeyIndex:
    def __init__(self, keys: Iterable[Hashable] = ()):
        self._loaded = np.unique(np.fromiter((hash(k) for k in keys), dtype=np.int64))
        self._lo, self._hi = (int(self._loaded[0]), int(self._loaded[-1])) if len(self._loaded) else (0, -1)
        self._added: set[int] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._loaded) + len(self._added)

    def may_contain(self, key: Hashable) -> bool:
        """False only when the key was never loaded or added. Asked once per request by ingest
        and per run by the writer: a new run's key is usually neither, and numpy's fixed cost
        per call is spared when nothing was loaded or the hash is outside the loaded range."""
        h = hash(key)
        if h in self._added:
            return True
        loaded = self._loaded
        if not len(loaded) or h < self._lo or h > self._hi:
            return False
        i = int(loaded.searchsorted(h))
        return i < len(loaded) and int(loaded[i]) == h

    def add(self, key: Hashable) -> None:
        with self._lock:
            self._added.add(hash(key))
