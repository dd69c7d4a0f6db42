"""The SDK with only grpcio + protobuf: numpy, pandas, psutil, tqdm and pynvml are blocked in a
child interpreter by a sys.meta_path finder. The sync target is the in-process stand-in
IngestService (tests/unit/sdk_fake_ingest.py), since the unit suite runs without the real server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.unit.sdk_fake_ingest import FakeIngest

CHILD = textwrap.dedent(
    """
    import sys
    BLOCKED = {"numpy", "pandas", "psutil", "tqdm", "pynvml"}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Block())
    import runstream
    from runstream.sync import sync_paths

    run = runstream.init("bare", mode="offline", spool_dir=sys.argv[1], system_metrics_interval_s=0.05,
                         config={"lr": 0.1})
    for i in range(100):
        run.log({"loss": 1.0 / (i + 1), "flag": True}, step=i)
    run.log_arrays("bulk", list(range(10)), [0.5] * 10)
    try:
        run.log({"bad": "x"})
    except runstream.InvalidValueError:
        print("REJECTED")
    assert run.finish()
    totals = sync_paths([sys.argv[1]], endpoint=sys.argv[2], progress=True)
    print("POINTS", totals["points"])
    print("LOADED", sorted(m for m in BLOCKED if m in sys.modules))
    """
)


def test_import_log_offline_and_sync_without_optional_packages(tmp_path):
    fake = FakeIngest()
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path / "spool"), fake.endpoint],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "REJECTED" in out.stdout
        assert "LOADED []" in out.stdout
        user_points = len(fake.points())
        system_points = len(fake.points(kind=2))
        assert user_points == 210
        assert system_points >= 1  # the sampler falls back to load average / rusage
        assert "POINTS" in out.stdout and "requests" in out.stdout  # plain-text progress lines
    finally:
        fake.stop()
