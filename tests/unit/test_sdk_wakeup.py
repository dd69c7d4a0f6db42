"""The SDK worker's Wakeup (client/runstream/_internal/wakeup.py): the flag its batch tick, its wait
for acks and its streams sleep on, in place of asyncio.wait_for(event.wait(), timeout)."""

from __future__ import annotations

import asyncio

import pytest

from runstream._internal.wakeup import Wakeup


def test_a_set_flag_answers_at_once_and_a_timeout_answers_false_and_forgets_the_waiter():
    async def scenario():
        loop = asyncio.get_running_loop()
        w = Wakeup()
        w.set()
        t0 = loop.time()
        assert await w.wait(10) is True and loop.time() - t0 < 1
        w.clear()
        assert not w.is_set()
        assert await w.wait(0.02) is False
        assert w._waiters == []  # a timed-out waiter is not kept (nor set later)
        assert all(h.cancelled() for h in loop._scheduled)  # its timer is gone too

    asyncio.run(scenario())


def test_set_releases_every_waiter_and_cancels_their_timers():
    async def scenario():
        loop = asyncio.get_running_loop()
        w = Wakeup()
        waits = [asyncio.ensure_future(w.wait(60)) for _ in range(3)] + [asyncio.ensure_future(w.wait())]
        await asyncio.sleep(0)
        assert len(w._waiters) == 4 and not any(t.done() for t in waits)
        loop.call_later(0.01, w.set)
        assert await asyncio.gather(*waits) == [True] * 4
        assert w._waiters == []
        assert all(h.cancelled() for h in loop._scheduled)  # no 60 s timer left behind

    asyncio.run(scenario())


def test_a_cancelled_wait_leaves_nothing_behind_and_the_next_set_still_works():
    async def scenario():
        w = Wakeup()
        task = asyncio.ensure_future(w.wait(60))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert w._waiters == []
        later = asyncio.ensure_future(w.wait(60))
        await asyncio.sleep(0)
        w.set()
        assert await later is True

    asyncio.run(scenario())
