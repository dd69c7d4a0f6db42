"""A flag that loop-side code sets and coroutines wait on, with an optional timeout.

asyncio.Event has no timeout of its own, and on Python 3.11 `asyncio.wait_for(event.wait(), t)`
wraps each wait in a Task, and a timeout cancels it and waits for the cancellation. The SDK's
worker waits like this several times per run (the batch tick, the wait for acks, the stream's
wait for something to send), and in a loop of many short runs that overhead was a quarter of the
worker thread's time (py-spy, issue 11). Here a wait is one future and, with a timeout, one timer.
Loop thread only, like asyncio.Event.
"""

from __future__ import annotations

import asyncio


def _release(waiter: asyncio.Future, value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


class Wakeup:
    __slots__ = ("_flag", "_loop", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._flag = False
        self._loop = loop  # None: the loop of the first wait
        self._waiters: list[asyncio.Future] = []

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        """Sets the flag and releases every waiter (True)."""
        self._flag = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _release(waiter, True)

    def clear(self) -> None:
        self._flag = False

    async def wait(self, timeout: float | None = None) -> bool:
        """True once the flag is set (at once when it already is); False after `timeout` seconds."""
        if self._flag:
            return True
        # remembered, not asked for each time: on 3.11 get_running_loop() makes a getpid() system
        # call, ~4 % of the SDK's worker thread in a loop of short runs (py-spy --native)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, _release, waiter, False) if timeout is not None else None
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._waiters:  # timed out or cancelled: set() did not take it
                self._waiters.remove(waiter)
