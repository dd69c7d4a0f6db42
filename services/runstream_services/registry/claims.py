"""Registry changes that must happen once, in order, even when several processes serve the
registry of one database (query replicas): a model's version numbers, and the moves of one alias.
A per-process lock (service.py) cannot see the other processes, and ClickHouse has no
transactions; what it has is insert deduplication by token: of several inserts carrying one token,
the store keeps the first and silently drops the rest (model_version_claims keeps a window of
100,000 tokens, migration 0007). So a claim is one insert whose token names what is claimed, and a
claimant that reads its own claim back holds it; everyone else knows they lost.

- A model's name (subject "model#model"): the first claim creates the model, the others get
  ALREADY_EXISTS.
- Version N of a model: the token is (project, model, N); a loser claims N+1. A claimant that
  fails after its claim leaves a gap in the numbers, never a duplicate.
- Change N of an alias (subject "model@alias") or of a model's or version's metadata (subjects
  "model#edits", "model:3#edits"; '@' and '#' are in no model name, so these never meet a version
  claim): the claim also carries the revision the change's row will have. Before claiming, a
  changer reads the subject's rows, then its claims; while a claim has no row yet (someone is
  between claim and insert) it waits, so when it claims N+1 every earlier change is visible: an
  alias move's "from" is the target the previous move set, and an edit starts from the previous
  edit's description and tags (none is lost). A claim whose row has not appeared after STALE_MS
  counts as abandoned (its claimant died); a claimant too slow to insert within half of that gives
  up instead of writing late.

This relies on the store showing an insert to the next read and deduplicating by token, as chDB
and a single ClickHouse server do (the schema's MergeTree tables are not replicated)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from runstream_services.errors import Unavailable
from runstream_services.query.sql import Query
from runstream_services.registry import rules, sql

MAX_CLAIMS = 50  # version numbers one CreateModelVersion tries before giving up
STALE_MS = 30_000  # a change's claim without its row after this long is abandoned
MOVE_WAIT_S = 40.0  # the longest a change waits for another process's change of the same subject

S = TypeVar("S")
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
class Turn(Generic[S]):
    """A change's turn: the state every earlier change of the subject left (whichever process
    made it), the revision to write the change with (0: nothing to write, nothing claimed), and
    when the claim was made."""

    state: S
    revision: int
    claimed_ms: int = 0

    def check_in_time(self) -> None:
        """Raises Unavailable when the claim is old enough that other processes may soon treat it
        as abandoned: then the change must not be written."""
        if _now_ms() - self.claimed_ms > STALE_MS // 2:
            raise Unavailable("the registry change took too long to write and was not written; try again")


async def turn(
    rows: Rows,
    insert: Insert,
    db: str,
    project: str,
    subject: str,
    load: Callable[[], Awaitable[tuple[S, set[int]]]],
    needed: Callable[[S], bool],
    revisions: rules.Revisions,
) -> Turn[S]:
    """Waits until every earlier change of `subject` (of any process) is visible, then claims the
    next one (see the module docstring). `load` reads the subject's state and the revisions of the
    rows it holds; `needed(state)` says whether there is anything to write. The caller writes its
    row with Turn.revision within STALE_MS / 2 of the claim or not at all (Turn.check_in_time)."""
    claim_id = uuid.uuid4().hex
    deadline = time.monotonic() + MOVE_WAIT_S
    while True:
        state, done = await load()  # first the rows, then the claims: see the module docstring
        claims = await rows(sql.claims_of(db, project, subject))
        now = _now_ms()
        if any(json.loads(c).get("revision", 0) not in done and now - t < STALE_MS for _n, c, t in claims):
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"{subject!r} is being changed by another registry process and its change did not "
                    f"appear within {MOVE_WAIT_S:.0f} s; try again"
                )
            await asyncio.sleep(0.05)
            continue
        if not needed(state):
            return Turn(state, 0)
        n = max((int(c[0]) for c in claims), default=0) + 1
        revision = revisions.next(max(int(time.time() * 1_000_000), max(done, default=0) + 1))
        claim = json.dumps({"id": claim_id, "revision": revision})
        claimed_ms = _now_ms()
        if await _claim(rows, insert, db, project, subject, n, claim):
            return Turn(state, revision, claimed_ms)


async def first(rows: Rows, insert: Insert, db: str, project: str, subject: str) -> bool:
    """True for the one caller, of any process, that claims `subject` first (a model's name)."""
    return await _claim(rows, insert, db, project, subject, 1, uuid.uuid4().hex)


def model_subject(model: str) -> str:
    return f"{model}#model"


def alias_subject(model: str, alias: str) -> str:
    return f"{model}@{alias}"


def edits_subject(model: str, version: int = 0) -> str:
    """The subject of a model's (version 0) or a version's metadata edits ('#' is in no name)."""
    return f"{model}:{version}#edits" if version else f"{model}#edits"
