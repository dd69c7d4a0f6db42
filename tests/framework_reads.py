"""Reading back what a framework integration (runstream.integrations) logged into a real server,
through the public read API: the run record, one key's history, one artifact's bytes."""

from __future__ import annotations

import runstream


def read_run(endpoint: str, project: str, run_id: str) -> dict:
    with runstream.Api(endpoint=endpoint) as api:
        return api.run(project, run_id)


def curves(endpoint: str, project: str, run_id: str) -> dict[str, dict[int, float]]:
    """{key: {step: value}} of every user metric of the run; also asserts one point per
    (key, step) and that every point carries rank 0 (the integrations log from one process)."""
    with runstream.Api(endpoint=endpoint) as api:
        history = api.history(run_id, project=project)
    out: dict[str, dict[int, float]] = {}
    for key, step, value, rank in zip(history.key, history.step, history.value, history["rank"], strict=True):
        assert int(step) not in out.setdefault(key, {}), f"{key} step {step} stored twice"
        assert int(rank) == 0, f"{key} step {step} has rank {rank}"
        out[key][int(step)] = float(value)
    return out


def artifact_bytes(endpoint: str, project: str, run_id: str, name: str) -> tuple[dict, bytes]:
    """The manifest row and the bytes of the one file of artifact `name`."""
    record = read_run(endpoint, project, run_id)
    files = [a for a in record["artifacts"] if a["name"] == name]
    assert len(files) == 1, f"artifact {name!r}: {files}"
    with runstream.Api(endpoint=endpoint) as api:
        return files[0], api.download_artifact(project, run_id, files[0]["sha256"])
