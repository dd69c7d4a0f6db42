"""The store writer's cache of run rows: least recently used rows are dropped past a count and a
byte bound, and read back from the runs table on next use (a run's context and tags can be large;
an unbounded cache grew by hundreds of MB for a few such runs)."""

from __future__ import annotations

from collections import OrderedDict

from runstream_services.run_state import RunRow


class RunCache(OrderedDict):
    """Run rows by (project, run_id), least recently used dropped past a count and a byte bound
    (a dropped row is read back from the runs table on next use). Not thread-safe: the store
    writer uses it under its _meta_lock."""

    def __init__(self, max_runs: int, max_bytes: int):
        super().__init__()
        self.max_runs, self.max_bytes, self.nbytes = max_runs, max_bytes, 0
        self._sizes: dict[tuple[str, str], int] = {}

    @staticmethod
    def _size(row: RunRow) -> int:
        tags = sum(len(k) + len(v) for k, v in row.tags.items())  # not len() of each (k, v) pair, which is 2
        return 512 + len(row.context) + len(row.datasets) + len(row.notes) + tags

    def __setitem__(self, key, row: RunRow) -> None:
        super().__setitem__(key, row)
        self.move_to_end(key)
        size = self._size(row)
        self.nbytes += size - self._sizes.get(key, 0)
        self._sizes[key] = size
        while len(self) > 1 and (len(self) > self.max_runs or self.nbytes > self.max_bytes):
            self.pop(next(iter(self)))

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self.nbytes -= self._sizes.pop(key, 0)

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
        return super().get(key, default)

    def pop(self, key, *default):
        self.nbytes -= self._sizes.pop(key, 0)
        return super().pop(key, *default)

    def clear(self) -> None:
        super().clear()
        self._sizes.clear()
        self.nbytes = 0
