"""Registry changes that must happen once, in order, even when several processes serve the
registry of one database (query replicas): a model's version numbers, and the moves of one alias.
A per-process lock (service.py) cannot see the other processes, and ClickHouse has no
transactions; what it has is insert deduplication by token: of several inserts carrying one token,
the store keeps the first and silently drops the rest (model_version_claims keeps a window of
100,000 tokens, migration 0007). So a claim is one insert whose token names what is claimed, and a
claimant that reads its own claim back holds it; everyone else knows they lost.

- Version N of a model: the token is (project, model, N); a loser claims N+1. A claimant that
  fails after its claim leaves a gap in the numbers, never a duplicate.
- Move N of an alias (subject "model@alias": '@' is never in a model name, so these never meet a
  version claim): the claim also carries the revision the move row will have. Before claiming,
  a mover reads the alias's moves, then its claims; while a claim has no move row yet (someone is
  between claim and insert) it waits, so when it claims N+1 every earlier move is visible, and the
  target it replaces (the audit log's "from") is the one the previous move set. A claim whose
  row has not appeared after STALE_MS counts as abandoned (its claimant died); a claimant too slow
  to insert within half of that gives up instead of writing late.

This relies on the store showing an insert to the next read and deduplicating by token, as chDB
and a single ClickHouse server do (the schema's MergeTree tables are not replicated)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runstream_services.errors import Unavailable
from runstream_services.query.sql import Query
from runstream_services.registry import rules, sql

MAX_CLAIMS = 50  # version numbers one CreateModelVersion tries before giving up
STALE_MS = 30_000  # an alias move claim without its row after this long is abandoned
MOVE_WAIT_S = 40.0  # the longest a move waits for another process's move of the same alias

Rows = Callable[[Query], Awaitable[list[tuple]]]
Insert = Callable[..., Awaitable[None]]


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _claim(rows: Rows, insert: Insert, db: str, project: str, subject: str, n: int, claim: str) -> bool:
    """Inserts the claim of number `n` of `subject`; True when it is the one the store kept."""
    await insert(
        "model_version_claims", sql.CLAIM_COLUMNS, [[project, subject, n, claim, _now_ms()]],
        token=sql.claim_token(project, subject, n),
    )  # fmt: skip
    holder = await rows(sql.claim_holder(db, project, subject, n))
    return bool(holder) and holder[0][0] == claim


async def version_number(rows: Rows, insert: Insert, db: str, project: str, model: str) -> int:
    """The next version number of the model, claimed for this call alone: (highest written or
    claimed) + 1, and the next one after each lost claim."""
    claim = uuid.uuid4().hex
    for _ in range(MAX_CLAIMS):
        floor = await rows(sql.next_version_floor(db, project, model))
        n = int((floor[0][0] if floor else 0) or 0) + 1
        if await _claim(rows, insert, db, project, model, n, claim):
            return n
    raise Unavailable(
        f"model {model!r}: no free version number after {MAX_CLAIMS} tries (other registry "
        "processes are creating versions of it right now); try again"
    )


@dataclass(frozen=True)
class AliasTurn:
    """The version the alias points at before this move (every earlier move counted; 0: none),
    the revision to write the move with (0: the alias already points where asked, nothing is
    claimed or to be written), and when the claim was made."""

    previous: int
    revision: int
    claimed_ms: int = 0

    def check_in_time(self) -> None:
        """Raises Unavailable when the claim is old enough that other processes may soon treat it
        as abandoned: then the move must not be written."""
        if _now_ms() - self.claimed_ms > STALE_MS // 2:
            raise Unavailable("the alias move took too long to write and was not written; try again")


async def alias_turn(
    rows: Rows,
    insert: Insert,
    db: str,
    project: str,
    model: str,
    alias: str,
    to: int,
    load_moves: Callable[[], Awaitable[list[rules.AliasMove]]],
    revisions: rules.Revisions,
) -> AliasTurn:
    """Waits for this alias's earlier moves (of any process) to be visible, then claims the next
    move (see the module docstring). The caller writes its move row with AliasTurn.revision within
    STALE_MS / 2 of the claim or not at all (AliasTurn.check_in_time)."""
    subject = f"{model}@{alias}"
    claim_id = uuid.uuid4().hex
    deadline = time.monotonic() + MOVE_WAIT_S
    while True:
        moves = await load_moves()  # first the moves, then the claims: see the module docstring
        claims = await rows(sql.claims_of(db, project, subject))
        done = {m.revision for m in moves}
        now = _now_ms()
        waiting = False
        for _n, claim, t in claims:
            revision = json.loads(claim).get("revision", 0)
            if revision not in done and now - t < STALE_MS:
                waiting = True
        if waiting:
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"alias {subject!r} is being moved by another registry process and its move did not "
                    f"appear within {MOVE_WAIT_S:.0f} s; try again"
                )
            await asyncio.sleep(0.05)
            continue
        previous = rules.current_aliases(moves).get(alias, 0)
        if previous == to:
            return AliasTurn(previous, 0)
        n = max((int(c[0]) for c in claims), default=0) + 1
        revision = revisions.next(max(int(time.time() * 1_000_000), max(done, default=0) + 1))
        claim = json.dumps({"id": claim_id, "revision": revision})
        claimed_ms = _now_ms()
        if await _claim(rows, insert, db, project, subject, n, claim):
            return AliasTurn(previous, revision, claimed_ms)
