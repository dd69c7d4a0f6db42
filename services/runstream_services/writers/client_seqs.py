"""The seqs stored for one SDK client, as closed ranges (the `client_seqs` table, migration 0005).

An SDK numbers its requests 1, 2, 3, ... and resends what was not acked, so the stored seqs of a
client are one range with, at most, a few gaps (requests refused, or in flight). Kept as sorted,
disjoint [lo, hi] ranges: membership is a binary search, adding merges neighbours.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from runstream_services.storage.clickhouse import READ_YOUR_WRITES


class SeqRanges:
    __slots__ = ("_ranges",)

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        self._ranges: list[list[int]] = []
        for lo, hi in sorted(ranges):
            self._add(int(lo), int(hi))

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self._ranges, [seq, float("inf")]) - 1
        return i >= 0 and self._ranges[i][1] >= seq

    def __len__(self) -> int:
        """How many seqs (not ranges)."""
        return sum(hi - lo + 1 for lo, hi in self._ranges)

    def add(self, seq: int) -> None:
        self._add(seq, seq)

    def update(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self._add(seq, seq)

    def merge(self, other: SeqRanges) -> None:
        for lo, hi in other._ranges:
            self._add(lo, hi)

    def ranges(self) -> list[tuple[int, int]]:
        return [(lo, hi) for lo, hi in self._ranges]

    def _add(self, lo: int, hi: int) -> None:
        add_range(self._ranges, lo, hi)


def add_range(ranges: list[list[int]], lo: int, hi: int) -> None:
    """Adds [lo, hi] to sorted, disjoint closed ranges, merging overlapping and adjacent ones."""
    i = bisect.bisect_left(ranges, [lo, lo])
    if i > 0 and ranges[i - 1][1] >= lo - 1:
        i -= 1
    j = i
    while j < len(ranges) and ranges[j][0] <= hi + 1:
        lo, hi = min(lo, ranges[j][0]), max(hi, ranges[j][1])
        j += 1
    ranges[i:j] = [[lo, hi]]


class StoredSeqsQuery:
    """`(client_id, seq) -> stored?` answered by the store's tables, for a process that stores
    nothing itself (an ingest pod beside Kafka writers): it asks only for run events that an ended
    run would refuse, so that a resent run_start/run_finish whose ack was lost is answered again
    instead of refused. No cache: these are rare, and another process is writing the answers."""

    def __init__(self, client, db: str):
        self.client, self.db = client, db

    def __call__(self, client_id: str, seq: int) -> bool:
        seqs = SeqRanges()
        for (ranges,) in self.client.query(
            f"SELECT argMax(ranges, updated_ms) FROM {self.db}.client_seqs WHERE client_id = %(c)s GROUP BY run_id",
            parameters={"c": client_id},
            settings=READ_YOUR_WRITES,
        ).result_rows:
            seqs.merge(SeqRanges(ranges))
        if seq in seqs:
            return True
        return bool(  # stored before migration 0005
            self.client.query(
                f"SELECT count() FROM {self.db}.ingested_requests WHERE client_id = %(c)s AND seq = %(s)s",
                parameters={"c": client_id, "s": seq},
                settings=READ_YOUR_WRITES,
            ).result_rows[0][0]
        )
