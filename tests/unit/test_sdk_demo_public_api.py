"""The demo (`runstream up --demo`) is a user of the SDK like any other: it may use only the public
API (issue 9 found it patching runstream.run._time and appending to run._entries). An AST check
fails on any private SDK import or any `._name` reached through something other than `self`; a
short trial logged against the stand-in IngestService shows the public hooks carry its simulated
times and system metrics to the wire."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np

from runstream.v1 import types_pb2
from tests.unit.sdk_fake_ingest import FakeIngest

SERVICES = Path(__file__).resolve().parents[2] / "services" / "runstream_services"
DEMO_FILES = (SERVICES / "demo.py", SERVICES / "demo_data.py")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_sdk_uses(source: str) -> list[str]:
    """Where the code reaches past the SDK's public API: `runstream.<private module>` imports,
    the `runstream.run` module (Run is public as runstream.Run), `._x` on anything but self/cls,
    and getattr/setattr/hasattr/delattr with a private name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "runstream" and (len(parts) > 1 and (_private(parts[1]) or parts[1] == "run")):
                    found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "runstream":
            parts = node.module.split(".")
            if any(_private(p) for p in parts) or parts[1:2] == ["run"]:
                found.append(f"{where}: from {node.module} import ...")
            found += [f"{where}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr == "run":
            if isinstance(node.value, ast.Name) and node.value.id == "runstream":
                found.append(f"{where}: runstream.run (the module; use runstream.Run / runstream.init)")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
        ):
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value):
                found.append(f"{where}: {node.func.id}(..., {name.value!r})")
    return found


def test_the_check_catches_what_the_demo_used_to_do():
    old = (
        "import runstream.run as run_module\n"
        "from runstream._internal.buffer import SYSTEM\n"
        "run_module._time = clock\n"
        "run._entries.append(x)\n"
        "getattr(run, '_entries', None)\n"
        "runstream.run.Run\n"
    )
    assert len(private_sdk_uses(old)) == 6
    assert private_sdk_uses("import runstream\nself._stop.set()\nrunstream.init(project='p').log({})\n") == []


def test_demo_uses_only_the_public_sdk():
    for path in DEMO_FILES:
        assert private_sdk_uses(path.read_text()) == [], path.name


def test_a_demo_trial_carries_its_simulated_times_and_system_metrics(tmp_path, monkeypatch):
    from runstream_services import demo

    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("RUNSTREAM_CAPTURE_PACKAGES", "false")
    fake = FakeIngest()
    try:
        spec = next(s for s in demo.grid() if s.killed)  # the shortest trial: stopped at 40%
        start = time.time() - 5 * 3600
        clock = demo.Clock(start)
        assert demo.log_trial(spec, fake.endpoint, clock, tmp_path) == "killed"
        run_start, finish = fake.bodies("run_start")[0], fake.bodies("run_finish")[0]
        assert run_start.start_ms == int(start * 1000)
        assert finish.end_ms == int(clock.now * 1000) and finish.state == types_pb2.RUN_STATE_KILLED
        for kind in (types_pb2.METRIC_KIND_USER, types_pb2.METRIC_KIND_SYSTEM):
            batches = [b for b in fake.bodies("metrics") if b.kind == kind]
            times = np.concatenate([np.frombuffer(b.times_ms, "<i8") for b in batches])
            assert batches and run_start.start_ms <= times.min() and times.max() <= finish.end_ms
        system = [p for p in fake.points(kind=types_pb2.METRIC_KIND_SYSTEM) if p[0] == "system/cpu_percent"]
        assert [step for _, step, _, _ in system] == list(range(len(system)))  # the sampler's numbering
        assert len(system) == int(demo.STEPS * 0.4) // demo.SYSTEM_EVERY
    finally:
        fake.stop()
