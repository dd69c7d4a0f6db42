"""Writers: turn bus envelopes into ClickHouse inserts (exactly-once visible) and artifact manifests."""
