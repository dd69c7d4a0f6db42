-- Runstream schema v5: the record of stored requests scales with clients, not requests.
--
-- `ingested_requests` kept one row per stored request (20,000 requests/s = 1.7 billion rows a
-- day) for 30 days (its TTL), so a spool synced later than that was stored twice. `client_seqs`
-- keeps one row per SDK process (client_id) and run: the seqs stored for it as closed ranges. An
-- SDK numbers its requests 1, 2, 3, ..., so a process logging one run is one range; a refused
-- request leaves a gap until it is resent. Writers append the pair's whole set (a new row, higher
-- `updated_ms`) at most once per bookkeeping flush; ReplacingMergeTree keeps the latest. Keyed by
-- run as well because, on the Kafka bus, one client's runs may be written by different writers
-- (a run's records go to one partition, owned by one writer at a time): each owns its rows.
--
-- Horizon: none. The rows are kept as long as the database (~100 bytes per SDK process and run),
-- so a request resent or synced from a spool any time later is recognised as stored.
--
-- `ingested_requests` is no longer written; writers still read it for clients with no row here
-- (requests stored before this migration, within its 30-day TTL), so nothing is copied.

CREATE TABLE IF NOT EXISTS {db}.client_seqs
(
    client_id  String,
    run_id     String,
    ranges     Array(Tuple(UInt64, UInt64)) COMMENT 'stored seqs as closed, ascending, disjoint ranges',
    updated_ms Int64
)
ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (client_id, run_id)
COMMENT 'per SDK process and run: the request seqs stored (writers skip a resend of any of them)'
