"""The SDK's process-wide state and the hooks that act on it: the runs alive in this process,
the current one (the target of the module-level shortcuts), and what happens to them at
interpreter exit (each is finished, with the state an uncaught exception left: failed, or killed
for Ctrl-C), and in a forked child (each switches to child mode, see Run._after_fork_child).

The hooks are installed once, by the first runstream.init; the fork hook at import."""

from __future__ import annotations

import atexit
import os
import sys
import weakref
from typing import TYPE_CHECKING

from runstream import states

if TYPE_CHECKING:
    from runstream.run import Run

_active: weakref.WeakSet[Run] = weakref.WeakSet()
_current: Run | None = None
_exit_state = {"state": states.FINISHED}
_hooks_installed = False


def current_run() -> Run | None:
    """The run the latest `runstream.init` returned, until it finishes (None before / after)."""
    return _current


def started(run: Run) -> None:
    """A new run becomes the current one and is finished at exit if the program does not."""
    global _current
    _install_hooks()
    _active.add(run)
    _current = run


def finished(run: Run) -> None:
    global _current
    _active.discard(run)
    if _current is run:
        _current = None


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        _exit_state["state"] = states.KILLED if issubclass(exc_type, KeyboardInterrupt) else states.FAILED
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def _at_exit() -> None:
    for run in list(_active):
        try:
            run._at_exit = True  # a server never reached is not waited for (Pipeline.close)
            run.finish(_exit_state["state"])
        except Exception as exc:  # never raise at interpreter exit
            print(f"runstream: could not finish run {run.id}: {exc}", file=sys.stderr)


#: in a forked child: the parent's worker and pipelines, kept referenced so that they are never
#: freed there (freeing a gRPC channel calls into gRPC core, whose threads did not survive the fork;
#: that crashed children now and then: SIGABRT in ev_epoll1_linux.cc, or SIGSEGV)
_inherited_from_parent: list = []


def _after_fork_in_child() -> None:
    from runstream._internal.worker import Worker

    _inherited_from_parent.append(Worker._instance)
    Worker.forget_after_fork()
    for run in list(_active):
        _inherited_from_parent.append(run._pipeline)
        run._after_fork_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
