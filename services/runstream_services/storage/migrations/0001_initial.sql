-- Runstream schema v1. `{db}` is replaced by the configured database name.
-- Statements are separated by lines holding only `;;`.
-- Idempotency: tables that take writer inserts keep a deduplication window, and writers pass
-- insert_deduplication_token, so a retried or replayed block is stored once. The metrics table's
-- sorting key is also the identity of a point (run, kind, key, rank, step): ReplacingMergeTree
-- collapses any duplicate that slips past the window on merge, and exact reads use FINAL.

CREATE TABLE IF NOT EXISTS {db}.runs
(
    project      LowCardinality(String),
    run_id       String,
    name         String,
    `group`      String,
    job_type     LowCardinality(String),
    state        Enum8('unspecified' = 0, 'running' = 1, 'finished' = 2, 'failed' = 3, 'crashed' = 4, 'killed' = 5),
    start_ms     Int64,
    end_ms       Int64,
    heartbeat_ms Int64,
    user         String,
    host         String,
    git_commit   String,
    git_dirty    UInt8,
    notes        String,
    tags         Map(String, String),
    context      String COMMENT 'RunContext as JSON',
    datasets     String COMMENT 'JSON list of {name, version, uri}',
    version      UInt64 COMMENT 'monotonic; the highest row of a run wins'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project, run_id)
SETTINGS non_replicated_deduplication_window = 10000
;;
CREATE TABLE IF NOT EXISTS {db}.params
(
    project  LowCardinality(String),
    run_id   String,
    scope    Enum8('config' = 1, 'summary' = 2),
    key      String,
    kind     Enum8('number' = 1, 'text' = 2, 'flag' = 3, 'json' = 4),
    num      Float64 COMMENT 'numbers and flags (0/1); NaN otherwise',
    str      String COMMENT 'text and json; the display form of numbers',
    version  UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project, scope, key, run_id)
SETTINGS non_replicated_deduplication_window = 10000
;;
CREATE TABLE IF NOT EXISTS {db}.metrics
(
    project  LowCardinality(String),
    run_id   String,
    kind     Enum8('user' = 1, 'system' = 2),
    key      LowCardinality(String),
    rank     UInt16,
    step     Int64,
    time_ms  Int64,
    value    Float64 CODEC(Gorilla, ZSTD(1))
)
ENGINE = ReplacingMergeTree
ORDER BY (project, run_id, kind, key, rank, step)
SETTINGS non_replicated_deduplication_window = 100000
;;
CREATE TABLE IF NOT EXISTS {db}.metric_summaries
(
    project    LowCardinality(String),
    run_id     String,
    kind       Enum8('user' = 1, 'system' = 2),
    key        LowCardinality(String),
    last       AggregateFunction(argMax, Float64, Int64) COMMENT 'value at the highest step',
    min        SimpleAggregateFunction(min, Float64),
    max        SimpleAggregateFunction(max, Float64),
    count      SimpleAggregateFunction(sum, UInt64),
    last_step  SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (project, run_id, kind, key)
;;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.metric_summaries_mv TO {db}.metric_summaries AS
SELECT project, run_id, kind, key,
       argMaxState(value, step) AS last,
       minIf(value, isFinite(value)) AS min,
       maxIf(value, isFinite(value)) AS max,
       count() AS count,
       max(step) AS last_step
FROM {db}.metrics
GROUP BY project, run_id, kind, key
;;
CREATE TABLE IF NOT EXISTS {db}.artifacts
(
    project     LowCardinality(String),
    run_id      String,
    name        String,
    path        String,
    type        LowCardinality(String),
    version     UInt32,
    version_tag String COMMENT 'groups the files of one log_artifact call',
    sha256      FixedString(64),
    size        UInt64,
    uri         String,
    created_ms  Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (project, run_id, name, version_tag, path)
SETTINGS non_replicated_deduplication_window = 10000
;;
CREATE TABLE IF NOT EXISTS {db}.ingested_requests
(
    client_id  String,
    seq        UInt64,
    run_id     String,
    time_ms    Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (client_id, seq)
TTL toDateTime(intDiv(time_ms, 1000)) + INTERVAL 30 DAY
COMMENT 'requests already stored, by idempotency key; writers skip replays found here'
;;
CREATE TABLE IF NOT EXISTS {db}.writer_intents
(
    topic      String,
    partition  UInt32,
    first_offset Int64,
    last_offset  Int64,
    time_ms    Int64
)
ENGINE = ReplacingMergeTree(time_ms)
ORDER BY (topic, partition)
COMMENT 'the block a Kafka writer is about to insert, so a replay after a crash re-forms it exactly'
;;
CREATE TABLE IF NOT EXISTS {db}.audit_log
(
    time_ms  Int64,
    project  LowCardinality(String),
    actor    String,
    action   LowCardinality(String),
    target   String,
    detail   String
)
ENGINE = MergeTree
ORDER BY (project, time_ms)
