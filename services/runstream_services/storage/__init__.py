"""ClickHouse storage: connection (chDB or a server, one code path), migrations, row codecs."""
