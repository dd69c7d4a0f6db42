"""SeqRanges (writers/client_seqs.py): a client's stored seqs as closed ranges, checked against a
plain set under the orders an SDK produces (in order, resends, gaps filled later)."""

from __future__ import annotations

import random

from runstream_services.writers.client_seqs import SeqRanges


def _runs(seqs: set[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for seq in sorted(seqs):
        if out and out[-1][1] == seq - 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return [(lo, hi) for lo, hi in out]


def test_ranges_equal_the_runs_of_the_seqs_added_in_any_order():
    rng = random.Random(5)
    for _ in range(200):
        ranges, seen = SeqRanges(), set()
        seqs = list(range(1, rng.randint(2, 60)))
        for i in range(len(seqs) - 1):  # mostly in order, some swapped (acks out of order)
            if rng.random() < 0.2:
                seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
        seqs = [s for s in seqs if rng.random() > 0.1]  # gaps: refused or still in flight
        seqs += rng.sample(seqs, min(len(seqs), 3)) if seqs else []  # resends of stored ones
        for seq in seqs:
            ranges.add(seq)
            seen.add(seq)
            assert ranges.ranges() == _runs(seen)
        assert len(ranges) == len(seen)
        assert all(s in ranges for s in seen)
        assert not any(s in ranges for s in range(0, 70) if s not in seen)
