from __future__ import annotations

import pytest

from runstream_services.config import load_settings
from runstream_services.errors import ConfigError


def test_defaults_are_embedded(tmp_path):
    s = load_settings(env={}, overrides={"data_dir": str(tmp_path)})
    assert s.bus == "embedded" and s.host == "127.0.0.1"
    assert s.resolved_clickhouse_dsn == f"chdb://{tmp_path / 'chdb'}"
    assert s.resolved_artifact_dir == tmp_path / "artifacts"


def test_precedence_flag_env_file(tmp_path):
    cfg = tmp_path / "rs.toml"
    cfg.write_text('[server]\nport = 9000\nbus = "kafka"\nkafka_bootstrap = "file:1"\n')
    env = {"RUNSTREAM_KAFKA_BOOTSTRAP": "env:1", "RUNSTREAM_PORT": "9001"}
    s = load_settings(overrides={"port": 9002, "host": None}, env=env, config_file=cfg)
    assert (s.port, s.kafka_bootstrap, s.bus, s.host) == (9002, "env:1", "kafka", "127.0.0.1")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"bus": "rabbit"}, "bus must be"),
        ({"bus": "kafka"}, "kafka_bootstrap"),
        ({"port": "http"}, "not a valid int"),
        ({"artifact_store": "s3"}, "s3_endpoint"),
        ({"colour": "blue"}, "unknown setting"),
        ({"writer_gather_ms": -1}, "writer_gather_ms must be between 0 and 1000"),
    ],
)
def test_bad_settings_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=overrides, env={})


def test_unknown_key_in_file_refused(tmp_path):
    cfg = tmp_path / "rs.toml"
    cfg.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown settings .*prot"):
        load_settings(env={}, config_file=cfg)
