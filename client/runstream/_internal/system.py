"""Samples CPU, memory and GPU use of this rank in a daemon thread and appends them to the run's
buffer as METRIC_KIND_SYSTEM points, tagged (by the batch) with this process's rank: every rank
samples its own machine. Samples are numbered by the run's system-sample counter, which
run.log_system shares. psutil, pynvml and nvidia-smi are optional."""

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


def sample_host() -> dict[str, float]:
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
    vm = psutil.virtual_memory()
    return {
        "system/cpu_percent": psutil.cpu_percent(interval=None),
        "system/memory_percent": vm.percent,
        "system/memory_used_mb": (vm.total - vm.available) / 2**20,
        "system/proc_rss_mb": psutil.Process().memory_info().rss / 2**20,
    }


class SystemSampler:
    def __init__(self, entries, interval_s: float, steps: Iterator[int]):
        self.entries = entries  # the run buffer's deque
        self.interval_s = interval_s
        self.steps = steps  # the run's system-sample counter (an itertools.count: next() is atomic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="runstream-system", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        gpu = _gpu_sampler()
        sample_host()  # psutil's first cpu_percent is meaningless
        while True:
            stopping = self._stop.wait(self.interval_s)
            data = sample_host()  # one last sample at stop, so even a short run has one
            if gpu is not None:
                try:
                    data.update(gpu())
                except Exception:
                    gpu = None
            if data:
                self.entries.append((next(self.steps), time.time(), data, SYSTEM))
            if stopping:
                return

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
