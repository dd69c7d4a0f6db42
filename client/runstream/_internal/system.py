"""Samples CPU, memory and GPU use of this rank in a daemon thread (one for the process, shared by
its runs) and appends them to each run's buffer as METRIC_KIND_SYSTEM points, tagged (by the batch)
with this process's rank: every rank samples its own machine. Samples are numbered by the run's
system-sample counter, which run.log_system shares. psutil, pynvml and nvidia-smi are optional."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

from .buffer import SYSTEM


def _gpu_sampler() -> Callable[[], dict[str, float]] | None:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

        def nvml() -> dict[str, float]:
            out = {}
            for i, h in enumerate(handles):
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                out[f"system/gpu{i}/util_percent"] = float(util.gpu)
                out[f"system/gpu{i}/mem_used_mb"] = mem.used / 2**20
                out[f"system/gpu{i}/mem_percent"] = 100.0 * mem.used / max(mem.total, 1)
            return out

        return nvml
    except Exception:
        pass
    if shutil.which("nvidia-smi") is None:
        return None

    def smi() -> dict[str, float]:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return {}
        res = {}
        for i, line in enumerate(out.strip().splitlines()):
            try:
                util, used, total = (float(x) for x in line.split(","))
            except ValueError:
                continue
            res[f"system/gpu{i}/util_percent"] = util
            res[f"system/gpu{i}/mem_used_mb"] = used
            res[f"system/gpu{i}/mem_percent"] = 100.0 * used / max(total, 1.0)
        return res

    return smi


_PROCESS = None  # psutil.Process of this process (made again in a forked child: pid differs)


def sample_host() -> dict[str, float]:
    global _PROCESS
    try:
        import psutil
    except ImportError:
        out = {}
        if hasattr(os, "getloadavg"):
            out["system/load1"] = os.getloadavg()[0]
        try:
            import resource

            out["system/proc_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except ImportError:
            pass
        return out
    if _PROCESS is None or _PROCESS.pid != os.getpid():
        _PROCESS = psutil.Process()
    vm = psutil.virtual_memory()
    return {
        "system/cpu_percent": psutil.cpu_percent(interval=None),
        "system/memory_percent": vm.percent,
        "system/memory_used_mb": (vm.total - vm.available) / 2**20,
        "system/proc_rss_mb": _PROCESS.memory_info().rss / 2**20,
    }


class SystemSampler:
    """One run's system samples: its subscription to the process's sampler thread (_HostSampler),
    which appends a sample to the run's buffer every `interval_s`, and at stop() one last sample,
    so even a short run has one."""

    def __init__(self, entries, interval_s: float, steps: Iterator[int]):
        self.entries = entries  # the run buffer's deque
        self.interval_s = interval_s
        self.steps = steps  # the run's system-sample counter (an itertools.count: next() is atomic)
        _SAMPLER.add(self)

    def append(self, when: float, data: dict[str, float]) -> None:
        if data:
            self.entries.append((next(self.steps), when, data, SYSTEM))

    def stop(self) -> None:
        """No sample is appended after this returns but the last one, taken here."""
        _SAMPLER.remove(self)
        self.append(*_SAMPLER.sample())


class _HostSampler:
    """One daemon thread for the process samples for every run in it (issue 11): a sampler thread
    per run cost each run ~1.3 ms of CPU to start (a failed pynvml import, a PATH search for
    nvidia-smi, two host samples, a thread) and ~0.5 ms to stop, measured with 250 runs in one
    process; a sweep or a process hosting many ranks paid that per run. The samples describe the
    host (and this process), so one sample serves every run due for it. Started with the first
    run; idle (waiting, not polling) while none is sampled."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._due: dict[SystemSampler, float] = {}  # run -> when its next sample is due
        self._thread: threading.Thread | None = None
        self._sleeps_until = 0.0  # when the thread wakes by itself (it is waiting until then)
        self._sample_lock = threading.Lock()
        self._gpu: Callable[[], dict[str, float]] | None = None
        self._gpu_probed = False

    def add(self, run: SystemSampler) -> None:
        with self._cond:
            due = self._due[run] = time.monotonic() + run.interval_s
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._main, name="runstream-system", daemon=True)
                self._thread.start()
            elif due < self._sleeps_until:  # a run beside others is due after them: no wake-up
                self._cond.notify()

    def remove(self, run: SystemSampler) -> None:
        with self._cond:  # the thread appends under this lock: none can follow once this returns
            self._due.pop(run, None)

    def sample(self) -> tuple[float, dict[str, float]]:
        """(unix time, host and GPU sample); the GPU probe runs once per process. Never raises
        (finish() takes a sample): a host that refuses a probe gives an empty sample, which no run
        records."""
        with self._sample_lock:
            try:
                if not self._gpu_probed:
                    self._gpu_probed, self._gpu = True, _gpu_sampler()
                    sample_host()  # psutil's first cpu_percent is meaningless
                data = sample_host()
            except Exception:  # e.g. psutil denied /proc on a locked-down host
                return time.time(), {}
            if self._gpu is not None:
                try:
                    data.update(self._gpu())
                except Exception:
                    self._gpu = None
            return time.time(), data

    def _main(self) -> None:
        self.sample()  # probes the GPU and primes cpu_percent before the first sample is due
        while True:
            with self._cond:
                now = time.monotonic()
                due = [run for run, at in self._due.items() if at <= now]
                if not due:
                    self._sleeps_until = min(self._due.values(), default=now + 3600.0)
                    self._cond.wait(self._sleeps_until - now)
                    self._sleeps_until = 0.0
                    continue
                for run in due:
                    self._due[run] = now + run.interval_s
            when, data = self.sample()  # outside the lock: runs start and stop meanwhile
            with self._cond:
                for run in due:
                    if run in self._due:  # not stopped while the sample was taken
                        run.append(when, data)

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's thread is gone and its locks may have been held; the
        child's copies of the parent's runs do not sample (run._after_fork_child)."""
        self.__init__()


_SAMPLER = _HostSampler()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SAMPLER.reset_after_fork)
