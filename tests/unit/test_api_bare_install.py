"""runstream.Api with only the SDK's dependencies (grpcio + protobuf): numpy and pandas are blocked
in a child interpreter. The one-RPC calls work and fail with the SDK's typed errors; the
DataFrame and array methods say what to install instead of failing at import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import sys
    BLOCKED = {"numpy", "pandas"}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Block())
    import runstream
    from runstream.errors import RunstreamError, ServerUnavailableError

    with runstream.Api(endpoint="127.0.0.1:1", timeout_s=2) as api:
        try:
            api.list_projects()
        except ServerUnavailableError as exc:
            print("UNREACHABLE", exc.code, exc.unreachable)
        for name, call in (("projects", api.projects), ("series_arrays", lambda: api.series_arrays("p", ["r"], ["k"]))):
            try:
                call()
            except RunstreamError as exc:
                print("NEEDS", name, "pip install" in str(exc))
    print("LOADED", sorted(m for m in BLOCKED if m in sys.modules))
    """
)


def test_api_calls_need_only_grpc_and_protobuf():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "UNREACHABLE UNAVAILABLE True" in lines
    assert "NEEDS projects True" in lines and "NEEDS series_arrays True" in lines
    assert "LOADED []" in lines
