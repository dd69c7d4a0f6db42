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
        if ranges:
            for lo, hi in sorted(ranges):
                self._add(int(lo), int(hi))

    def __contains__(self, seq: int) -> bool:
        if not self._ranges or seq > self._ranges[-1][1]:  # a new request: after all stored
            return False
        i = bisect.bisect_right(self._ranges, [seq, float("inf")]) - 1
        return i >= 0 and self._ranges[i][1] >= seq

    def __len__(self) -> int:
        """How many seqs (not ranges)."""
        return sum(hi - lo + 1 for lo, hi in self._ranges)

    def add(self, seq: int) -> None:
        ranges = self._ranges
        if ranges and ranges[-1][1] == seq - 1:  # the next seq of a client: nothing after it to merge
            ranges[-1][1] = seq
            return
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


def load_stored_seqs(client, db: str, client_ids: list[str]) -> dict[str, dict[str, SeqRanges]]:
    """{client_id: {run_id: stored seqs}} of `client_ids` as the tables hold them: their
    `client_seqs` rows and the per-request table of before migration 0005. One query each per
    1,000 clients; read with READ_YOUR_WRITES (another writer may have just recorded them)."""
    by_run: dict[str, dict[str, SeqRanges]] = {c: {} for c in client_ids}
    for start in range(0, len(client_ids), 1000):
        chunk = client_ids[start : start + 1000]
        for client_id, run_id, ranges in client.query(
            f"SELECT client_id, run_id, argMax(ranges, updated_ms) FROM {db}.client_seqs "
            "WHERE client_id IN %(c)s GROUP BY client_id, run_id",
            parameters={"c": chunk},
            settings=READ_YOUR_WRITES,
        ).result_rows:
            by_run[client_id].setdefault(run_id, SeqRanges()).merge(SeqRanges(ranges))
        for client_id, run_id, seq in client.query(  # stored before migration 0005
            f"SELECT client_id, run_id, seq FROM {db}.ingested_requests WHERE client_id IN %(c)s",
            parameters={"c": chunk},
            settings=READ_YOUR_WRITES,
        ).result_rows:
            by_run[client_id].setdefault(run_id, SeqRanges()).add(seq)
    return by_run


class StoredSeqsQuery:
    """`(client_id, seq) -> stored?` answered by the store's tables, for a process that stores
    nothing itself (an ingest pod beside Kafka writers): it asks only for run events that an ended
    run would refuse, so that a resent run_start/run_finish whose ack was lost is answered again
    instead of refused. No cache: these are rare, and another process is writing the answers."""

    def __init__(self, client, db: str):
        self.client, self.db = client, db

    def __call__(self, client_id: str, seq: int) -> bool:
        runs = load_stored_seqs(self.client, self.db, [client_id])[client_id]
        return any(seq in seqs for seqs in runs.values())
