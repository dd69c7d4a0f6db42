"""The hypothesis settings of every fuzz test, from the environment: how many examples
(RUNSTREAM_FUZZ_EXAMPLES) and whether a failure is shrunk (RUNSTREAM_FUZZ_SHRINK)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

EXAMPLES = int(os.environ.get("RUNSTREAM_FUZZ_EXAMPLES", "100"))
"""Hypothesis examples per fuzz test (each sends up to 24 requests); CI's short form uses the
default (about 3,000 requests, ~30 s), the long form `RUNSTREAM_FUZZ_EXAMPLES=1000` (about 29,000)."""

SHRINK = os.environ.get("RUNSTREAM_FUZZ_SHRINK", "0") == "1"
"""Shrink a failing example to a minimal one (minutes against a server: each try is a round trip).
Off in CI, which reports the failing example as found (derandomized, so it reproduces); the long
form turns it on."""

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a server round trip; slow moments are not failures
    derandomize=True,  # the same examples on every run, so CI is reproducible
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    print_blob=True,
    phases=tuple(Phase) if SHRINK else tuple(p for p in Phase if p not in (Phase.shrink, Phase.explain)),
)
SNAPSHOT_SETTINGS = settings(FUZZ_SETTINGS, max_examples=max(10, EXAMPLES // 5))
"""For tests that read the seeded run back after every example (slower per example)."""
