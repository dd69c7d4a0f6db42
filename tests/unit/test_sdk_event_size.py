"""A config, summary or run start too large to send is refused on the caller's thread (issue 10,
item 5): before, it went out, the server's transport refused the whole message, and the SDK
resent it forever, so nothing logged after it arrived. Runs against the stand-in ingest server
(tests/unit/sdk_fake_ingest.py)."""

from __future__ import annotations

import pytest

import runstream
from runstream import InvalidValueError
from runstream.run import MAX_RUN_EVENT_BYTES

BIG = "x" * (MAX_RUN_EVENT_BYTES + 1)


def _init(fake, tmp_path, **kw):
    return runstream.init(
        "unit",
        endpoint=fake.endpoint,
        spool_dir=str(tmp_path / "spool"),
        flush_interval_s=0.05,
        system_metrics_interval_s=0,
        capture_packages=False,
        **kw,
    )


def test_oversized_config_update_is_refused_and_later_data_arrives(fake, tmp_path):
    run = _init(fake, tmp_path, config={"lr": 0.1})
    with pytest.raises(InvalidValueError, match="log large values as artifacts"):
        run.config["blob"] = BIG
    assert "blob" not in run.config  # nothing changed locally either
    with pytest.raises(InvalidValueError, match="the limit is"):
        run.summary.update(blob=BIG)
    run.config["after"] = 1
    run.log({"loss": 0.5}, step=0)
    assert run.finish(timeout_s=10) is True
    updates = fake.bodies("run_update")
    assert any("after" in u.config for u in updates)
    assert not any("blob" in u.config or "blob" in u.summary for u in updates)
    assert [p[1:3] for p in fake.points(run.id)] == [(0, 0.5)]


def test_oversized_config_at_init_is_refused(fake, tmp_path):
    with pytest.raises(InvalidValueError, match="run_start"):
        _init(fake, tmp_path, config={"blob": BIG})
