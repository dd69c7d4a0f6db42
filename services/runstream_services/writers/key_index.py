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
        self._added: set[int] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._loaded) + len(self._added)

    def may_contain(self, key: Hashable) -> bool:
        """False only when the key was never loaded or added."""
        h = hash(key)
        if h in self._added:
            return True
        i = int(np.searchsorted(self._loaded, h))
        return i < len(self._loaded) and int(self._loaded[i]) == h

    def add(self, key: Hashable) -> None:
        with self._lock:
            self._added.add(hash(key))
