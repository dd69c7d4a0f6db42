"""What rich logged data costs, against an embedded `runstream server` child process: media
logged per step and read back (images + histograms), console capture per print (on vs off), and a
server-side console search.

    .venv/bin/python bench/rich_data_costs.py
"""

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import runstream  # noqa: E402
from runstream.api import Api  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    server = ServerProcess(Path(tmp) / "s").start()
    ep = server.endpoint
    rng = np.random.default_rng(0)
    imgs = [rng.random((64, 64, 3)) for _ in range(8)]
    # media: 200 steps x (8 images 64x64 + a histogram of 10k values) + loss
    t0 = time.perf_counter()
    with runstream.init(project="m16", name="media", endpoint=ep, console="off") as run:
        for step in range(200):
            run.log(
                {
                    "loss": 1 / (step + 1),
                    "samples": [runstream.Image(a, caption=f"s{step}") for a in imgs],
                    "w": runstream.Histogram(rng.normal(step / 100, 1, 10_000)),
                },
                step=step,
            )
        t_log = time.perf_counter() - t0
        rid = run.id
    t_fin = time.perf_counter() - t0
    api = Api(endpoint=ep)
    t1 = time.perf_counter()
    items = api.media("m16", rid, "samples")
    t_read = time.perf_counter() - t1
    t1 = time.perf_counter()
    arrs = [it.load() for it in items[:100]]
    t_load = time.perf_counter() - t1
    hist = api.media("m16", rid, "w")
    print(
        f"media: 1,600 images + 200 histograms logged in {t_log:.2f} s (finish incl. {t_fin:.2f} s); "
        f"api.media read {len(items)} image items in {t_read * 1000:.0f} ms; 100 decoded in {t_load * 1000:.0f} ms; {len(hist)} histograms"
    )
    # console: 20,000 prints in a loop, capture vs off (stdout to an in-memory sink)
    for mode in ("off", "capture", "off", "capture"):
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            with runstream.init(project="m16", name=f"console-{mode}", endpoint=ep, console=mode) as run:
                t0 = time.perf_counter()
                for i in range(20_000):
                    print(f"step {i} loss {1 / (i + 1):.4f}")
                t_print = time.perf_counter() - t0
            rid = run.id
        n = len(list(api.iter_console("m16", rid))) if mode == "capture" else 0
        print(f"console={mode}: 20,000 prints {t_print * 1e6 / 20000:.1f} us/print; lines stored {n}")
    t1 = time.perf_counter()
    found = api.console("m16", rid, search="loss 0.0001")
    t_s = time.perf_counter() - t1
    print(f"console search over 20,000 lines: {len(found)} hits in {t_s * 1000:.0f} ms")
    api.close()
    server.kill()
